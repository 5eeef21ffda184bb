"""The keeper's control socket: SOCK_SEQPACKET, one JSON object per message, fds by SCM_RIGHTS."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["peer_cred", "recv_msg", "request", "run_dir", "send_msg", "socket_path"]

_MAXMSG = 1 << 20


def run_dir() -> str:
    """Where keeper sockets and logs live, one directory per user.

    ``$FUSEWIRE_RUN_DIR`` if set; else ``$XDG_RUNTIME_DIR/fusewire``; else
    ``/run/fusewire`` for root and ``/tmp/fusewire-<uid>`` for other users.
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
    """Connect to a keeper."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    sock.connect(path)
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
