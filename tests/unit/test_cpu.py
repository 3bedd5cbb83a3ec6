"""The CPU budget (affinity, cgroup quota, physical cores) and how busy workers share it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mullama.engine.cpu import (
    cgroup_quota,
    choose_threads,
    detect,
    format_cpu_list,
    parse_cfs,
    parse_cpu_list,
    parse_cpu_max,
    physical_cores,
)
from mullama.engine.cpushare import CpuShare, share_dir, share_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000", None), ("max", None), ("150000 100000\n", 1.5), ("400000 100000", 4.0),
     ("50000 100000", 0.5), ("200000", 2.0)],
)  # fmt: skip
def test_cgroup_v2_cpu_max(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1", "100000", None), ("200000\n", "100000\n", 2.0), ("50000", "100000", 0.5)],
)
def test_cgroup_v1_cfs(quota, period, cpus):
    assert parse_cfs(quota, period) == cpus


@pytest.mark.parametrize(
    ("allowed", "physical", "quota", "threads"),
    [
        (2, 2, None, 2),  # a plain 2-core machine
        (64, 64, 4.0, 4),  # a 64-core host, a 4-CPU limit
        (4, 4, 1.5, 1),  # a fractional quota rounds down
        (4, 4, 0.5, 1),  # never below one
        (8, 4, None, 4),  # SMT: one thread per physical core
        (1, 1, None, 1),  # taskset -c 0
    ],
)
def test_thread_choice(allowed, physical, quota, threads):
    assert choose_threads(allowed, physical, quota) == threads


def _mountinfo(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _proc(tmp: Path, cgroup: str, mountinfo: str) -> Path:
    d = tmp / "proc" / "self"
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "mountinfo").write_text(mountinfo)
    return tmp / "proc"


def test_v2_quota_is_the_smallest_on_the_path(tmp_path):
    mount = tmp_path / "cg"
    (mount / "a" / "b").mkdir(parents=True)
    (mount / "cpu.max").write_text("max 100000\n")
    (mount / "a" / "cpu.max").write_text("200000 100000\n")
    (mount / "a" / "b" / "cpu.max").write_text("max 100000\n")  # the leaf sets none
    proc = _proc(
        tmp_path,
        "0::/a/b\n",
        _mountinfo(f"30 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"),
    )
    assert cgroup_quota(proc) == (2.0, str(mount / "a"))


def _v1_group(tmp: Path, quota: str) -> Path:
    """A cgroup v1 cpu hierarchy root with this quota (period 100 ms)."""
    mount = tmp / "cpu"
    mount.mkdir()
    (mount / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    return mount


def test_v1_quota_in_a_container_whose_group_is_the_mount_root(tmp_path):
    mount = _v1_group(tmp_path, "150000")
    proc = _proc(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc123\n1:name=systemd:/docker/abc123\n",
        _mountinfo(
            f"40 30 0:35 /docker/abc123 {mount} ro,nosuid - cgroup cgroup rw,cpu,cpuacct",
            f"41 30 0:36 /docker/abc123 {tmp_path}/mem ro - cgroup cgroup rw,memory",
        ),
    )
    assert cgroup_quota(proc) == (1.5, str(mount))


def test_no_quota_when_files_are_missing_or_unlimited(tmp_path):
    mount = _v1_group(tmp_path, "-1")
    proc = _proc(
        tmp_path,
        "3:cpu:/\n0::/\n",
        _mountinfo(
            f"40 30 0:35 / {mount} rw - cgroup cgroup rw,cpu",
            f"41 30 0:36 / {tmp_path}/nothing-here rw - cgroup2 cgroup2 rw",
        ),
    )
    assert cgroup_quota(proc) == (None, None)
    assert cgroup_quota(tmp_path / "no-proc") == (None, None)


def _topology(root: Path, cores: list[tuple[int, int]]) -> None:
    for cpu, (package, core) in enumerate(cores):
        d = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "core_id").write_text(f"{core}\n")
        (d / "physical_package_id").write_text(f"{package}\n")


def test_physical_cores_count_smt_siblings_once(tmp_path):
    _topology(tmp_path, [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0)])
    assert physical_cores((0, 1, 2, 3, 4, 5), tmp_path) == 3
    assert physical_cores((0, 2), tmp_path) == 2
    assert physical_cores((0, 1), tmp_path) == 1
    assert physical_cores((0, 1, 7), tmp_path) == 3  # no topology for cpu7: logical count


def test_cpu_lists():
    assert parse_cpu_list("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpu_list((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    assert format_cpu_list((5,)) == "5"


def test_detect_on_this_machine_fits_the_affinity_mask():
    budget = detect()
    assert 1 <= budget.threads <= len(os.sched_getaffinity(0))
    assert budget.as_dict()["allowed"] == format_cpu_list(tuple(sorted(os.sched_getaffinity(0))))


def test_taskset_one_cpu_chooses_one_thread():
    code = "from mullama.engine.cpu import detect; b = detect(); print(b.threads, b.allowed)"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert out.stdout.split() == ["1", "(0,)"]


# ---- sharing between busy workers ---------------------------------------------------------


def test_share_threads():
    assert [share_threads(8, n) for n in (0, 1, 2, 3, 8, 9)] == [8, 8, 4, 2, 1, 1]


def test_busy_workers_split_the_budget_and_take_more_back_slowly(tmp_path):
    a, b = CpuShare(tmp_path / "s", 4, raise_after=0.25), CpuShare(tmp_path / "s", 4)
    try:
        a.set_busy(True)
        assert a.threads(now=0.0) == 4
        b.set_busy(True)
        assert b.threads(now=0.0) == 2
        assert a.threads(now=0.0) == 2  # fewer at once
        b.set_busy(False)
        assert a.threads(now=0.1) == 2  # more only after raise_after
        assert a.threads(now=0.2) == 2
        assert a.threads(now=0.36) == 4
        b.set_busy(True)
        assert a.threads(now=0.4) == 2
    finally:
        a.close()
        b.close()
    assert list((tmp_path / "s").iterdir()) == []


def test_share_dirs_keep_cpu_sets_and_daemons_apart(tmp_path):
    assert share_dir("0-1", "host", 10, str(tmp_path)) == share_dir(
        "0-1", "host", 11, str(tmp_path)
    )
    assert share_dir("0-1", "host", 10, str(tmp_path)) != share_dir(
        "2-3", "host", 10, str(tmp_path)
    )
    assert share_dir("0-1", "daemon", 10, str(tmp_path)) != share_dir(
        "0-1", "daemon", 11, str(tmp_path)
    )


def test_a_killed_busy_worker_leaves_no_claim(tmp_path):
    d = tmp_path / "s"
    code = (
        "import os, sys; from pathlib import Path; from mullama.engine.cpushare import CpuShare;"
        "s = CpuShare(Path(sys.argv[1]), 2); s.set_busy(True); print('busy', flush=True);"
        "sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "busy"
        me = CpuShare(d, 2)
        me.set_busy(True)
        assert me.busy_workers() == 2
        assert me.threads(now=0.0) == 1
        child.kill()
        child.wait()
        assert me.busy_workers() == 1  # the lock died with the process
        me.close()
        assert len(list(d.iterdir())) == 1  # its file is still there...
        CpuShare(d, 2).close()
        assert list(d.iterdir()) == []  # ...until the next worker starts
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stdin.close()


def test_a_planted_link_or_fifo_cannot_misuse_the_share_folder(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(target)
    linked = CpuShare(tmp_path / "link", 2)
    assert not linked.active and linked.threads() == 2  # sharing off, never chmod'ed
    assert target.stat().st_mode & 0o7777 == 0o755
    d = tmp_path / "s"
    me = CpuShare(d, 2)
    assert d.stat().st_mode & 0o7777 == 0o700  # this user's alone (cpushare.py)
    os.mkfifo(d / "123.fifo")  # opening it blocking would hang the worker
    (d / "456.link").symlink_to(target)
    me.set_busy(True)
    assert me.busy_workers() == 1
    me.close()
