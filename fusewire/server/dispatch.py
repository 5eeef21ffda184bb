"""Dispatch: one request in, one :class:`~fusewire.Operations` call, one reply out.

The dispatcher does the protocol chores so filesystems don't: lookup counts
per nodeid (an entry reply counts one; READDIRPLUS entries count only when
they fit in the reply; FORGET hands the exact counts to ``forget``), readdir
packing, xattr size probes (size 0 asks for the length; a value larger than
the kernel's buffer is ERANGE), interrupts, UTIME_NOW, flock routing, the
ENOSYS-without-calling rule for unimplemented methods, and the error
policy: ``FUSEError`` becomes its errno, any other exception EIO plus a log
line with the traceback (or, with ``on_error="raise"``, stops the server).

Every request that needs a reply gets exactly one; malformed messages get an
error reply from the connection's protocol error (or a logged drop when the
header is unreadable).  :meth:`Dispatcher.dispatch` never raises except in
``on_error="raise"`` mode.

Hooks for recovery: ``journal`` (if set) sees every reply of a
non-idempotent request *before* it is returned for writing, and answers
resent requests it has already seen; ``nodes`` is the lookup-count table a
successor restores.

Deferred replies and async handlers
-----------------------------------
A handler that cannot answer now raises a :class:`~fusewire.types.Pending`
(from ``ctx.defer()``): :meth:`Dispatcher.handle` then returns no buffers,
the request stays in flight (``pending``, keyed like the connection's
in-flight table) and the Pending is bound to the serving thread's
completion queue (:meth:`attach`).  When it is finished, the loop calls
:meth:`Dispatcher.complete` on its own thread, which runs the opcode's
``_op_*`` function once more with an ``ops`` stand-in whose methods return
the value given to ``Pending.reply``: the reply is encoded by exactly the
code an immediate return goes through, lookups are counted and the journal
records it then (completion order).

``async def`` handlers are found when an opcode is first resolved.  Such an
opcode's ``_op_*`` runs inside a task on the server's event loop
(:attr:`Dispatcher.aloop`) with an ``ops`` stand-in that, at each call of an
async method, suspends the pass and awaits the coroutine, then runs the pass
again with the results so far (sync calls made in an earlier pass are not
repeated; in-arguments the handler filled, such as a readdir token, are
carried over).  The task's result goes through the deferred path above, and
an INTERRUPT cancels the task (the handler sees ``CancelledError``, the
caller gets EINTR).  Opcodes whose handlers are all sync keep the inline
path, and nothing imports asyncio unless some handler is ``async def``.
"""

from __future__ import annotations

import errno
import fcntl
import inspect
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from fusewire.connection import Connection, Request, encode_error
from fusewire.errors import (
    MAX_ERRNO,
    LocalProtocolError,
    RemoteProtocolError,
    errno_of,
    failure_errno,
)
from fusewire.handles import SessionHandles
from fusewire.opcodes.flags import (
    FATTR,
    FSYNC,
    FUSE_ROOT_ID,
    GETATTR,
    LK,
    RELEASE,
    WRITE,
    InitFlag,
    Opcode,
)
from fusewire.opcodes.table import OPS, OpInfo, Reply
from fusewire.operations import Operations
from fusewire.readdir import ReaddirToken
from fusewire.server.draft_serve import Buffers, DraftServing
from fusewire.server.replies import (
    attr_fields,
    attr_out_bytes,
    entry_bytes,
    open_out_bytes,
    statx_bytes,
)
from fusewire.server.trace import format_reply, format_request
from fusewire.structs.codec import CODECS
from fusewire.types import (
    DeferrableContext,
    EntryAttributes,
    FUSEError,
    Lock,
    Pending,
    RequestContext,
    SetattrFields,
)
from fusewire.types import timeout_parts as _ts

__all__ = ["Buffers", "Dispatcher", "Journal", "NodeTable", "attr_out_bytes", "entry_bytes",
           "open_out_bytes", "wanted_flags"]

log = logging.getLogger(__name__)

#: FUSE_WRITE_KILL_SUIDGID as a plain int (tested on every WRITE)
_WRITE_KILL_SUIDGID = int(WRITE.KILL_SUIDGID)

_ENTRY = CODECS["entry_out"].struct
_ATTR_OUT = CODECS["attr_out"].struct
_OPEN_OUT = CODECS["open_out"].struct
_WRITE_OUT = CODECS["write_out"].struct
_LSEEK_OUT = CODECS["lseek_out"].struct
_COPY_OUT_64 = CODECS["copy_file_range_out"].struct
_IOCTL_OUT = CODECS["ioctl_out"].struct
_POLL_OUT = CODECS["poll_out"].struct
_BMAP_OUT = CODECS["bmap_out"].struct
_LK_OUT = CODECS["lk_out"].struct
_STATFS_OUT = CODECS["statfs_out"].struct
_GETXATTR_OUT = CODECS["getxattr_out"].struct
_OUT_HDR = CODECS["out_header"].struct
_PACK_HDR = _OUT_HDR.pack
_STATX_OUT = CODECS["statx_out"].struct
_COMPOUND_OUT = CODECS["compound_out"].struct
_IN_HEADER = CODECS["in_header"]
_ENTRY2_NODEID = CODECS["entry2_out"].head(1)
#: fuse_out_header and a full-size fuse_attr_out packed in one call (the GETATTR
#: fast path: one bytes object, no list of parts to size up)
_HDR_ATTR_OUT = struct.Struct(_OUT_HDR.format + _ATTR_OUT.format.lstrip("<="))
_HDR_ATTR_OUT_SIZE = _HDR_ATTR_OUT.size
_HDR_ENTRY = struct.Struct(_OUT_HDR.format + _ENTRY.format.lstrip("<="))
_HDR_ENTRY_SIZE = _HDR_ENTRY.size
_NS = 1_000_000_000
_U64 = 0xFFFFFFFFFFFFFFFF
_RESEND_MASK = (1 << 63) - 1
_LK_OFFSET_MAX = (1 << 63) - 1
# Flag bits as plain ints: ``int & IntFlag`` builds an IntFlag (~1 µs) per use, a
# plain ``&`` costs ~10 ns; these are tested on every SETATTR, RELEASE and FSYNC.
_ATIME = int(FATTR.ATIME)
_ATIME_NOW = int(FATTR.ATIME_NOW)
_MTIME = int(FATTR.MTIME)
_MTIME_NOW = int(FATTR.MTIME_NOW)
_ATIME_ANY = _ATIME | _ATIME_NOW
_MTIME_ANY = _MTIME | _MTIME_NOW
_F_CTIME = int(FATTR.CTIME)
_F_MODE = int(FATTR.MODE)
_F_UID = int(FATTR.UID)
_F_GID = int(FATTR.GID)
_F_SIZE = int(FATTR.SIZE)
_F_KILL_SUIDGID = int(FATTR.KILL_SUIDGID)
_F_FH = int(FATTR.FH)
_FLOCK_UNLOCK = int(RELEASE.FLOCK_UNLOCK)
_FDATASYNC = int(FSYNC.FDATASYNC)
_READDIRPLUS = int(Opcode.READDIRPLUS)

