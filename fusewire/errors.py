"""Error taxonomy of the protocol core (h11 style).

:class:`ProtocolError` is never raised itself.  :class:`RemoteProtocolError`
means the peer (the kernel, or whatever wrote the bytes) broke the protocol;
:class:`LocalProtocolError` means our side tried to do something the
protocol forbids.  Both carry ``errno_hint``: the errno a server should
answer with.  A remote error also says which ``unique`` to answer (None when
the header itself was unreadable, so the message can only be dropped) and
whether the opcode wants a reply at all.
"""

from __future__ import annotations

import errno as _errno

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError", "UsageError"]


class ProtocolError(Exception):
    """Base class; carries the errno a server should reply with."""

    def __init__(self, msg: str, errno_hint: int = _errno.EIO) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise RemoteProtocolError or LocalProtocolError")
        super().__init__(msg)
        self.errno_hint = errno_hint


class RemoteProtocolError(ProtocolError):
    """The bytes received break the protocol.

    ``unique`` is the request to answer with ``-errno_hint`` (None: the header
    is unreadable; log and drop).  ``needs_reply`` is False for opcodes the
    kernel never waits on (FORGET, BATCH_FORGET, NOTIFY_REPLY).
    """

    def __init__(self, msg: str, errno_hint: int = _errno.EIO, *, unique: int | None = None,
                 opcode: int | None = None, needs_reply: bool = True) -> None:
        super().__init__(msg, errno_hint)
        self.unique = unique
        self.opcode = opcode
        self.needs_reply = needs_reply and unique is not None


class LocalProtocolError(ProtocolError):
    """Our side broke the protocol (a bad reply, a request before INIT...)."""


class UsageError(ValueError):
    """A person's mistake in asking for a filesystem or a mount (arguments, options).

    The command line prints it as one line, without a traceback, and exits 1.
    """
