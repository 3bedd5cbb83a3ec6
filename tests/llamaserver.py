"""llama.cpp's own ``llama-server`` (built by scripts/install-llama-server.sh) as a real
OpenAI-compatible engine behind Mullama: it stands in for vLLM and SGLang in the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx

from mullama.models.registry import embedded_model_path
from tests.conftest import free_port, wait_serving

VERSION = "0.3.36"
BIN = (
    Path(os.environ.get("MULLAMA_ANCHORS_DIR", Path.home() / ".cache" / "mullama-anchors"))
    / VERSION
    / "build"
    / "bin"
)


def binary() -> Path:
    exe = BIN / "llama-server"
    if not exe.is_file():
        raise RuntimeError(
            f"{exe} is missing: run scripts/install-llama-server.sh (scripts/test.sh does)"
        )
    return exe


class LlamaServer:
    """One llama-server on a free port (kept across restarts), SmolLM2 by default."""

    def __init__(self, *args: str, slots: int = 2, ctx_per_slot: int = 2048) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            "-m", str(embedded_model_path()), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(slots), "-c", str(slots * ctx_per_slot), "-t", "1", "--slots",
            "--embeddings", "--pooling", "mean", *args,
        ]  # fmt: skip
        self.log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> LlamaServer:
        log = self.log_path.open("ab")
        env = {**os.environ, "LD_LIBRARY_PATH": str(BIN)}
        self.proc = subprocess.Popen([str(binary()), *self.args], stdout=log,
                                     stderr=subprocess.STDOUT, env=env)  # fmt: skip
        wait_serving(self.proc, self.url, "llama-server",
                     lambda: self.log_path.read_text()[-3000:], timeout)  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL: the engine dies mid-answer, as a crashed node does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def slots(self) -> list[dict]:
        return httpx.get(self.url + "/slots", timeout=10).json()

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots() if s.get("is_processing"))
