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

How workers find each other, across models of one daemon and across daemons on one host:
a folder per CPU set under ``/dev/shm`` (tmpfs; else the temp dir) holds one file per
worker process; a busy worker holds an exclusive ``flock`` on its file. Counting the busy
ones is a non-blocking shared-lock probe per file (a few microseconds each). A worker
that dies loses its lock with its process, so a crash never leaves a phantom claim; its
file is removed by the next worker that starts. Fewer threads are taken at once; more
only after the count has stayed lower for ``raise_after`` seconds, so engines that take
turns between requests do not flap between oversubscribed and not.
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
    name = "mullama-cpu-" + cpus.replace(",", "_")
    if mode == "daemon":
        name += f"-d{daemon_pid}"
    return Path(base) / name


def _open_folder(directory: Path) -> None:
    """Create the share folder (sticky and world-writable, like /tmp: daemons of other
    users meet there too) or check that the one there is a real folder, not a link."""
    try:
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o1777)  # the folder we just made (mkdir's mode is umasked)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{directory} is not a folder")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise OSError(f"{directory} is world-writable without the sticky bit")


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
            _open_folder(directory)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            self._fd = os.open(directory / self._name, flags, 0o644)
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
            os.close(self._peers.pop(gone))
        for name in names:
            fd = self._peers.get(name)
            if fd is None:
                try:
                    # Never follow a link or block on a FIFO that someone put here.
                    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                    fd = self._peers[name] = os.open(self.dir / name, flags)
                except OSError:
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
                if not pid_alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
