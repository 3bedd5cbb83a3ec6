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
    """Strategic-merge enough for our overlays: maps merge, a null value deletes its key,
    lists of named maps merge by name, other values replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
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


REMOTE_VLLM = K8S / "overlays" / "remote-vllm"


def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _remote_vllm() -> dict[tuple[str, str], dict]:
    """The remote-vllm overlay as kustomize renders it: the base's resources, each patch
    merged into its target (or the target dropped, for `$patch: delete`), the new ones."""
    kust = yaml.safe_load((REMOTE_VLLM / "kustomization.yaml").read_text())
    assert kust["resources"][0] == "../../base"
    out = {}
    for name in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]:
        for doc in _docs(K8S / "base" / name):
            out[_key(doc)] = doc
    for entry in kust["patches"]:
        (patch,) = _docs(REMOTE_VLLM / entry["path"])
        assert _key(patch) in out, entry["path"]  # a patch over nothing is an error there
        if patch.get("$patch") == "delete":
            del out[_key(patch)]
        else:
            out[_key(patch)] = _merge(out[_key(patch)], patch)
    for name in kust["resources"][1:]:
        for doc in _docs(REMOTE_VLLM / name):
            assert _key(doc) not in out, name
            out[_key(doc)] = doc
    return out


def _vllm_container(res) -> dict:
    (c,) = res["StatefulSet", "vllm"]["spec"]["template"]["spec"]["containers"]
    return c


def _arg(container: dict, flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


def test_remote_vllm_overlay_renders_to_valid_manifests(tmp_path):
    res = _remote_vllm()
    listed = {p.name for p in REMOTE_VLLM.glob("*.yaml")} - {"kustomization.yaml"}
    kust = yaml.safe_load((REMOTE_VLLM / "kustomization.yaml").read_text())
    assert listed == set(kust["resources"][1:]) | {p["path"] for p in kust["patches"]}
    out = tmp_path / "remote-vllm.yaml"
    out.write_text(yaml.safe_dump_all(list(res.values())))
    _kubernetes_validate(out)
    assert {
        ("StatefulSet", "vllm"),
        ("Service", "vllm"),
        ("Secret", "vllm-api-key"),
        ("NetworkPolicy", "vllm"),
        ("Deployment", "mullama"),
        ("HorizontalPodAutoscaler", "mullama"),
    } <= set(res)
    # No local model, so no model store: the claim is gone and nothing mounts one.
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in res)
    pod = res["Deployment", "mullama"]["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    (c,) = pod["containers"]
    assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"  # kept from the base
    base = _base()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    for kind in ("requests", "limits"):
        assert _cpus(c["resources"][kind]["cpu"]) < _cpus(base[kind]["cpu"])
    assert _cpus(c["resources"]["requests"]["cpu"]) == _cpus(c["resources"]["limits"]["cpu"])
    assert int(_cpus(c["resources"]["limits"]["cpu"])) >= 1  # a whole CPU, as the base


def test_remote_vllm_config_is_read_by_the_daemon_and_names_every_vllm_pod(tmp_path):
    """mullama.yaml of the patched ConfigMap, through `mullama config show` and the remote
    model parser: one URL per StatefulSet pod, by its name under the headless Service."""
    from mullama.models.remote import parse_remotes

    res = _remote_vllm()
    keys = tmp_path / "keys.yaml"
    keys.write_text(res["Secret", "mullama-keys"]["stringData"]["keys.yaml"])
    config = yaml.safe_load(res["ConfigMap", "mullama-config"]["data"]["mullama.yaml"])
    # The patch replaces the whole file: what is not about models stays the base's.
    base = yaml.safe_load(_base()["ConfigMap"]["data"]["mullama.yaml"])
    assert {k: v for k, v in config.items() if k != "models"} == {
        k: v for k, v in base.items() if k != "models"
    }
    config["security"]["api_key_file"] = str(keys)
    path = tmp_path / "mullama.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _run(str(BIN / "mullama"), "config", "show", "--config", str(path))
    shown = yaml.safe_load(out)["models"]
    assert shown["model"] == []  # only the remote model: nothing loads locally
    ((_, (urls, opts)),) = parse_remotes(shown["remote"], shown["remote_opt"]).items()
    sts = res["StatefulSet", "vllm"]
    svc = res["Service", "vllm"]
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "vllm"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    c = _vllm_container(res)
    (port,) = svc["spec"]["ports"]
    (container_port,) = c["ports"]
    assert port["targetPort"] == container_port["name"]
    assert port["port"] == container_port["containerPort"] == int(_arg(c, "--port"))
    ns = sts["metadata"]["namespace"]
    assert urls == [
        f"http://{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc:{port['port']}/v1"
        for i in range(sts["spec"]["replicas"])
    ]
    assert opts.upstream_model == _arg(c, "--model")
    assert opts.health_path == c["readinessProbe"]["httpGet"]["path"]
    assert opts.health_path == c["startupProbe"]["httpGet"]["path"]


def test_remote_vllm_statefulset_gpus_match_tensor_parallel():
    res = _remote_vllm()
    sts = res["StatefulSet", "vllm"]
    c = _vllm_container(res)
    image, _, tag = c["image"].partition(":")
    assert image == "vllm/vllm-openai" and re.fullmatch(r"v\d+\.\d+\.\d+", tag)  # pinned
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == c["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert int(_arg(c, "--tensor-parallel-size")) == int(gpus)
    assert "--enable-prefix-caching" in c["args"]
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (shm,) = [name for name, path in mounts.items() if path == "/dev/shm"]
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"
    # The Hugging Face cache is on the pod's own claim: a restart does not download again.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    env = {e["name"]: e for e in c["env"]}
    assert Path(env["HF_HOME"]["value"]).is_relative_to(mounts[claim["metadata"]["name"]])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_remote_vllm_upstream_key_is_one_secret_mounted_where_remote_opt_reads_it(tmp_path):
    from mullama.models.remote import _api_key, parse_remotes

    res = _remote_vllm()
    secret = res["Secret", "vllm-api-key"]
    config = yaml.safe_load(res["ConfigMap", "mullama-config"]["data"]["mullama.yaml"])
    ((name, (_, opts)),) = parse_remotes(
        config["models"]["remote"], config["models"]["remote_opt"]
    ).items()
    key_file = Path(opts.api_key_file)
    pod = res["Deployment", "mullama"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volume = next(
        v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "vllm-api-key"
    )
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and str(key_file.parent) == mount["mountPath"]
    assert key_file.name in secret["stringData"]
    # vLLM takes the same key of the same Secret.
    ref = {e["name"]: e for e in _vllm_container(res)["env"]}["VLLM_API_KEY"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "vllm-api-key", "key": key_file.name}
    # What Mullama sends is the file's content, as the Secret's volume writes it.
    copy_ = tmp_path / key_file.name
    copy_.write_text(secret["stringData"][key_file.name])
    assert (
        _api_key(name, opts.model_copy(update={"api_key_file": str(copy_)}))
        == (secret["stringData"][key_file.name])
    )


def test_remote_vllm_network_policy_admits_only_mullama_to_vllm():
    res = _remote_vllm()
    policy = res["NetworkPolicy", "vllm"]["spec"]
    vllm_labels = res["StatefulSet", "vllm"]["spec"]["template"]["metadata"]["labels"]
    mullama_labels = res["Deployment", "mullama"]["spec"]["template"]["metadata"]["labels"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= vllm_labels.items()
    assert not policy["podSelector"]["matchLabels"].items() <= mullama_labels.items()
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # same namespace, no ipBlock, no other namespace
    assert source["podSelector"]["matchLabels"].items() <= mullama_labels.items()
    assert not source["podSelector"]["matchLabels"].items() <= vllm_labels.items()
    (container_port,) = _vllm_container(res)["ports"]
    assert rule["ports"] == [{"port": container_port["containerPort"], "protocol": "TCP"}]


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
