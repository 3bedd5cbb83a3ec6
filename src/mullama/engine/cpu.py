"""The CPU budget this process really has, and the default thread count taken from it.

``os.cpu_count()`` counts the host's logical CPUs. A process may be allowed far fewer:
an affinity mask (``taskset``, systemd ``CPUAffinity=``, a cpuset), a cgroup CPU quota
(systemd ``CPUQuota=``, a Kubernetes CPU limit, ``docker --cpus``), and SMT siblings that
share one core's execution units. llama.cpp's decode threads meet at a barrier after
every operation of the graph and spin while they wait there, so a thread more than the
cores that can run it does not add speed: it stalls all the others (see
``engine/cpushare.py``). The default is therefore one thread per physical core the
process may run on, never more than its quota allows, at least one.

Pure functions over ``/proc`` and ``/sys`` (their roots are parameters, so tests give
sample trees); nothing here imports llama.cpp.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CpuBudget:
    logical: int  # os.cpu_count(): the host's logical CPUs
    allowed: tuple[int, ...]  # CPUs in this process's affinity mask
    physical: int  # physical cores among the allowed CPUs (SMT siblings counted once)
    quota: float | None  # cgroup CPU quota in CPUs (None: no limit found)
    quota_source: str | None  # the file the quota came from
    threads: int  # the default thread count chosen from the above

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["allowed"] = format_cpu_list(self.allowed)
        return out

    def describe(self) -> str:
        quota = (
            "no quota" if self.quota is None else f"quota {self.quota:g} CPUs ({self.quota_source})"
        )
        return (
            f"{self.logical} logical CPUs, {len(self.allowed)} allowed "
            f"({format_cpu_list(self.allowed)}), {self.physical} physical cores among them, "
            f"{quota} -> {self.threads} threads"
        )


def detect(proc_root: str | Path = "/proc", sys_root: str | Path = "/sys") -> CpuBudget:
    """Read the affinity mask, the cgroup quota and the core topology of this process."""
    logical = os.cpu_count() or 1
    try:
        allowed = tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        allowed = tuple(range(logical))
    physical = physical_cores(allowed, Path(sys_root))
    quota, source = cgroup_quota(Path(proc_root))
    return CpuBudget(
        logical=logical,
        allowed=allowed,
        physical=physical,
        quota=quota,
        quota_source=source,
        threads=choose_threads(len(allowed), physical, quota),
    )


def choose_threads(n_allowed: int, physical: int, quota: float | None) -> int:
    """One thread per physical core, within the quota (rounded down: a thread the quota
    cannot run is throttled while the others wait for it at the next barrier)."""
    n = min(n_allowed, physical) if physical > 0 else n_allowed
    if quota is not None:
        n = min(n, math.floor(quota + 1e-9))
    return max(1, n)


# ---- topology ---------------------------------------------------------------------------


def physical_cores(allowed: tuple[int, ...], sys_root: Path) -> int:
    """Distinct (package, core) pairs among ``allowed``; ``len(allowed)`` when the
    topology files are missing (a container without /sys, another OS)."""
    cores: set[tuple[str, str]] = set()
    base = sys_root / "devices" / "system" / "cpu"
    for cpu in allowed:
        topo = base / f"cpu{cpu}" / "topology"
        try:
            core = (topo / "core_id").read_text().strip()
            package = (topo / "physical_package_id").read_text().strip()
        except OSError:
            return len(allowed)
        cores.add((package, core))
    return len(cores) or len(allowed)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``0-3,8,10-11`` -> (0, 1, 2, 3, 8, 10, 11)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 8) -> ``0-3,8``."""
    parts: list[str] = []
    # Consecutive CPUs share the same (cpu - position) key.
    for _, run in itertools.groupby(enumerate(sorted(cpus)), lambda p: p[1] - p[0]):
        ids = [cpu for _, cpu in run]
        parts.append(f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0]))
    return ",".join(parts)


# ---- cgroup quota -----------------------------------------------------------------------


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max``: ``"max 100000"`` (no limit) or ``"150000 100000"`` (1.5)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    quota = int(fields[0])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of -1 is no limit."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def cgroup_quota(proc_root: Path) -> tuple[float | None, str | None]:
    """The smallest CPU quota on this process's cgroup path (its own group and every
    ancestor up to the mount's root), v2 and v1 alike, and the file it came from."""
    try:
        groups = (proc_root / "self" / "cgroup").read_text()
        mounts = (proc_root / "self" / "mountinfo").read_text()
    except OSError:
        return None, None
    best: tuple[float | None, str | None] = (None, None)
    for directory, reader in cgroup_dirs(groups, mounts):
        for d in _ancestors(directory.mount_point, directory.path):
            try:
                value = reader(d)
            except (OSError, ValueError, IndexError):
                continue
            if value is not None and (best[0] is None or value < best[0]):
                best = (value, str(d))
    return best


@dataclass(frozen=True)
class CgroupDir:
    mount_point: Path
    path: Path  # the process's cgroup directory under mount_point


def read_cpu_max(d: Path) -> float | None:
    return parse_cpu_max((d / "cpu.max").read_text())


def read_cfs(d: Path) -> float | None:
    return parse_cfs((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text())


def cgroup_dirs(groups: str, mounts: str) -> list[tuple[CgroupDir, Any]]:
    """Pair each line of /proc/self/cgroup that can carry a CPU quota with its mount.

    /proc/self/cgroup gives the path from the hierarchy's root; mountinfo gives where
    that hierarchy (or a part of it: ``root``, field 4, in a container) is mounted."""
    v2_path: str | None = None
    v1_path: str | None = None
    for line in groups.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    found: list[tuple[CgroupDir, Any]] = []
    for line in mounts.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        root, mount_point, fstype, options = lf[3], lf[4], rf[0], rf[2]
        if fstype == "cgroup2" and v2_path is not None:
            d = _under(mount_point, root, v2_path)
            if d is not None:
                found.append((d, read_cpu_max))
        elif fstype == "cgroup" and v1_path is not None and "cpu" in options.split(","):
            d = _under(mount_point, root, v1_path)
            if d is not None:
                found.append((d, read_cfs))
    return found


def _under(mount_point: str, root: str, path: str) -> CgroupDir | None:
    """The directory of cgroup ``path`` in a hierarchy whose ``root`` is mounted at
    ``mount_point``; None when the path is outside what is mounted."""
    root = root.rstrip("/") or "/"
    if root != "/":
        if path != root and not path.startswith(root + "/"):
            # A container sees its own group as "/" in cgroup namespaces; anything
            # else outside the mounted part cannot be read from here.
            return CgroupDir(Path(mount_point), Path(mount_point)) if path == "/" else None
        path = path[len(root) :] or "/"
    return CgroupDir(Path(mount_point), Path(mount_point) / path.lstrip("/"))


def _ancestors(mount_point: Path, directory: Path) -> list[Path]:
    out = [directory]
    while directory != mount_point and mount_point in directory.parents:
        directory = directory.parent
        out.append(directory)
    return out
