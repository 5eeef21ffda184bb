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

__all__ = ["MAX_ERRNO", "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
           "UsageError", "errno_of", "failure_errno", "reply_errno"]


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


# -- the errno policy -----------------------------------------------------------------------
#
# How a failure becomes an error reply is decided here, once; the dispatcher
# (server/dispatch.py: Dispatcher._failure/_error), the draft COMPOUND
# sub-replies, the serving loop's EIO for an unwritable reply and the
# emulator all answer through it (docs/design.md, "Errors").
#
# 1. An error reply carries a positive errno 1..MAX_ERRNO (``out_header.error``
#    is its negation; the kernel refuses anything below -511 or above 0).
# 2. ``FUSEError(e)``: e, if it is in range.  A value out of range (0,
#    negative, > 511) is the handler's bug: EIO, and the dispatcher logs it.
#    Values are never negated: a C-style ``-errno`` is out of range too (the
#    fusepy layer, whose methods may return ``-errno``, negates those itself).
# 3. ``ProtocolError``: its ``errno_hint`` (a malformed request, a reply the
#    protocol forbids: nodeid 0/1 from a create...).
# 4. Any other exception escaping a handler -- an ``OSError`` included, and a
#    return value of the wrong type, which fails while the reply is built --
#    is a bug in the filesystem: EIO, a log line naming the request, and
#    serving continues.
# 5. Library code that means an ``OSError``'s errno (pathops, the compat
#    layers, the example filesystems) converts it with :func:`errno_of`: its
#    errno if in range, EIO when it has none.
# 6. Requests the kernel does not wait on (FORGET, BATCH_FORGET,
#    NOTIFY_REPLY) get no reply, error or not.

#: The largest errno an error reply may carry (the kernel refuses ``error < -511``).
MAX_ERRNO = 511


def reply_errno(err: object) -> int:
    """The errno an error reply carries for ``err``: ``err`` if it is an int in
    1..511, else EIO (0, negative, too large, None, not an int)."""
    if isinstance(err, int) and not isinstance(err, bool) and 0 < err <= MAX_ERRNO:
        return int(err)
    return _errno.EIO


def errno_of(exc: BaseException) -> int:
    """The errno that answers a request for ``exc``, for code that means it.

    ``FUSEError`` -> its errno, ``ProtocolError`` -> its ``errno_hint``,
    ``OSError`` -> its errno (EIO when it has none), anything else -> EIO;
    always through :func:`reply_errno`.
    """
    if isinstance(exc, ProtocolError):
        return reply_errno(exc.errno_hint)
    return reply_errno(getattr(exc, "errno", None))


def failure_errno(exc: BaseException,
                  expected: tuple[type[BaseException], ...] = (ProtocolError,)
                  ) -> tuple[int, str | None]:
    """``(errno, why it is a bug or None)`` for an exception that ended a handler.

    ``expected`` are the exception types that carry their answer on purpose
    (the dispatcher passes :class:`LocalProtocolError`; it answers
    ``FUSEError`` before asking): their errno (``errno_hint`` for a
    :class:`ProtocolError`), or EIO with a reason when that is out of range.
    Any other exception is a bug: EIO, with a reason.
    """
    if isinstance(exc, expected):
        raw = exc.errno_hint if isinstance(exc, ProtocolError) else getattr(exc, "errno", None)
        err = reply_errno(raw)
        if err != raw:
            return err, f"errno {raw!r} outside 1..{MAX_ERRNO}"
        return err, None
    return _errno.EIO, f"{type(exc).__name__}: {exc}"
