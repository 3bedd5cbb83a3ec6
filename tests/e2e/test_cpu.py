"""Threads that fit the machine: the thread count follows the affinity mask and the cgroup
quota, and engines busy at the same time (two models of one daemon, two daemons on one
host) split the cores instead of stalling each other."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mullama.engine.cpu import cgroup_dirs, read_cpu_max
from mullama.models.registry import embedded_model_path
from tests.conftest import MODEL, Daemon, wait_for

PATH = str(embedded_model_path())


def _complete(d: Daemon, model: str, max_tokens: int) -> int:
    body = {"model": model, "prompt": "Tell a story", "max_tokens": max_tokens, "ignore_eos": True}
    # The timeout is a hang guard: with spinning threads oversubscribed, this took minutes.
    r = httpx.post(d.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["completion_tokens"]


def _threads_now(d: Daemon) -> dict[str, int | None]:
    return {m["name"]: m["threads_now"] for m in d.status()["models_loaded"]}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_daemon_under_taskset_runs_one_thread():
    with Daemon("--parallel", "2", prefix=("taskset", "-c", "0")).wait_healthy() as d:
        cpu = d.status()["cpu"]
        assert cpu["allowed"] == "0"
        assert cpu["threads"] == 1
        assert d.model_status()["threads"] == 1
        assert _complete(d, MODEL, 8) == 8
        assert d.model_status()["threads_now"] == 1
        assert "1 allowed (0)" in d.log() and "-> 1 threads" in d.log()


@contextlib.contextmanager
def _cpu_cgroup(cpus: float):
    """A child cgroup of this process's own with a CPU quota of ``cpus``, v2 or v1,
    where this machine lets us create one."""
    groups = Path("/proc/self/cgroup").read_text()
    mounts = Path("/proc/self/mountinfo").read_text()
    name = f"mullama-test-{uuid.uuid4().hex[:8]}"
    for where, reader in cgroup_dirs(groups, mounts):
        child = where.path / name
        try:
            child.mkdir()
        except OSError:
            continue
        try:
            if reader is read_cpu_max:
                (child / "cpu.max").write_text(f"{int(cpus * 100000)} 100000\n")
            else:
                (child / "cpu.cfs_period_us").write_text("100000\n")
                (child / "cpu.cfs_quota_us").write_text(f"{int(cpus * 100000)}\n")
            assert reader(child) == cpus
        except (OSError, AssertionError):
            child.rmdir()
            continue
        try:
            yield child
        finally:
            # The daemon and its workers are gone once stop() returned; rmdir then works.
            procs = child / "cgroup.procs"
            wait_for(lambda p=procs: not p.read_text().strip(), timeout=30)
            child.rmdir()
        return
    pytest.skip("this machine lets no cgroup with a CPU quota be created here")


def test_daemon_in_a_cgroup_with_a_one_cpu_quota_runs_one_thread():
    with _cpu_cgroup(1.0) as group:
        wrapper = ("sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh")
        with Daemon("--parallel", "2", prefix=wrapper).wait_healthy() as d:
            cpu = d.status()["cpu"]
            assert cpu["quota"] == 1.0
            assert cpu["quota_source"] == str(group)
            assert cpu["threads"] == 1
            assert d.model_status()["threads"] == 1
            assert _complete(d, MODEL, 8) == 8
            assert str(d.proc.pid) in (group / "cgroup.procs").read_text()


def test_two_default_daemons_on_one_machine_split_the_cores():
    with (
        Daemon("--parallel", "6", "--context-size", "512").wait_healthy() as a,
        Daemon("--parallel", "6", "--context-size", "512").wait_healthy() as b,
    ):
        assert a.status()["cpu"]["share_dir"] == b.status()["cpu"]["share_dir"]
        share = max(1, a.status()["cpu"]["threads"] // 2)
        with ThreadPoolExecutor(12) as pool:
            jobs = [pool.submit(_complete, d, MODEL, 48) for d in (a, b) for _ in range(6)]
            # Each engine drops to its share while the other decodes too.
            wait_for(
                lambda: (_threads_now(a)[MODEL], _threads_now(b)[MODEL]) == (share, share),
                timeout=120,
                interval=0.05,
            )
            assert [j.result() for j in jobs] == [48] * 12


def _progress(d: Daemon) -> dict[str, tuple[int, int]]:
    return {
        m["name"]: (m["tokens_generated"], m["active_sequences"])
        for m in d.status()["models_loaded"]
    }


def test_two_busy_models_in_one_daemon_both_progress_and_idle_costs_nothing():
    args = ("--model", f"a={PATH}", "--model", f"b={PATH}", "--parallel", "4")
    with Daemon(*args, "--context-size", "512").wait_healthy() as d:
        share = max(1, d.status()["cpu"]["threads"] // 2)
        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(_complete, d, m, 160) for m in ("a", "b") for _ in range(4)]
            wait_for(lambda: _threads_now(d) == {"a": share, "b": share}, interval=0.05)
            # Both make progress at once: between two looks, both generated tokens and
            # both still had sequences running.
            last = [_progress(d)]

            def both_moved() -> bool:
                now, before = _progress(d), last[0]
                last[0] = now
                return all(now[m][0] > before[m][0] and now[m][1] > 0 for m in ("a", "b"))

            wait_for(both_moved, interval=0.1)
            assert [j.result() for j in jobs] == [160] * 8
        wait_for(lambda: all(m["active_sequences"] == 0 for m in d.status()["models_loaded"]))
        pids = [m["pid"] for m in d.status()["models_loaded"]]
        before = [_cpu_seconds(p) for p in pids]
        time.sleep(1.0)  # an interval to measure CPU time over, not an ordering
        used = [_cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
        assert max(used) < 0.1, used  # idle engines do not spin