#: source files whose frames build replies from a handler's value (see _raised_here)
_ENCODER_FILES = frozenset({_ts.__code__.co_filename, os.path.abspath(__file__), __file__,
                            entry_bytes.__code__.co_filename,
                            DraftServing._install_draft.__code__.co_filename})


class Journal(Protocol):
    """What recovery plugs into the dispatcher (see :mod:`fusewire.recovery`)."""

    def replayed(self, req: Request) -> Buffers | None:
        """For a resent request already executed: the recorded reply, else None."""
        ...

    def record(self, req: Request, bufs: Buffers, lookups: list[int]) -> None:
        """Make the reply (and the lookups it hands out) durable before it is written."""
        ...


class NodeTable:
    """Lookup counts per nodeid, as the kernel holds them."""

    __slots__ = ("counts", "lock")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.lock = threading.Lock()

    def add(self, nodeids: Iterable[int]) -> None:
        """Count one lookup of each nodeid."""
        counts = self.counts
        with self.lock:
            for n in nodeids:
                counts[n] = counts.get(n, 0) + 1

    def forget(self, nodeid: int, nlookup: int) -> int:
        """Give back ``nlookup``; return the count actually released (never below 0)."""
        with self.lock:
            have = self.counts.get(nodeid, 0)
            take = min(have, nlookup)
            if have - take:
                self.counts[nodeid] = have - take
            else:
                self.counts.pop(nodeid, None)
            return take


def _overrides(ops: Operations, name: str) -> bool:
    return getattr(type(ops), name, None) is not getattr(Operations, name, None)


def _takes_lock_owner(ops: Operations) -> bool:
    """Whether ``ops.flush`` takes ``lock_owner`` (older overrides take only ``fh``)."""
    try:
        params = inspect.signature(ops.flush).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _eager_task() -> Any:
    """asyncio.Task where it can start eagerly (Python 3.12+), else None."""
    if sys.version_info < (3, 12):
        return None
    import asyncio

    return asyncio.Task


#: handlers that may not be coroutines (called outside requests, or before any loop)
_SYNC_ONLY = frozenset({"init", "destroy"})

def wanted_flags(ops: Operations, base: InitFlag) -> InitFlag:
    """Trim the INIT flags we ask for to what ``ops`` implements."""
    want = base
    if not (_overrides(ops, "getlk") or _overrides(ops, "setlk")):
        want &= ~InitFlag.POSIX_LOCKS
    if not _overrides(ops, "flock"):
        want &= ~InitFlag.FLOCK_LOCKS
    if not _overrides(ops, "readdir"):
        want &= ~(InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO)
    if not ops.supports_dot_lookup:
        want &= ~InitFlag.EXPORT_SUPPORT
    if ops.enable_passthrough:
        # the kernel refuses passthrough together with the writeback cache
        want |= InitFlag.PASSTHROUGH
    elif ops.enable_writeback_cache:
        want |= InitFlag.WRITEBACK_CACHE
    if ops.enable_acl:
        want |= InitFlag.POSIX_ACL
    if ops.applies_umask:
        want |= InitFlag.DONT_MASK
    return want


class _Replay:
    """Stands in for the dispatcher while an ``_op_*`` function runs again: every
    attribute is the dispatcher's, except ``ops``."""

    __slots__ = ("_d", "ops")

    def __init__(self, d: Dispatcher, ops: Any) -> None:
        self._d = d
        self.ops = ops

    def __getattr__(self, name: str) -> Any:
        return getattr(self._d, name)


class _Answer:
    """``ops`` stand-in for a deferred reply: every handler returns ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __getattr__(self, name: str) -> Callable[..., Any]:
        value = self.value
        return lambda *args, **kwargs: value


class _Suspend(BaseException):
    """Raised out of an ``_op_*`` pass at an async handler's call: await ``coro``."""

    def __init__(self, coro: Coroutine[Any, Any, Any], args: tuple[Any, ...]) -> None:
        super().__init__()
        self.coro = coro
        self.args = args


