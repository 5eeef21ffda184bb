"""The keeper's control socket: SOCK_SEQPACKET, one JSON object per message, fds by SCM_RIGHTS."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["UnsafeRunDirError", "ensure_run_dir", "open_private", "peer_cred", "recv_msg",
           "request", "run_dir", "send_msg", "socket_path"]

_MAXMSG = 1 << 20


class UnsafeRunDirError(OSError):
    """The run directory is not private to this user (``str()`` is one line)."""

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


def run_dir() -> str:
    """Where keeper sockets and logs live, one directory per user.

    ``$FUSEWIRE_RUN_DIR`` if set; else ``$XDG_RUNTIME_DIR/fusewire``; else
    ``/run/fusewire`` for root and ``/tmp/fusewire-<uid>`` for other users.
    :func:`ensure_run_dir` creates and checks it before anything is put there.
    """
    explicit = os.environ.get("FUSEWIRE_RUN_DIR")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "fusewire")
    if os.geteuid() == 0:
        return "/run/fusewire"
    return f"/tmp/fusewire-{os.geteuid()}"


def ensure_run_dir(path: str | None = None) -> str:
    """Create the run directory (0700) if needed and check it is ours; return it.

    The directory itself (never a symlink to one) must belong to this user
    and be writable by nobody else, or another local user could plant or
    replace the sockets and logs in it.

    Raises:
        UnsafeRunDirError: it is a symlink, not a directory, someone else's, or
            group/other-writable.
        OSError: it cannot be created (e.g. EACCES in /run for a user).
    """
    path = path or run_dir()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "the run directory is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "the run directory is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"the run directory belongs to uid {st.st_uid}, not to us"
    elif st.st_mode & 0o022:
        problem = f"the run directory is writable by others (mode {st.st_mode & 0o7777:o})"
    if problem is not None:
        raise UnsafeRunDirError(errno.EPERM, f"{problem}; refusing to use it", path)
    return path


def open_private(path: str, *, append: bool = False) -> int:
    """Create ``path`` 0600 with O_NOFOLLOW|O_EXCL and return the descriptor.

    A file already there (say a log of a keeper that crashed) is removed
    first when ``append`` is false; with ``append`` it is reused only if it
    is a regular file of ours.  Never follows a symlink.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
    if not append:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return os.open(path, flags | os.O_EXCL, 0o600)
    fd = os.open(path, flags, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafeRunDirError(errno.EPERM, "not a regular file of ours; refusing it", path)
    return fd


def socket_path(mountpoint: str) -> str:
    """The keeper socket of a mountpoint: a hash of its real path.

    Only the parent is resolved: a stat of the mountpoint itself would block
    while the mount has no server (restart=manual, or between crash and takeover).
    """
    absolute = os.path.abspath(mountpoint)
    real = os.path.join(os.path.realpath(os.path.dirname(absolute)),
                        os.path.basename(absolute))
    digest = hashlib.sha256(real.encode()).hexdigest()[:20]
    return os.path.join(run_dir(), f"{digest}.sock")


def send_msg(sock: socket.socket, obj: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one message (and fds)."""
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """Receive one message; (None, []) at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, _MAXMSG, 8)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("bad control message")
    return obj, list(fds)


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def connect(path: str, timeout: float | None = 10.0) -> socket.socket:
    """Connect to a keeper; refuse one run by anybody but this user or root.

    Raises:
        PermissionError: the peer (SO_PEERCRED) is another user.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        pid, uid, _gid = peer_cred(sock)
        if uid not in (0, os.geteuid()):
            raise PermissionError(errno.EPERM, f"the keeper socket is served by pid {pid} "
                                  f"of uid {uid}, not by us or root", path)
    except BaseException:
        sock.close()
        raise
    return sock


def request(path: str, obj: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request/response exchange with a keeper."""
    with connect(path, timeout) as sock:
        send_msg(sock, obj)
        reply, fds = recv_msg(sock)
        for fd in fds:
            os.close(fd)
    if reply is None:
        raise ConnectionError("keeper closed the connection")
    return reply
