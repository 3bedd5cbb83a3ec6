"""deploy/local-cluster.sh driven from the tests: N real Mullama instances, one real
redis-server, and a real nginx or HAProxy with the configs from deploy/, all on
127.0.0.1 on free ports in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
CHAT = "/v1/chat/completions"


def missing_tools(proxy: str) -> list[str]:
    return [t for t in (proxy, "redis-server", "openssl") if shutil.which(t) is None]


class Cluster:
    def __init__(self, folder: Path, proxy: str, *serve_args: str, instances: int = 3,
                 embed_instances: str = "") -> None:  # fmt: skip
        self.dir = folder / "cluster"
        self.proxy = proxy
        self.instances = instances
        self.ports = [free_port() for _ in range(instances)]
        self.https_port = free_port()
        self.env = {
            **os.environ,
            "CLUSTER_DIR": str(self.dir),
            "INSTANCES": str(instances),
            "PORTS": " ".join(map(str, self.ports)),
            "HTTP_PORT": str(free_port()),
            "HTTPS_PORT": str(self.https_port),
            "REDIS_PORT": str(free_port()),
            "EMBED_INSTANCES": embed_instances,
            "MULLAMA": str(Path(sys.executable).parent / "mullama"),
            "PYTHON": sys.executable,
        }
        self.serve_args = serve_args
        self.url = f"https://127.0.0.1:{self.https_port}"

    def start(self) -> Cluster:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start", "--proxy", self.proxy, "--", *self.serve_args],
            env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            self.stop()
            raise AssertionError(f"local-cluster.sh start failed:\n{proc.stderr}\n{self.logs()}")
        return self

    def stop(self) -> None:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=self.env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.dir / "tls" / "cert.pem")),
            timeout=600,  # a hang guard: the machine may be busy
            **kw,
        )

    def instance_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def pid(self, i: int) -> int:
        return int((self.dir / f"m{i + 1}" / "pid").read_text())

    def alive(self, i: int) -> bool:
        try:
            os.kill(self.pid(i), 0)
        except ProcessLookupError:
            return False
        return True

    def sigterm(self, i: int) -> None:
        os.kill(self.pid(i), signal.SIGTERM)

    def metrics(self, i: int) -> dict[tuple[str, tuple], float]:
        text = httpx.get(self.instance_url(i) + "/metrics", timeout=30).text
        out: dict[tuple[str, tuple], float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def served(self, i: int, endpoint: str = CHAT, status: str = "200") -> float:
        """mullama_requests_total for one endpoint and status on instance i."""
        return sum(
            v
            for (name, labels), v in self.metrics(i).items()
            if name == "mullama_requests_total"
            and dict(labels).get("endpoint") == endpoint
            and dict(labels).get("status") == status
        )

    def busy(self, i: int) -> float:
        """Sequences running or queued on instance i."""
        return sum(
            v
            for (name, _), v in self.metrics(i).items()
            if name in ("mullama_sequences_active", "mullama_queue_depth")
        )

    def access_log(self, i: int) -> list[dict]:
        lines = []
        for line in (self.dir / f"m{i + 1}" / "mullama.log").read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def logs(self) -> str:
        parts = []
        for path in sorted(self.dir.rglob("*.log")):
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)