def _carry_over(old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
    """Copy what a handler filled into in-arguments of an earlier pass (readdir's
    token) into this pass's fresh ones."""
    for a, b in zip(old, new, strict=False):
        if a is not b and type(a) is type(b):
            slots = getattr(type(a), "__slots__", None)
            if slots:
                try:
                    for name in slots:
                        if hasattr(a, name):
                            setattr(b, name, getattr(a, name))
                except AttributeError:
                    pass                # immutable (a frozen Lock): nothing was filled


class _Calls:
    """``ops`` stand-in for one pass of an async opcode: earlier calls' results are
    returned again; a new call to an async handler suspends the pass."""

    __slots__ = ("_async", "_done", "_i", "_ops")

    def __init__(self, ops: Operations, async_names: frozenset[str],
                 done: list[tuple[Any, tuple[Any, ...]]]) -> None:
        self._ops = ops
        self._async = async_names
        self._done = done
        self._i = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._ops, name)
        if not callable(method):
            return method  # type: ignore[no-any-return]

        def call(*args: Any) -> Any:
            i = self._i
            self._i = i + 1
            if i < len(self._done):
                result, old = self._done[i]
                _carry_over(old, args)
                return result
            if name in self._async:
                raise _Suspend(method(*args), args)
            try:
                result = method(*args)
            except Pending as p:        # a sync handler deferred: the task awaits it
                raise _Suspend(_await_pending(p), args) from None
            self._done.append((result, args))
            return result
        return call


async def _await_pending(p: Pending) -> Any:
    """Wait, inside a task, for a Pending a handler raised; return its value or raise
    its errno.  Cancelling the task interrupts the Pending."""
    import asyncio

    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle() -> None:
        if not fut.done():
            fut.set_result(None)

    def wake(_p: Pending) -> None:
        loop.call_soon_threadsafe(settle)

    p.__traceback__ = None
    p.bind(wake)
    try:
        await fut
    except asyncio.CancelledError:
        p.interrupt()
        raise
    outcome = p.outcome
    assert outcome is not None
    if not outcome[0]:
        raise FUSEError(outcome[1])
    return outcome[1]

