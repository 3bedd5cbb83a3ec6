"""Files that hold user data (saved conversations, backups) and the folders around them:
made 0600 / 0700 whatever the umask, never through a link someone planted, and read only
when they are regular files of this user.

Why each step: ``os.open`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` refuses a link planted
where the file goes (a daemon run as root would otherwise write through it onto another
file), and its mode is masked by the umask, so ``fchmod`` sets the mode exactly. A read
opens with ``O_NOFOLLOW | O_NONBLOCK`` and checks ``fstat`` on the descriptor: a FIFO put
in place of a file would block the reader for ever, a link would make it read another
file, and checking the path first and opening it after is a race.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


class UnsafePath(OSError):
    """A path this user should not trust: a link, not a folder or file, or another
    user's."""


def private_dir(path: Path, levels: int = 1) -> None:
    """``path`` (and its ``levels - 1`` parents) made 0700 when missing, or checked when
    there: a real folder (not a link) of this user, closed to others if it was open.
    UnsafePath when it is a link, a file or another user's."""
    folders = [path, *list(path.parents)[: max(0, levels - 1)]]
    folders[-1].parent.mkdir(parents=True, exist_ok=True)  # above them: as it comes
    for folder in reversed(folders):
        made = False
        try:
            os.mkdir(folder, DIR_MODE)
            made = True
        except FileExistsError:
            pass
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{folder} is not a folder (a link or a file)")
        if st.st_uid != os.geteuid():
            raise UnsafePath(f"{folder} belongs to uid {st.st_uid}, not to this user")
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            if not made:
                log.warning("%s had mode %04o: now %04o", folder, stat.S_IMODE(st.st_mode),
                            DIR_MODE)  # fmt: skip
            os.chmod(folder, DIR_MODE)  # mkdir's mode is umasked


def create_private(path: Path, mode: int = FILE_MODE) -> int:
    """A new file at ``path`` opened for writing, with exactly ``mode``; whatever was
    there (a file left by a crash, a planted link) is removed first, never followed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_own(path: Path) -> int:
    """``path`` opened read-only: a regular file of this user (a link, a FIFO, a device
    or another user's file is UnsafePath). A file of this user that others could read is
    closed to them (it was made before files were made 0600)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to this user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError:
        os.close(fd)
        raise
    return fd


def readable_by_others(path: Path) -> str | None:
    """Who else can read the secret in ``path`` ("everyone", "group N"), or None: as
    ssh says of a private key. A group that is this process's own (a Kubernetes secret
    mounted with ``fsGroup``) does not count. Follows links (secrets are often links)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o004:
        return "everyone"
    if mode & 0o040 and st.st_gid != os.getegid() and st.st_gid not in os.getgroups():
        return f"group {st.st_gid}"
    return None


def warn_if_readable_by_others(path: Path, what: str) -> bool:
    """Log a warning when others can read ``path`` (a key file); True when it did."""
    who = readable_by_others(path)
    if who is None:
        return False
    log.warning(
        "%s %s can be read by %s (mode %04o): anyone who can read it can use what it "
        "holds; chmod 600 it",
        what, path, who, stat.S_IMODE(os.stat(path).st_mode),
    )  # fmt: skip
    return True
