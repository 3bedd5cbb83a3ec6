"""The deployment files in deploy/, checked by the real tools: systemd-analyze verify,
hadolint, nginx -t, haproxy -c, kubernetes-validate (offline schemas), yamllint, promtool,
logrotate -d; plus the facts that tie them to the daemon (probes, drain timeouts, the
llama-cpp-python build flags of scripts/bootstrap.sh, the config file the daemon reads)."""

from __future__ import annotations

import copy
import getpass
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
    "truthy: {check-keys: false}}}"
)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(BIN))
    if path is None:
        for sbin in ("/usr/sbin", "/sbin"):
            if Path(sbin, name).exists():
                return str(Path(sbin, name))
        pytest.fail(f"{name} is missing: run scripts/install-deploy-tools.sh")
    return path


def _run(*cmd: str, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _render():
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    _run(
        _tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


# --- systemd ---------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path):
    unit = (DEPLOY / "systemd" / "mullama.service").read_text()
    # The unit's mullama, at this checkout's path (verify checks that it is executable).
    rendered = tmp_path / "mullama.service"
    rendered.write_text(unit.replace("/opt/mullama/venv/bin/mullama", str(BIN / "mullama")))
    out = _run(_tool("systemd-analyze"), "verify", str(rendered))
    assert "mullama.service" not in out, out  # no warning about our unit
    for line in (
        "KillMode=mixed",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RuntimeDirectory=mullama",
        "Restart=on-failure",
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    assert re.search(r"^ExecStop=\S+ daemon stop --socket unix:///run/mullama/", unit, re.M)
    assert re.search(r"^ReadWritePaths=.*/var/lib/mullama.*/run/mullama", unit, re.M)
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1))
    drain = float(re.search(r"^Environment=MULLAMA_SHUTDOWN_TIMEOUT=(\d+)", unit, re.M).group(1))
    assert stop > drain


# --- Docker ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_passes_hadolint(name):
    _run(_tool("hadolint"), "--failure-threshold", "info", str(DEPLOY / "docker" / name))


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_builds_llama_cpp_python_like_bootstrap(name):
    text = (DEPLOY / "docker" / name).read_text()
    boot = (ROOT / "scripts" / "bootstrap.sh").read_text()
    version = re.search(r"^llama_version=(\S+)", boot, re.M).group(1)
    amx = re.search(r'^amx_off="([^"]+)"', boot, re.M).group(1)
    assert f"ARG LLAMA_CPP_PYTHON_VERSION={version}" in text
    assert f'AMX_OFF="{amx}"' in text
    assert 'CFLAGS="$AMX_OFF" CXXFLAGS="$AMX_OFF"' in text
    assert re.search(r"^USER 10001", text, re.M)
    assert 'VOLUME ["/var/lib/mullama/models"]' in text
    assert "MULLAMA_CACHE_DIR=/var/lib/mullama/models" in text
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/health", text, re.M)
    assert 'CMD ["serve", "--http-addr", "0.0.0.0"]' in text
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    if name.endswith("cuda"):
        assert "-DGGML_CUDA=on" in text and "MULLAMA_GPU_LAYERS=-1" in text


def test_dockerignore_keeps_only_what_the_build_copies():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]
    for name in ("Dockerfile", "Dockerfile.cuda"):
        copied = re.findall(
            r"^COPY (?!--from)(.+) \S+$", (DEPLOY / "docker" / name).read_text(), re.M
        )
        for sources in copied:
            for src in sources.split():
                assert f"!{src.rstrip('/')}" in [x.rstrip("/") for x in lines], src


# --- reverse proxies --------------------------------------------------------------------