def _raised_here(exc: BaseException) -> bool:
    """Whether ``exc`` came from building the reply (a handler's value), not the handler.

    A handler's own bug raises with the handler's frame in the traceback; a
    value of the wrong type makes the reply building fail with only this
    module's frames (and the timeout helper's) in it.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_filename not in _ENCODER_FILES:
            return False
        tb = tb.tb_next
    return True


def _data(value: Any, handler: str) -> bytes | bytearray | memoryview:
    """``value`` if it can go to writev as reply data with ``len()`` its size in bytes.

    A ``str``, a list or any other object is a TypeError here, where the
    dispatcher turns it into EIO, instead of in ``writev``.
    """
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, memoryview):
        if value.itemsize == 1 and value.ndim == 1 and value.c_contiguous:
            return value
        return value.tobytes()
    raise TypeError(f"{handler}() must return bytes, not {type(value).__name__}")


class Dispatcher(DraftServing):
    """Turns raw messages into Operations calls and reply buffers."""

    def __init__(self, ops: Operations, conn: Connection, *, debug: bool = False,
                 on_error: str = "log", nodes: NodeTable | None = None,
                 journal: Journal | None = None) -> None:
        self.ops = ops
        self.conn = conn
        self.debug = debug
        self.on_error = on_error
        self.nodes = nodes or NodeTable()
        self.journal = journal
        #: set when a handler raised and on_error == "raise", or init() raised
        self.fatal: BaseException | None = None
        #: what the filesystem's init() raised (the mount is unusable then)
        self.init_error: BaseException | None = None
        self.initialized = conn.session is not None
        #: called with each decoded Request (capture, tests); None for speed
        self.observer: Callable[[Request], None] | None = None
        #: deferred requests (a Pending raised, or an async handler running), by key
        self.pending: dict[int, Pending] = {}
        #: the context class handlers get: DeferrableContext once a loop attached
        self._context: type[RequestContext] = RequestContext
        #: the event loop async handlers run on (set by the Server)
        self.aloop: Any = None
        self._private_loop: Any = None
        self._tasks: set[Any] = set()
        self._eager: Any = None       # asyncio.Task on 3.12+ (eager start), else False
        #: True while an async opcode's task hands over its finished reply
        self.finishing_task = False
        #: handler names that are coroutine functions (async def)
        self.async_handlers = frozenset(
            name for name in dir(type(ops))
            if not name.startswith("_") and _overrides(ops, name)
            and inspect.iscoroutinefunction(getattr(type(ops), name)))
        for name in sorted(self.async_handlers & _SYNC_ONLY):
            raise TypeError(f"{type(ops).__name__}.{name} must be a plain def, not async def "
                            "(it runs outside any request)")
        self._flush_owner = _takes_lock_owner(ops)
        self._handlers: dict[int, Callable[[Request], Buffers | None]] = {}
        self._implemented: dict[str, bool] = {}
        for code, row in OPS.items():
            self._bind(code, row)
        #: opcode -> what handle() calls, with the ENOSYS-without-calling rule
        #: already applied (filled on first use of each opcode)
        self._resolved: dict[int, Callable[[Request], Buffers | None]] = {}
        #: per thread (worker threads share the dispatcher): the nodeids the
        #: request being handled hands to the kernel, one lookup each
        self._tls = threading.local()
        #: the fused fast paths retire their request themselves (see _attr_reply)
        self._retire = conn.retire
        self._reply = conn.reply
        self._reply_error = conn.reply_error
        self._interrupted = conn.is_interrupted
        #: DRAFT: the stable-handle profile in force (None: none negotiated)
        self.handles: SessionHandles | None = None
        self._install_draft()

    def _bind(self, code: int, row: OpInfo) -> None:
        """Bind ``code`` to the server function its row names (``serve``)."""
        if row.serve is not None:
            self._handlers[code] = getattr(self, row.serve)

    def implemented(self, handler: str) -> bool:
        """Whether the Operations subclass overrides ``handler``."""
        got = self._implemented.get(handler)
        if got is None:
            got = self._implemented[handler] = _overrides(self.ops, handler)
        return got

    # -- entry points -------------------------------------------------------

    def dispatch(self, buf: bytes | bytearray | memoryview) -> tuple[Buffers | None, list[int]]:
        """Handle one message.  Returns (reply buffers or None, nodeids counted).

        The caller writes the buffers; if that write fails because the kernel
        no longer waits (ENOENT), it must call :meth:`rollback` with the list.
        """
        try:
            req = self.conn.receive(buf)
        except RemoteProtocolError as exc:
            if exc.unique is None:
                log.warning("dropping unreadable message: %s", exc)
                return None, []
            log.warning("protocol error in request %#x: %s", exc.unique, exc)
            if not exc.needs_reply:
                return None, []
            return [encode_error(exc.unique, errno_of(exc))], []
        return self.handle(req)

    def handle(self, req: Request) -> tuple[Buffers | None, list[int]]:
        """Handle a parsed request (see :meth:`dispatch`)."""
        if self.observer is not None:
            self.observer(req)
        if self.debug:
            log.debug("%s", format_request(req))
        journal = self.journal
        if journal is not None and req.unique >> 63:
            cached = journal.replayed(req)
            if cached is not None:
                self.conn.forget_inflight(req.unique)
                return cached, []
        lookups: list[int] = []
        self._tls.lookups = lookups
        info = req.info
        try:
            fn = self._resolved.get(req.opcode)
            if fn is None:
                fn = self._resolve(info)
            bufs = fn(req)
        except FUSEError as exc:
            lookups.clear()
            bufs = self._error(req, exc.errno)
        except Pending as p:
            return self._defer(req, p, fn), []
        except Exception as exc:
            lookups.clear()
            bufs = self._failure(req, exc)
        if lookups and bufs is not None:
            self.nodes.add(lookups)
        if journal is not None and bufs is not None and not info.idempotent:
            journal.record(req, bufs, lookups)
        if self.debug:
            log.debug("%s", format_reply(req, bufs, self.conn.session))
        return bufs, lookups

    def _failure(self, req: Request, exc: BaseException) -> Buffers | None:
        """The error reply for an exception other than FUSEError that ended ``req``.

        The errno policy (:mod:`fusewire.errors`, rules 3-4): a
        :class:`LocalProtocolError` answers its ``errno_hint`` (logged); anything
        else is the filesystem's bug: EIO and a log line naming the request
        (its traceback, or the wrong value's type when building the reply
        from the handler's value failed).  Serving continues unless
        ``on_error="raise"``.
        """
        err, bug = failure_errno(exc, (LocalProtocolError,))
        if isinstance(exc, LocalProtocolError):
            log.error("%s: %s", self._which(req), exc)
        elif bug is not None:
            if _raised_here(exc):
                # Building the reply from the handler's value failed: a wrong type
                # (or the handler's signature does not fit the call).
                kind = type(exc)
                what = ("could not be called" if isinstance(exc, TypeError)
                        and "argument" in str(exc) else "returned an unusable value")
                log.error("%s %s (%s: %s); answering EIO", self._which(req), what,
                          kind.__name__ if kind.__module__ == "builtins"
                          else f"{kind.__module__}.{kind.__name__}", exc)
            else:
                log.error("%s raised; answering EIO", self._which(req), exc_info=exc)
            if self.on_error == "raise":
                self.fatal = exc
        return self._error(req, err)

    def _which(self, req: Request) -> str:
        """``OPCODE unique=0x.. nodeid=N handler Class.method``: names a failed request."""
        info = req.info
        handler = (f" handler {type(self.ops).__name__}.{info.handler}"
                   if info.handler is not None else "")
        return f"{info.name} unique={req.unique:#x} nodeid={req.nodeid}{handler}"

    # -- deferred replies ---------------------------------------------------------

    @property
    def deferrable(self) -> bool:
        """Whether a serving loop takes deferred replies (:meth:`attach` was called)."""
        return self._context is DeferrableContext

    def attach(self, submit: Callable[[Pending], None]) -> None:
        """Make this thread's deferred requests complete through ``submit``
        (called from any thread with the finished Pending; it must hand it to
        the thread that read the request, which then calls :meth:`complete`)."""
        self._tls.submit = submit
        self._context = DeferrableContext

    def _defer(self, req: Request, p: Pending,
               fn: Callable[[Request], Buffers | None] | None) -> Buffers | None:
        """A handler raised ``p``: keep the request in flight until it is finished."""
        p.__traceback__ = None          # the handler's frames need not live on
        submit = getattr(self._tls, "submit", None)
        if submit is None:
            # Nothing to complete it later (a replaying or emulating dispatcher):
            # that is the handler's bug, since ctx.can_defer was False.
            log.error("%s %#x deferred its reply where no loop can take it; answering EIO",
                      req.info.name, req.unique)
            return self._error(req, errno.EIO)
        p.slot = (req, fn, self._deferred_extra(req))
        self.pending[req.key] = p
        if self.debug:
            log.debug("%s deferred", format_request(req))
        p.bind(submit)
        if self._interrupted(req.unique):
            p.interrupt()           # the INTERRUPT came first
        return None

    def _deferred_extra(self, req: Request) -> Any:
        """What a subclass keeps with a deferred request (the recorder: its raw bytes)."""
        return None

    def complete(self, p: Pending) -> tuple[Buffers | None, list[int]]:
        """Encode the reply of a finished deferred request (on the thread that read it)."""
        req, fn, _extra = p.slot
        self.pending.pop(req.key, None)
        outcome = p.outcome
        assert outcome is not None
        info = req.info
        if outcome[0] == "bufs":        # an async opcode's task encoded it already
            bufs, lookups = outcome[1], outcome[2]
        else:
            lookups = []
            self._tls.lookups = lookups
            try:
                if not outcome[0]:
                    raise FUSEError(outcome[1])
                bufs = self._pass(fn, _Answer(outcome[1]), req)
            except FUSEError as exc:
                bufs = self._error(req, exc.errno)
            except Exception as exc:
                lookups.clear()
                bufs = self._failure(req, exc)
        if lookups and bufs is not None:
            self.nodes.add(lookups)
        if self.journal is not None and bufs is not None and not info.idempotent:
            self.journal.record(req, bufs, lookups)
        if self.debug:
            log.debug("%s", format_reply(req, bufs, self.conn.session))
        return bufs, lookups

    def _pass(self, fn: Callable[[Request], Buffers | None] | None, ops: Any,
              req: Request) -> Buffers | None:
        """Run ``fn``'s ``_op_*`` function once more with ``ops`` standing in."""
        func = getattr(fn, "__func__", None)
        if func is None:  # a wrapped draft handler: the plain one
            assert req.info.serve is not None
            func = getattr(type(self), req.info.serve)
        result: Buffers | None = func(_Replay(self, ops), req)
        return result

    # -- async handlers -----------------------------------------------------------

    def _is_async(self, info: OpInfo) -> bool:
        names = self.async_handlers
        if info.no_reply:
            # FORGET gives counts back before it calls the handler: never run in
            # passes (an async ``forget`` is started as a background task instead)
            return False
        return info.handler in names or ("flock" in names and info.calls_flock)

    def _launcher(self, fn: Callable[[Request], Buffers | None]
                  ) -> Callable[[Request], Buffers | None]:
        def launch(req: Request) -> Buffers | None:
            return self._go_async(req, fn)
        return launch

    def _go_async(self, req: Request, fn: Callable[[Request], Buffers | None]
                  ) -> Buffers | None:
        """Run an async opcode in a task (raises a Pending), or, without a serving
        loop, to completion on a private loop (returns its reply)."""
        p = Pending(req.unique)
        if isinstance(req.data, memoryview):
            # the loop's read buffer is reused while the handler awaits
            req = req._replace(data=bytes(req.data))
        coro = self._drive(req, fn, p)
        loop = self.aloop
        if loop is None:
            # no serving loop (emulator, replay): run it to completion here
            if self._private_loop is None:
                import asyncio

                self._private_loop = asyncio.new_event_loop()
            outer = self._tls.lookups
            self._private_loop.run_until_complete(coro)
            out = p.outcome
            assert out is not None
            self._tls.lookups = outer
            outer.extend(out[2])
            bufs: Buffers | None = out[1]
            return bufs
        tasks = self._tasks
        eager = self._eager
        if eager is None:
            eager = self._eager = _eager_task() or False
        if eager:
            # Python 3.12+: the task's first step runs now, as a task; a handler
            # that completes without waiting (a cache hit) is answered inline
            outer = self._tls.lookups
            task = eager(coro, loop=loop, eager_start=True)
            if task.done():
                out = p.outcome
                assert out is not None
                self._tls.lookups = outer
                outer.extend(out[2])
                done_bufs: Buffers | None = out[1]
                return done_bufs
            self._tls.lookups = outer
        else:
            task = loop.create_task(coro)
        tasks.add(task)       # _drive forgets it when it ends

        def after_cancel() -> None:
            if task.done() and not p.done:
                # cancelled before its first step: _drive never ran
                tasks.discard(task)
                p.finish(("bufs", self._error(req, errno.EINTR), []))

        def interrupt(_p: Pending) -> None:
            task.cancel()
            loop.call_soon(after_cancel)     # runs after the task's cancelled step

        p.on_interrupt = interrupt
        raise p

    def cancel_tasks(self) -> None:
        """Cancel every async handler still running (the server is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()

    async def _drive(self, req: Request, fn: Callable[[Request], Buffers | None],
                     p: Pending) -> None:
        """Run passes of the ``_op_*`` until one completes, awaiting each async call
        (in a task: handlers see a current task, timeouts and cancellation work)."""
        import asyncio

        done: list[tuple[Any, tuple[Any, ...]]] = []
        lookups: list[int] = []
        try:
            while True:
                lookups = []
                self._tls.lookups = lookups
                try:
                    bufs = self._pass(fn, _Calls(self.ops, self.async_handlers, done), req)
                    break
                except _Suspend as s:
                    try:
                        result = await s.coro
                    except Pending as inner:    # an async handler raised ctx.defer()
                        result = await _await_pending(inner)
                    done.append((result, s.args))
        except FUSEError as exc:
            bufs = self._error(req, exc.errno)
        except asyncio.CancelledError:
            bufs = self._error(req, errno.EINTR)
            lookups = []
        except Exception as exc:
            lookups = []
            bufs = self._failure(req, exc)
        if self.aloop is not None:
            self._tasks.discard(asyncio.current_task())
        self.finishing_task = True      # the loop may write this reply right away
        try:
            p.finish(("bufs", bufs, lookups))
        finally:
            self.finishing_task = False

    @property
    def _lookups(self) -> list[int]:
        """Nodeids the current request's reply counts (this thread's request)."""
        got: list[int] = self._tls.lookups
        return got

    @_lookups.setter
    def _lookups(self, value: list[int]) -> None:
        self._tls.lookups = value

    def _resolve(self, info: OpInfo) -> Callable[[Request], Buffers | None]:
        """The function handling ``info``'s opcode (cached; raises ENOSYS if none)."""
        handler = info.handler
        fn = self._handlers.get(info.opcode)
        if fn is None or (handler is not None and not self.implemented(handler)
                          and info.enosys_cached):
            raise FUSEError(errno.ENOSYS)
        if self.async_handlers and self._is_async(info):
            fn = self._launcher(fn)
        self._resolved[info.opcode] = fn
        return fn

    def rollback(self, lookups: list[int]) -> None:
        """The reply carrying these lookups never reached the kernel: undo them."""
        for n in lookups:
            self.nodes.forget(n, 1)

    # -- helpers -------------------------------------------------------------

    def _error(self, req: Request, err: int) -> Buffers | None:
        """The error reply answering ``req`` with ``err`` (None: the row wants no reply).

        The errno policy (:mod:`fusewire.errors`, rules 1-2 and 6): ``err``
        outside 1..511 (a handler's ``FUSEError(0)``, ``FUSEError(-ENOENT)``...)
        is the handler's bug: logged, answered EIO.
        """
        if req.info.reply is Reply.NONE:
            return None
        if not 0 < err <= MAX_ERRNO:
            log.error("%s: errno %r outside 1..%d; answering EIO", self._which(req), err,
                      MAX_ERRNO)
            err = errno.EIO
        return self._reply_error(req.unique, err)

    def _ok(self, req: Request, *payload: Any) -> Buffers:
        return self._reply(req.unique, *payload)

    def _ctx(self, req: Request, umask: int = 0) -> RequestContext:
        ext = req.ext
        return self._context(req.uid, req.gid, req.pid, umask, req.unique, None,
                             req.unique > _RESEND_MASK, self._interrupted,
                             ext.groups if ext is not None else ())

    def _entry(self, req: Request, attr: EntryAttributes, *, create: bool = False) -> bytes:
        if create and attr.st_ino in (0, FUSE_ROOT_ID):
            raise LocalProtocolError(f"{req.info.name} returned nodeid {attr.st_ino}")
        data = entry_bytes(attr)
        session = self.conn.session
        assert session is not None
        size = session.sizes["entry_out"]
        if size != 128:
            data = data[:size]
        if session.lookup_handle is not None:
            data += self._handle_suffix(req.opcode, attr)
        if attr.st_ino:
            self._tls.lookups.append(attr.st_ino)
        return data

    def _handle_suffix(self, opcode: int, attr: EntryAttributes) -> bytes:
        """DRAFT: the ``fuse_file_handle`` element that follows an entry_out, if any."""
        if self.handles is None:
            self._install_draft()
        assert self.handles is not None
        if opcode not in self.handles.profile.handle_replies:
            return b""
        return self.handles.element_for(attr.st_ino)

    def _attr_reply(self, req: Request, a: EntryAttributes) -> Buffers:
        session = self.conn.session
        assert session is not None
        size = session.sizes["attr_out"]
        if size != 104:
            return self._ok(req, attr_out_bytes(a)[:size])
        # The hot path (GETATTR at 7.9+): header and attr_out in one pack.
        unique = req.unique
        self._retire(unique)
        t = a.attr_timeout
        if t > 0:
            whole = int(t)
            return [_HDR_ATTR_OUT.pack(_HDR_ATTR_OUT_SIZE, 0, unique, whole,
                                       int((t - whole) * _NS), 0, *attr_fields(a))]
        return [_HDR_ATTR_OUT.pack(_HDR_ATTR_OUT_SIZE, 0, unique, 0, 0, 0, *attr_fields(a))]

    # -- INIT and library-handled opcodes -----------------------------------------

    def _op_init(self, req: Request) -> Buffers:
        bufs = self.conn.initialize(req)
        if self.conn.session is not None and not self.initialized:
            self.initialized = True
            self._install_draft()
            try:
                self.ops.init()
            except Exception as exc:
                # INIT is answered with an error, which leaves the connection
                # unusable: stop serving (the server raises from ``fatal``)
                self.init_error = self.fatal = exc
                raise
        return bufs

    def _op_destroy(self, req: Request) -> Buffers:
        self.ops.destroy()
        return self._ok(req)

    def _op_interrupt(self, req: Request) -> Buffers | None:
        # The connection already marked the target (or keeps the mark until the
        # target arrives); a deferred target is told now.  A reply is optional.
        self.conn.forget_inflight(req.unique)
        p = self.pending.get(req.arg.unique & _RESEND_MASK)
        if p is not None:
            p.interrupt()
        return None

    def _op_notify_reply(self, req: Request) -> None:
        callback = getattr(self.ops.notifier, "retrieve_reply", None)
        if callback is not None:
            callback(req.unique, req.nodeid, req.arg.offset, bytes(req.data))

    # -- names and attributes -------------------------------------------------------

    def _op_lookup(self, req: Request) -> Buffers:
        a = self.ops.lookup(req.nodeid, req.names[0], self._ctx(req))
        session = self.conn.session
        assert session is not None
        if session.sizes["entry_out"] != 128 or session.lookup_handle is not None:
            return self._ok(req, self._entry(req, a))
        # The hot path: header and a full-size entry_out in one pack.
        if a.st_ino:
            self._tls.lookups.append(a.st_ino)
        unique = req.unique
        self._retire(unique)
        ev, evn = _ts(a.entry_timeout)
        av, avn = _ts(a.attr_timeout)
        return [_HDR_ENTRY.pack(_HDR_ENTRY_SIZE, 0, unique, a.st_ino, a.generation, ev, av,
                                evn, avn, *attr_fields(a))]

    def _op_forget(self, req: Request) -> None:
        if req.opcode == Opcode.BATCH_FORGET:
            pairs = req.data
        else:
            pairs = ((req.nodeid, req.arg.nlookup),)
        given = []
        for nodeid, nlookup in pairs:
            taken = self.nodes.forget(nodeid, nlookup)
            if taken:
                given.append((nodeid, taken))
        if given:
            try:
                forget: Callable[..., Any] = self.ops.forget
                result = forget(given)
                if "forget" in self.async_handlers:
                    self._background(result)
            except Exception:
                log.exception("forget raised")
        return None

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine nobody waits for (an async ``forget``); log what it raises."""
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("forget raised")

        loop = self.aloop
        if loop is None:
            if self._private_loop is None:
                import asyncio

                self._private_loop = asyncio.new_event_loop()
            self._private_loop.run_until_complete(run())
            return
        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    _op_batch_forget = _op_forget

    def _op_getattr(self, req: Request) -> Buffers:
        return self._attr_reply(req, self.ops.getattr(req.nodeid, self._ctx(req)))

    def _op_setattr(self, req: Request) -> Buffers:
        a = req.arg
        valid = a.valid
        now = time.time_ns()
        attr = EntryAttributes(req.nodeid, st_mode=a.mode, st_uid=a.uid, st_gid=a.gid,
                               st_size=a.size)
        fields = SetattrFields(
            update_atime=bool(valid & _ATIME_ANY),
            update_mtime=bool(valid & _MTIME_ANY),
            update_ctime=bool(valid & _F_CTIME),
            update_mode=bool(valid & _F_MODE), update_uid=bool(valid & _F_UID),
            update_gid=bool(valid & _F_GID), update_size=bool(valid & _F_SIZE),
            atime_now=bool(valid & _ATIME_NOW), mtime_now=bool(valid & _MTIME_NOW),
            kill_suidgid=bool(valid & _F_KILL_SUIDGID),
        )
        attr.st_atime_ns = now if fields.atime_now else a.atime * _NS + a.atimensec
        attr.st_mtime_ns = now if fields.mtime_now else a.mtime * _NS + a.mtimensec
        attr.st_ctime_ns = a.ctime * _NS + a.ctimensec if fields.update_ctime else now
        fh = a.fh if valid & _F_FH else None
        new = self.ops.setattr(req.nodeid, attr, fields, fh, self._ctx(req))
        return self._attr_reply(req, new)

    def _op_readlink(self, req: Request) -> Buffers:
        return self._ok(req, _data(self.ops.readlink(req.nodeid, self._ctx(req)), "readlink"))

    def _op_statx(self, req: Request) -> Buffers:
        a = req.arg
        fh = a.fh if a.getattr_flags & GETATTR.FH else None
        st = self.ops.statx(req.nodeid, fh, a.sx_flags, a.sx_mask, self._ctx(req))
        return self._ok(req, statx_bytes(st))

    # -- creating and removing names -------------------------------------------------

    def _op_mknod(self, req: Request) -> Buffers:
        a = req.arg
        attr = self.ops.mknod(req.nodeid, req.names[0], a.mode, a.rdev,
                              self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_mkdir(self, req: Request) -> Buffers:
        a = req.arg
        attr = self.ops.mkdir(req.nodeid, req.names[0], a.mode, self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_symlink(self, req: Request) -> Buffers:
        name, target = req.names
        attr = self.ops.symlink(req.nodeid, name, target, self._ctx(req))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_unlink(self, req: Request) -> Buffers:
        self.ops.unlink(req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req)

    def _op_rmdir(self, req: Request) -> Buffers:
        self.ops.rmdir(req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req)

    def _op_rename(self, req: Request) -> Buffers:
        flags = req.arg.flags if req.opcode == Opcode.RENAME2 else 0
        self.ops.rename(req.nodeid, req.names[0], req.arg.newdir, req.names[1], flags,
                        self._ctx(req))
        return self._ok(req)

    _op_rename2 = _op_rename

    def _op_link(self, req: Request) -> Buffers:
        attr = self.ops.link(req.arg.oldnodeid, req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_create(self, req: Request) -> Buffers:
        a = req.arg
        fi, attr = self.ops.create(req.nodeid, req.names[0], a.mode, a.flags,
                                   self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True), open_out_bytes(fi))

    def _op_tmpfile(self, req: Request) -> Buffers:
        a = req.arg
        fi, attr = self.ops.tmpfile(req.nodeid, a.mode, a.flags, self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True), open_out_bytes(fi))

    # -- files -------------------------------------------------------------------------

    def _op_open(self, req: Request) -> Buffers:
        fi = self.ops.open(req.nodeid, req.arg.flags, self._ctx(req))
        return self._ok(req, open_out_bytes(fi))

    def _op_read(self, req: Request) -> Buffers:
        a = req.arg
        data = self.ops.read(a.fh, a.offset, a.size)
        kind = type(data)
        if kind is not bytes and kind is not bytearray:
            data = _data(data, "read")
        if len(data) > a.size:
            raise LocalProtocolError(f"read returned {len(data)} bytes for size {a.size}")
        return self._ok(req, data)

    def _op_write(self, req: Request) -> Buffers:
        a = req.arg
        if a.write_flags & _WRITE_KILL_SUIDGID:
            self.ops.write_kill_suidgid(a.fh, self._ctx(req))
        n = self.ops.write(a.fh, a.offset, req.data)
        if n > len(req.data):
            raise LocalProtocolError(f"write returned {n} for {len(req.data)} bytes")
        return self._ok(req, _WRITE_OUT.pack(n, 0))

    def _op_flush(self, req: Request) -> Buffers:
        a = req.arg
        if self._flush_owner:
            self.ops.flush(a.fh, a.lock_owner)
        else:
            self.ops.flush(a.fh)
        return self._ok(req)

    def _op_release(self, req: Request) -> Buffers:
        a = req.arg
        if a.release_flags & _FLOCK_UNLOCK and self.implemented("flock"):
            try:
                self.ops.flock(a.fh, a.lock_owner, fcntl.LOCK_UN, False, self._ctx(req))
            except FUSEError:
                pass
        self.ops.release(a.fh)
        return self._ok(req)

    def _op_fsync(self, req: Request) -> Buffers:
        self.ops.fsync(req.arg.fh, bool(req.arg.fsync_flags & _FDATASYNC))
        return self._ok(req)

    def _op_fallocate(self, req: Request) -> Buffers:
        a = req.arg
        self.ops.fallocate(a.fh, a.mode, a.offset, a.length, self._ctx(req))
        return self._ok(req)

    def _op_lseek(self, req: Request) -> Buffers:
        a = req.arg
        # loff_t travels as u64: a negative offset from the caller arrives >= 2**63
        offset = a.offset - (1 << 64) if a.offset >> 63 else a.offset
        off = self.ops.lseek(a.fh, offset, a.whence, self._ctx(req))
        return self._ok(req, _LSEEK_OUT.pack(off))

    def _op_copy_file_range(self, req: Request) -> Buffers:
        a = req.arg
        n = self.ops.copy_file_range(a.fh_in, a.off_in, a.nodeid_out, a.fh_out, a.off_out,
                                     a.len, a.flags, self._ctx(req))
        if n > a.len:
            raise LocalProtocolError(f"copy_file_range returned {n} for len {a.len}")
        if req.opcode == Opcode.COPY_FILE_RANGE:
            return self._ok(req, _WRITE_OUT.pack(min(n, 0xFFFFFFFF), 0))
        return self._ok(req, _COPY_OUT_64.pack(n))

    _op_copy_file_range_64 = _op_copy_file_range

    def _op_ioctl(self, req: Request) -> Buffers:
        a = req.arg
        result, out = self.ops.ioctl(a.fh, a.cmd, a.arg, bytes(req.data), a.out_size, a.flags,
                                     self._ctx(req))
        data = _data(out, "ioctl")
        if len(data) > a.out_size:
            raise LocalProtocolError(f"ioctl returned {len(data)} bytes > out_size {a.out_size}")
        return self._ok(req, _IOCTL_OUT.pack(result, 0, 0, 0), data)

    def _op_poll(self, req: Request) -> Buffers:
        a = req.arg
        revents = self.ops.poll(a.fh, a.kh, a.events, a.flags, self._ctx(req))
        return self._ok(req, _POLL_OUT.pack(revents, 0))

    def _op_bmap(self, req: Request) -> Buffers:
        a = req.arg
        block = self.ops.bmap(req.nodeid, a.blocksize, a.block, self._ctx(req))
        return self._ok(req, _BMAP_OUT.pack(block))

    # -- locks ---------------------------------------------------------------------------

    def _op_getlk(self, req: Request) -> Buffers:
        a = req.arg
        lk = a.lk
        got = self.ops.getlk(a.fh, a.owner, Lock(lk.start, lk.end, lk.type, lk.pid),
                             self._ctx(req))
        return self._ok(req, _LK_OUT.pack(got.start, got.end, got.type, got.pid))

    def _op_setlk(self, req: Request) -> Buffers:
        a = req.arg
        lk = a.lk
        sleep = req.opcode == Opcode.SETLKW
        if a.lk_flags & LK.FLOCK:
            op = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX}.get(
                lk.type, fcntl.LOCK_UN)
            self.ops.flock(a.fh, a.owner, op, sleep, self._ctx(req))
        else:
            self.ops.setlk(a.fh, a.owner, Lock(lk.start, lk.end, lk.type, lk.pid), sleep,
                           self._ctx(req))
        return self._ok(req)

    _op_setlkw = _op_setlk

    # -- directories ---------------------------------------------------------------------

    def _op_opendir(self, req: Request) -> Buffers:
        fh = self.ops.opendir(req.nodeid, self._ctx(req))
        return self._ok(req, _OPEN_OUT.pack(fh, 0, 0))

    def _op_readdir(self, req: Request) -> Buffers:
        a = req.arg
        plus = req.opcode == _READDIRPLUS
        token = ReaddirToken(a.size, plus, entry_bytes if plus else None)
        self.ops.readdir(a.fh, a.offset, token)
        self._lookups.extend(token.counted)
        return self._ok(req, token.buf)

    _op_readdirplus = _op_readdir

    def _op_releasedir(self, req: Request) -> Buffers:
        self.ops.releasedir(req.arg.fh)
        return self._ok(req)

    def _op_fsyncdir(self, req: Request) -> Buffers:
        self.ops.fsyncdir(req.arg.fh, bool(req.arg.fsync_flags & _FDATASYNC))
        return self._ok(req)

    # -- filesystem-wide -------------------------------------------------------------------

    def _op_statfs(self, req: Request) -> Buffers:
        s = self.ops.statfs(self._ctx(req))
        body = _STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                s.f_bsize, s.f_namemax, s.f_frsize, 0, 0, 0, 0, 0, 0, 0)
        session = self.conn.session
        assert session is not None
        return self._ok(req, body[:session.sizes["statfs_out"]])

    def _op_syncfs(self, req: Request) -> Buffers:
        self.ops.syncfs(self._ctx(req))
        return self._ok(req)

    def _op_access(self, req: Request) -> Buffers:
        if not self.ops.access(req.nodeid, req.arg.mask, self._ctx(req)):
            raise FUSEError(errno.EACCES)
        return self._ok(req)

    # -- xattrs ------------------------------------------------------------------------------

    def _op_setxattr(self, req: Request) -> Buffers:
        self.ops.setxattr(req.nodeid, req.names[0], bytes(req.data), req.arg.flags,
                          self._ctx(req))
        return self._ok(req)

    def _xattr_reply(self, req: Request, value: bytes | bytearray | memoryview) -> Buffers:
        size = req.arg.size
        if size == 0:
            return self._ok(req, _GETXATTR_OUT.pack(len(value), 0))
        if len(value) > size:
            raise FUSEError(errno.ERANGE)
        return self._ok(req, value)

    def _op_getxattr(self, req: Request) -> Buffers:
        return self._xattr_reply(req, _data(self.ops.getxattr(req.nodeid, req.names[0],
                                                              self._ctx(req)), "getxattr"))

    def _op_listxattr(self, req: Request) -> Buffers:
        names = self.ops.listxattr(req.nodeid, self._ctx(req))
        return self._xattr_reply(req, b"".join(n + b"\0" for n in names))

    def _op_removexattr(self, req: Request) -> Buffers:
        self.ops.removexattr(req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req)
