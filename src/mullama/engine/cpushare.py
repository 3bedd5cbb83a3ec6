"""Engine workers on the same CPUs split the CPU budget between those that are busy.

Why: llama.cpp (built with OpenMP, as llama-cpp-python builds it) meets its threads at a
barrier after every operation of the graph, several hundred times per decode step, and a
waiting thread spins there (libgomp's default spin count is 300,000 rounds) instead of
sleeping. While the threads of all busy engines fit the cores this is the fastest way to
wait. When they do not, a spinning thread holds a core that the thread it waits for
needs, and every barrier costs a scheduler time slice: two default engines on 2 cores
each running 2 threads took 150 s for what 1 thread each did in 1.6 s. Sleeping at the
barriers instead (``OMP_WAIT_POLICY=PASSIVE``) is 1.5-2.7x slower for one engine alone.
So the root fix is to never run more decode threads than cores: each busy worker runs
``max(1, budget // busy_workers)`` threads, re-read before every decode step
(``llama_set_n_threads`` costs nothing), and a worker with no work runs none (its
OpenMP threads sleep after the spin count: an idle model costs no CPU).

How workers find each other, across models of one daemon and across daemons of one user
on one host: a folder per user and CPU set under ``/dev/shm`` (tmpfs; else the temp
dir), mode 0700, holds one file per worker process; a busy worker holds an exclusive
``flock`` on its file. Counting the busy
ones is a non-blocking shared-lock probe per file (a few microseconds each). A worker
that dies loses its lock with its process, so a crash never leaves a phantom claim; its
file is removed by the next worker that starts. Fewer threads are taken at once; more
only after the count has stayed lower for ``raise_after`` seconds, so engines that take
turns between requests do not flap between oversubscribed and not.

Other users' daemons are not counted: a folder they could write to would let any local
user hold locks that throttle this daemon to one thread, or fill it with files that every
decode step would scan. So the folder is this user's (a real folder, not a link; one of
another user, or a link, turns sharing off with a warning), and a file in it that is not
a regular file of this user is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

from ..files import private_dir

log = logging.getLogger(__name__)


def share_threads(total: int, busy: int) -> int:
    """Threads for one of ``busy`` workers that split ``total`` (at least one each)."""
    return max(1, total // max(1, busy))


def share_dir(cpus: str, mode: str, daemon_pid: int, base: str | None = None) -> Path:
    """The folder where workers that share these CPUs meet. ``daemon`` mode keeps each
    daemon's workers to themselves (instances then split the cores by hand)."""
    if base is None:
        base = (
            "/dev/shm"
            if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
            else (tempfile.gettempdir())
        )
    name = f"mullama-cpu-u{os.geteuid()}-" + cpus.replace(",", "_")
    if mode == "daemon":
        name += f"-d{daemon_pid}"
    return Path(base) / name


def _own_file(fd: int) -> bool:
    """A peer's claim: a regular file of this user (not a FIFO, a device, another's)."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (also the CLI's check for a daemon's pid file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class CpuShare:
    """This worker's claim in a share folder and its view of the others'."""

    def __init__(self, directory: Path, total: int, raise_after: float = 0.1) -> None:
        self.dir = directory
        self.total = max(1, total)
        self.raise_after = raise_after
        self.busy = False
        self._lock = threading.Lock()  # threads() and close() come from two threads
        self.current = self.total
        self._higher_since: float | None = None
        self._peers: dict[str, int] = {}  # file name -> read-only fd used for probing
        # The pid names the owner (for stale files); the suffix keeps two processes
        # with the same pid in different PID namespaces apart.
        self._name = f"{os.getpid()}.{os.urandom(4).hex()}"
        self._fd = -1
        try:
            private_dir(directory)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            self._fd = os.open(directory / self._name, flags, 0o600)
        except OSError as exc:
            log.warning("CPU sharing is off: cannot use %s (%s)", directory, exc)
            return
        self._remove_stale()

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def set_busy(self, busy: bool) -> None:
        with self._lock:
            if busy == self.busy:
                return
            self.busy = busy
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX if busy else fcntl.LOCK_UN)

    def busy_workers(self) -> int:
        """Busy workers in the folder, this one included when it is busy."""
        n = 1 if self.busy else 0
        try:
            names = [e.name for e in os.scandir(self.dir) if e.name != self._name]
        except OSError:
            return n
        for gone in set(self._peers) - set(names):
            fd = self._peers.pop(gone)
            if fd >= 0:
                os.close(fd)
        for name in names:
            fd = self._peers.get(name)
            if fd is None:
                try:
                    # Never follow a link or block on a FIFO that someone put here.
                    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                    fd = self._peers[name] = os.open(self.dir / name, flags)
                except OSError:
                    continue
                if not _own_file(fd):  # not counted; looked at once
                    os.close(fd)
                    fd = self._peers[name] = -1
            if fd < 0:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                n += 1
                continue
            except OSError:
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
        return n

    def threads(self, now: float | None = None) -> int:
        """The thread count for the next decode step of this (busy) worker."""
        if self._fd < 0:
            return self.total
        with self._lock:
            return self._threads(now)

    def _threads(self, now: float | None) -> int:
        want = share_threads(self.total, self.busy_workers())
        if want < self.current:
            self.current, self._higher_since = want, None
        elif want > self.current:
            now = time.monotonic() if now is None else now
            if self._higher_since is None:
                self._higher_since = now
            elif now - self._higher_since >= self.raise_after:
                self.current, self._higher_since = want, None
        else:
            self._higher_since = None
        return self.current

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for fd in self._peers.values():
            if fd >= 0:
                os.close(fd)
        self._peers.clear()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.dir / self._name)
            os.close(self._fd)
            self._fd = -1

    def _remove_stale(self) -> None:
        """Files of worker processes that no longer exist (a crash, a kill -9)."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                pid = entry.name.partition(".")[0]
                if not pid.isdigit() or entry.name == self._name:
                    continue
                if entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                    continue
                if not pid_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