def test_nginx_config_passes_nginx_t(tmp_path):
    render = _render()
    cert, key = _cert(tmp_path)
    backends = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    site = tmp_path / "mullama.conf"
    site.write_text(
        render.render_nginx_site(backends, free_port(), free_port(), cert, key, tmp_path)
    )
    main = tmp_path / "nginx.conf"
    main.write_text(render.nginx_main(site, tmp_path))
    out = _run(_tool("nginx"), "-t", "-c", str(main), "-e", str(tmp_path / "error.log"))
    assert "test is successful" in out
    text = (DEPLOY / "nginx" / "mullama.conf").read_text()
    for directive in (
        "least_conn;",
        "hash $mullama_affinity_key consistent;",
        "proxy_pass http://$mullama_pool;",
        "proxy_buffering off;",
        "proxy_read_timeout 600s;",
        "client_max_body_size 10m;",
        "listen 443 ssl",
    ):
        assert directive in text, directive
    assert re.search(r"proxy_next_upstream error timeout", text)
    assert re.search(r"location = /metrics \{\s*allow [^}]*deny all;", text)
    for b in backends:
        assert f"server {b} " in site.read_text()


def test_haproxy_config_passes_haproxy_c(tmp_path):
    render = _render()
    cert, key = _cert(tmp_path)
    pem = tmp_path / "mullama.pem"
    pem.write_text(cert.read_text() + key.read_text())
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        render.render_haproxy(
            [f"127.0.0.1:{free_port()}" for _ in range(3)],
            [f"127.0.0.1:{free_port()}"],
            free_port(),
            free_port(),
            pem,
        )
    )
    out = _run(_tool("haproxy"), "-c", "-f", str(cfg))
    assert "valid" in out.lower()
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert text.count("balance leastconn") == 2
    assert text.count("option httpchk GET /health/ready") == 3
    assert "balance hash var(txn.affinity)" in text and "hash-type consistent" in text
    assert re.search(r"use_backend mullama_embeddings if embeddings", text)
    assert "acl embeddings path /v1/embeddings /api/embed" in text


# --- Kubernetes --------------------------------------------------------------------------


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _base() -> dict[str, dict]:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    out = {}
    for name in kust["resources"]:
        for doc in _docs(K8S / "base" / name):
            out[doc["kind"]] = doc
    return out


