"""A server in another process, for :class:`~fusewire.testing.emulator.KernelEmulator`.

:class:`ProcessServer` runs a :class:`~fusewire.server.dispatch.Dispatcher` in
a fresh interpreter and passes it the emulated kernel's messages over a
socketpair, like a successor that took a mount over and shares no memory
with its predecessor.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from fusewire.connection import Config
from fusewire.connection import Connection as _Connection
from fusewire.operations import Operations
from fusewire.server.dispatch import Dispatcher
from fusewire.wire import KernelRuleError

__all__ = ["NoReplyError", "ProcessServer", "from_state", "serve_child"]


class NoReplyError(KernelRuleError):
    """A request that needs a reply got none (the caller would hang forever)."""


def from_state(cls: type[Operations], blob: bytes) -> Operations:
    """``cls()`` loaded with a ``dump_state()`` blob (a picklable ProcessServer factory
    via ``functools.partial(from_state, MemFS, blob)``)."""
    ops = cls()
    ops.load_state(blob)  # type: ignore[attr-defined]
    return ops


_FRAME = struct.Struct("<I")


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


def _recv_frame(sock: socket.socket) -> bytes | None:
    head = b""
    while len(head) < 4:
        got = sock.recv(4 - len(head))
        if not got:
            return None
        head += got
    (n,) = _FRAME.unpack(head)
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            return None
        buf += got
    return bytes(buf)


class ProcessServer:
    """A server in a child process (a fresh interpreter) for :class:`KernelEmulator`.

    ``factory`` (picklable, called in the child) builds the Operations;
    ``state`` is ``Connection.export_state()`` of the connection to continue.
    The child restores the session and serves with a new Dispatcher: like a
    successor taking a mount over from the keeper, it shares no memory with
    this process and starts without a node table.  Messages travel
    length-prefixed over a socketpair.  Use as a context manager, or
    :meth:`close`.
    """

    def __init__(self, factory: Callable[[], Operations], state: dict[str, Any],
                 config: Config | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
        code = ("import sys; from fusewire.testing.procserver import serve_child; "
                "serve_child(int(sys.argv[1]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.sock = ours
        _send_frame(ours, pickle.dumps((factory, dict(state), config)))
        #: the kernel side's copy of the session (parses what the emulator sends)
        self.conn = _Connection.restore(state, config)

    def dispatch(self, buf: bytes) -> tuple[list[bytes] | None, list[int]]:
        """Send one message; return (the reply buffers or None, []) like Dispatcher.dispatch."""
        _send_frame(self.sock, bytes(buf))
        reply = _recv_frame(self.sock)
        if reply is None:
            raise NoReplyError(f"server process {self.proc.pid} is gone")
        return ([reply[1:]] if reply[:1] == b"R" else None), []

    def close(self) -> None:
        """Stop the child (it exits when the socket closes) and reap it."""
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_child(fd: int) -> None:
    """The child's side of :class:`ProcessServer`: restore, then serve until EOF."""
    sock = socket.socket(fileno=fd)
    setup = _recv_frame(sock)
    if setup is None:
        return
    factory, state, config = pickle.loads(setup)
    dispatcher = Dispatcher(factory(), _Connection.restore(state, config))
    while True:
        msg = _recv_frame(sock)
        if msg is None:
            return
        bufs, _ = dispatcher.dispatch(msg)
        _send_frame(sock, b"N" if bufs is None else b"R" + b"".join(bytes(b) for b in bufs))
