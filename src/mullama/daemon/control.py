"""The control socket: the API over a unix socket (mode 0600) plus a pid file next to it.

A second daemon on the same socket refuses to start; a socket file left by a crashed
daemon (nothing accepts connections on it) is replaced.

The last default folder, ``<temp dir>/mullama-<uid>``, lives in a folder every user can
write to: another user could have made it first (then owns it and could swap the socket
under the CLI) or left it open to all. It is used only when it is a real folder owned by
this user; one left group/world-accessible by this user is closed (0700) first. The pid
file is written without following a link planted in its place (a daemon run as root would
otherwise truncate the link's target), and read without following one or blocking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..files import create_private, private_dir
from ..security.policy import LOCAL_SOCKET_SCOPE_KEY

log = logging.getLogger(__name__)

OFF_VALUES = frozenset({"none", "off", "false", "no", "0"})


class ControlSocketError(Exception):
    pass


def fallback_folder() -> Path:
    """The default socket folder when neither XDG_RUNTIME_DIR nor /run can be used: in the
    temp dir, which every user can write to (see private_folder)."""
    return Path(tempfile.gettempdir()) / f"mullama-{os.getuid()}"


def default_socket_path() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "mullama" / "mullama.sock"
    run = Path("/run/mullama")
    if (run.is_dir() and os.access(run, os.W_OK)) or (
        not run.exists() and os.access("/run", os.W_OK)
    ):
        return run / "mullama.sock"
    return fallback_folder() / "mullama.sock"


def private_folder(folder: Path) -> None:
    """Make ``folder`` (0700) or check the one there: a real folder (not a link) of this
    user; this user's own folder left open to others is closed. ControlSocketError when
    it cannot be trusted."""
    try:
        private_dir(folder)
    except OSError as exc:
        raise ControlSocketError(
            f"cannot use control socket folder {folder}: {exc} (whoever controls it could "
            "intercept the control socket): remove it, or choose another place with --socket"
        ) from exc


def socket_path(value: str | None) -> Path | None:
    """``ipc:///p``, ``unix:///p`` or a plain path; None/empty = the default; ``none`` = off."""
    if value is None or not value.strip():
        return default_socket_path()
    value = value.strip()
    if value.lower() in OFF_VALUES:
        return None
    for prefix in ("ipc://", "unix://"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    return Path(value).expanduser().absolute()


def pid_path(sock: Path) -> Path:
    return sock.with_suffix(".pid")


def read_pid(sock: Path) -> int | None:
    """The pid in the pid file; None when there is none (or it is a link, a FIFO, not a
    number): it is opened without following a link or blocking."""
    try:
        fd = os.open(pid_path(sock), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return int(os.read(fd, 32).strip())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def write_pid(path: Path) -> None:
    """A fresh pid file (0644): whatever was there (a stale one, a link planted to make a
    root daemon overwrite another file) is removed, never followed."""
    fd = create_private(path, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def socket_alive(path: Path, timeout: float = 2.0) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError:
            return False
        return True


class ControlSocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid_path = pid_path(path)
        self._inode: int | None = None

    def bind(self) -> socket.socket:
        path = self.path
        if path.parent == fallback_folder():
            private_folder(path.parent)
        elif not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise ControlSocketError(f"{path} exists and is not a socket; remove it first")
            if socket_alive(path):
                pid = read_pid(path)
                who = f" (pid {pid})" if pid else ""
                raise ControlSocketError(
                    f"another mullama daemon{who} is already running on control socket {path}"
                )
            log.warning("replacing stale control socket %s (no daemon answers on it)", path)
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"cannot create control socket {path}: {exc}") from exc
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        self._inode = path.stat().st_ino
        try:
            write_pid(self.pid_path)
        except OSError as exc:
            sock.close()
            path.unlink(missing_ok=True)
            raise ControlSocketError(f"cannot write pid file {self.pid_path}: {exc}") from exc
        log.info("control socket: %s", path)
        return sock

    def remove(self) -> None:
        """Remove the socket and pid file if they are still ours."""
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        with contextlib.suppress(OSError):
            if read_pid(self.path) == os.getpid():
                self.pid_path.unlink()


class LocalSocketApp:
    """Marks requests that came in over the control socket (see security.policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[LOCAL_SOCKET_SCOPE_KEY] = True
        await self.app(scope, receive, send)
