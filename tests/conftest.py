"""Shared fixtures: a real Mullama daemon on a free port with the real tiny model."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

MODEL = "smollm2:135m"
_RUN_STORE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """No test reads or changes the user's model store (``~/.mullama/models``, or their
    ``MULLAMA_CACHE_DIR``): the run's own processes (the CLI, a `mullama serve` a test
    starts, Settings built in the test process) get a temporary store, and each Daemon
    one of its own (a model someone pulled made the shared daemon list it: /v1/models,
    /api/tags, the llama-server command line and worker replacement failed)."""
    config.stash[_RUN_STORE] = tempfile.mkdtemp(prefix="mullama-test-store-")
    os.environ["MULLAMA_CACHE_DIR"] = config.stash[_RUN_STORE]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUN_STORE in config.stash:  # only the folder made above
        shutil.rmtree(config.stash[_RUN_STORE], ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """``mullama serve`` in a subprocess, its log in a file (printed when a test fails)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="mullama-test-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        # Each daemon gets its own control socket (the default path is shared per user).
        self.socket = Path(tempfile.mkdtemp(prefix="mullama-sock-")) / "mullama.sock"
        if not any(a == "--socket" or a.startswith("--socket=") for a in args):
            args = ("--socket", f"unix://{self.socket}", *args)
        # Saved conversations stay out of the shared cache dir (each test starts cold);
        # a test with its own --cache-dir keeps the default and can test them.
        if not any(a.startswith(("--cache-dir", "--session-disk")) for a in args):
            args = ("--session-disk", "0", *args)
        # A model store of its own, made empty, unless the test gives one.
        self.store: Path | None = None
        if not any(a.startswith("--cache-dir") for a in args) and "MULLAMA_CACHE_DIR" not in (
            env or {}
        ):
            self.store = Path(tempfile.mkdtemp(prefix="mullama-store-"))
            env = {**(env or {}), "MULLAMA_CACHE_DIR": str(self.store)}
        # prefix: a command that runs the daemon (taskset -c 0, a cgroup wrapper, ...).
        cmd = [*prefix, sys.executable, "-m", "mullama", "serve", "--http-port", str(self.port)]
        cmd += args
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_healthy(self, timeout: float = 120.0) -> Daemon:
        wait_serving(self.proc, self.url, "daemon", self.log, timeout)
        return self

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict:
        return httpx.get(self.url + "/api/system/status", timeout=10).json()

    def model_status(self, name: str = MODEL) -> dict:
        return next(m for m in self.status()["models_loaded"] if m["name"] == name)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)
        return self.proc.returncode


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    """The shared daemon: 8 slots of 2048 tokens."""
    d = Daemon("--parallel", "8", "--context-size", "2048").wait_healthy()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def openai_client(daemon: Daemon):
    import openai

    client = openai.OpenAI(
        base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    yield client
    client.close()


def wait_serving(
    proc: subprocess.Popen, url: str, what: str, log: Callable[[], str], timeout: float = 120.0
) -> None:
    """Until ``url``/health answers 200; a process that exits, or never answers, is an
    error carrying its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become healthy:\n{log()}")


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    """Poll until ``predicate()`` is truthy (a hang guard, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the hang guard expired")
        time.sleep(interval)


# The headless browser (Debian's Chromium through Playwright) for the web UI's tests.
from tests.browser import browser  # noqa: E402, F401