def _merge(base, patch):
    """Strategic-merge enough for our overlay: maps merge, lists of named maps merge by
    name, other values replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = copy.deepcopy(base)
        for item in patch:
            i = next((j for j, x in enumerate(out) if x["name"] == item["name"]), None)
            if i is None:
                out.append(copy.deepcopy(item))
            else:
                out[i] = _merge(out[i], item)
        return out
    return copy.deepcopy(patch)


def _kubernetes_validate(*files: Path) -> None:
    _run(_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files))


def test_every_kubernetes_manifest_validates_offline():
    files = sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in files)
    _kubernetes_validate(*files)


def test_gpu_overlay_renders_to_a_valid_deployment(tmp_path):
    kust = yaml.safe_load((K8S / "overlays" / "gpu" / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../../base"]
    (patch_file,) = [p["path"] for p in kust["patches"]]
    deployment = _merge(_base()["Deployment"], _docs(K8S / "overlays" / "gpu" / patch_file)[0])
    out = tmp_path / "deployment-gpu.yaml"
    out.write_text(yaml.safe_dump(deployment))
    _kubernetes_validate(out)
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MULLAMA_GPU_LAYERS"] == "-1" and "MULLAMA_API_KEY__FILE" in env
    assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"  # kept from the base


def test_deployment_probes_drain_and_secrets():
    res = _base()
    pod = res["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] in ("/health/ready", "/health/live")
    config = yaml.safe_load(res["ConfigMap"]["data"]["mullama.yaml"])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > config["server"]["shutdown_timeout"] + pre_stop
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == res["Secret"]["metadata"]["name"]
    assert config["security"]["api_key_file"].startswith(mounts["keys"] + "/")
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MULLAMA_API_KEY__FILE"].startswith(mounts["keys"] + "/")
    secret_files = set(res["Secret"]["stringData"])
    assert Path(config["security"]["api_key_file"]).name in secret_files
    assert Path(env["MULLAMA_API_KEY__FILE"]).name in secret_files
    assert (
        volumes["models"]["persistentVolumeClaim"]["claimName"]
        == (res["PersistentVolumeClaim"]["metadata"]["name"])
    )
    assert mounts["models"] == "/var/lib/mullama/models"
    ann = res["Ingress"]["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    assert res["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "mullama"
    assert res["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1


def _cpus(value) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_cpu_limits_are_whole_cpus_that_the_daemon_turns_into_threads():
    """Each file sets a CPU limit; Mullama reads it as the cgroup quota and runs that many
    threads (engine/cpu.py), so nothing sets --threads by hand beside it."""
    from mullama.engine.cpu import choose_threads

    unit = (DEPLOY / "systemd" / "mullama.service").read_text()
    (quota,) = re.findall(r"^CPUQuota=(\d+)%$", unit, re.M)
    limits = {"systemd": int(quota) / 100}
    pod = _base()["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    limits["kubernetes"] = _cpus(c["resources"]["limits"]["cpu"])
    assert _cpus(c["resources"]["requests"]["cpu"]) == limits["kubernetes"]
    for name in ("compose.yaml", "compose.full.yaml", "compose.gpu.yaml"):
        service = yaml.safe_load((DEPLOY / "compose" / name).read_text())["services"]["mullama"]
        limits[name] = float(service["cpus"])
    for where, cpus in limits.items():
        assert cpus == int(cpus) >= 1, where
        assert choose_threads(64, 64, cpus) == int(cpus), where
    texts = [p.read_text() for p in DEPLOY.rglob("*") if p.is_file()]
    assert not any("MULLAMA_THREADS" in t or "--threads" in t for t in texts)


def test_configmap_and_secret_are_read_by_the_daemon(tmp_path):
    """The ConfigMap's config file and the Secret's key file, as the daemon reads them."""
    from mullama.security.keys import load_key_file

    res = _base()
    keys = tmp_path / "keys.yaml"
    keys.write_text(res["Secret"]["stringData"]["keys.yaml"])
    assert load_key_file(keys)
    config = yaml.safe_load(res["ConfigMap"]["data"]["mullama.yaml"])
    config["security"]["api_key_file"] = str(keys)
    path = tmp_path / "mullama.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _run(str(BIN / "mullama"), "config", "show", "--config", str(path))
    shown = yaml.safe_load(out)
    assert shown["server"]["http_addr"] == "0.0.0.0"
    assert shown["security"]["api_key_file"] == str(keys)


# --- YAML, compose, Prometheus, logrotate --------------------------------------------------


def test_yamllint_on_manifests_and_compose_files():
    _run(_tool("yamllint"), "--strict", "-d", YAMLLINT_CONFIG, str(K8S), str(DEPLOY / "compose"))


def test_compose_files_mount_files_that_exist():
    for name in ("compose.yaml", "compose.gpu.yaml", "compose.full.yaml"):
        compose = yaml.safe_load((DEPLOY / "compose" / name).read_text())
        svc = compose["services"]["mullama"]
        assert (
            ROOT / "deploy" / "compose" / svc["build"]["context"] / svc["build"]["dockerfile"]
        ).is_file()
        assert svc["stop_grace_period"] == "60s"
        assert svc["environment"]["MULLAMA_API_KEY__FILE"].startswith("/run/secrets/")
        for service in compose["services"].values():
            for volume in service.get("volumes", []):
                src = volume.split(":")[0]
                if src.startswith("."):
                    assert (DEPLOY / "compose" / src).exists(), (name, src)
    gpu = yaml.safe_load((DEPLOY / "compose" / "compose.gpu.yaml").read_text())
    devices = gpu["services"]["mullama"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"


def test_full_stack_prometheus_config_passes_promtool(tmp_path):
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    _run(_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    full = yaml.safe_load((DEPLOY / "compose" / "compose.full.yaml").read_text())
    mounts = full["services"]["prometheus"]["volumes"] + full["services"]["grafana"]["volumes"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert any(m.startswith("../grafana/mullama-dashboard.json:") for m in mounts)


def test_logrotate_config_is_accepted(tmp_path):
    text = (DEPLOY / "logrotate" / "mullama").read_text()
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "mullama.log").write_text("line\n")
    user = getpass.getuser()
    rendered = tmp_path / "mullama"
    rendered.write_text(
        text.replace("/var/log/mullama", str(logs)).replace(
            "su mullama mullama", f"su {user} {user}"
        )
    )
    rendered.chmod(0o644)
    _run(_tool("logrotate"), "-d", "-s", str(tmp_path / "state"), str(rendered))
