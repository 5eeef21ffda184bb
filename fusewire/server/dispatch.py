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

The dispatcher is three modules, one job each: this one (receiving,
resolving an opcode to its server function, the error policy, the node
table), :mod:`fusewire.server.serve_ops` (the server function of every
upstream opcode: Operations call in, reply bytes out) and
:mod:`fusewire.server.deferred` (deferred replies and async handlers); the
draft stable-handle profiles' functions are in :mod:`fusewire.server.draft_serve`.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable
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
from fusewire.opcodes.flags import InitFlag
from fusewire.opcodes.table import OPS, OpInfo, Reply
from fusewire.operations import Operations
from fusewire.server.deferred import DeferredServing
from fusewire.server.draft_serve import Buffers, DraftServing
from fusewire.server.fastpath import FastPath, build_fast_paths
from fusewire.server.replies import attr_out_bytes, entry_bytes, open_out_bytes
from fusewire.server.serve_ops import OpServing
from fusewire.server.serve_ops import _data as _data
from fusewire.server.trace import format_reply, format_request
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError, Pending, RequestContext
from fusewire.types import timeout_parts as _ts

__all__ = ["Buffers", "Dispatcher", "Journal", "NodeTable", "attr_out_bytes", "entry_bytes",
           "open_out_bytes", "wanted_flags"]

log = logging.getLogger(__name__)

_OUT_HDR = CODECS["out_header"].struct
_RESEND_MASK = (1 << 63) - 1

#: source files whose frames build replies from a handler's value (see _raised_here)
_ENCODER_FILES = frozenset({_ts.__code__.co_filename, os.path.abspath(__file__), __file__,
                            entry_bytes.__code__.co_filename,
                            DraftServing._install_draft.__code__.co_filename,
                            OpServing._op_getattr.__code__.co_filename,
                            DeferredServing.complete.__code__.co_filename,
                            build_fast_paths.__code__.co_filename})


class Journal(Protocol):
    """What recovery plugs into the dispatcher (see :mod:`fusewire.recovery`)."""

    def replayed(self, req: Request[Any, Any]) -> Buffers | None:
        """For a resent request already executed: the recorded reply, else None."""
        ...

    def record(self, req: Request[Any, Any], bufs: Buffers, lookups: list[int]) -> None:
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


#: Dispatcher attributes whose assignment makes it decide its fast paths again
_FAST_SWITCHES = frozenset({"observer", "journal", "debug", "handle", "nodes", "ops", "conn"})

#: what :meth:`Dispatcher.journaled_fast_paths` returns
JournaledFastPaths = tuple[Collection[int], Callable[[int], None],
                           Callable[[Any, Buffers, list[int]], None] | None, Collection[int]]

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


class Dispatcher(OpServing, DeferredServing, DraftServing):
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
        self.observer: Callable[[Request[Any, Any]], None] | None = None
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
        self._handlers: dict[int, Callable[[Request[Any, Any]], Buffers | None]] = {}
        self._implemented: dict[str, bool] = {}
        for code, row in OPS.items():
            self._bind(code, row)
        #: opcode -> a fused fast path (fusewire.server.fastpath); None: not built yet
        self._fast: dict[int, FastPath] | None = None
        #: opcode -> what handle() calls, with the ENOSYS-without-calling rule
        #: already applied (filled on first use of each opcode)
        self._resolved: dict[int, Callable[[Request[Any, Any]], Buffers | None]] = {}
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
        fast = self._fast
        if fast is None:
            fast = self._fast = self._fast_paths()
        n = len(buf)
        if fast and n > 40:
            f = fast.get(buf[4])
            if f is not None:
                done = f(buf, n)
                if done is not None:
                    return done
        return self.dispatch_parsed(buf)

    def dispatch_parsed(self, buf: bytes | bytearray | memoryview
                        ) -> tuple[Buffers | None, list[int]]:
        """:meth:`dispatch` without the fused fast paths: parse, then :meth:`handle`."""
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

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _FAST_SWITCHES:
            object.__setattr__(self, "_fast", None)     # decided again on the next message

    def _fast_paths(self) -> dict[int, FastPath] | None:
        """The fused fast paths that apply now (None before INIT: asked again)."""
        if self.conn.session is None:
            return None
        if self.observer is not None or self.debug or "handle" in self.__dict__:
            # every message must reach the observer, the trace or a replaced handle()
            return {}
        if self.journal is not None or type(self.nodes) is not NodeTable:
            # a journal (and its NodeTable subclass) sees every message, except
            # where the journaling dispatcher says which fast paths stay exact
            safe = self.journaled_fast_paths()
            if safe is None:
                return {}
            only, first_lookup, record, recorded = safe
            return build_fast_paths(self, Dispatcher, _data, only=only,
                                    first_lookup=first_lookup, record=record,
                                    recorded=recorded)
        return build_fast_paths(self, Dispatcher, _data)

    def journaled_fast_paths(self) -> JournaledFastPaths | None:
        """For a dispatcher with a journal: ``(opcodes, first_lookup, record,
        recorded)``: the opcodes whose fused fast paths stay exact; what to call
        for a nodeid entering the node table on a LOOKUP (it must reach the
        journal before the reply); and, for the ``recorded`` ones among them,
        ``record(message, reply, nodeids)`` that journals an answered request
        (see :func:`fusewire.server.fastpath.build_fast_paths`).  None (the
        default): no fast path while journaling."""
        return None

    def handle(self, req: Request[Any, Any]) -> tuple[Buffers | None, list[int]]:
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

    def _failure(self, req: Request[Any, Any], exc: BaseException) -> Buffers | None:
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

    def _settle(self, req: Request[Any, Any], exc: Exception) -> Buffers | None:
        """The reply to ``req`` whose handler raised ``exc`` on a fast path
        (:mod:`fusewire.server.fastpath`), as :meth:`handle` would give it: an
        error reply, or None for a deferral (a :class:`Pending`)."""
        if isinstance(exc, FUSEError):
            return self._error(req, exc.errno)
        if isinstance(exc, Pending):
            fn = self._resolved.get(req.opcode) or self._resolve(req.info)
            return self._defer(req, exc, fn)
        return self._failure(req, exc)

    def _which(self, req: Request[Any, Any]) -> str:
        """``OPCODE unique=0x.. nodeid=N handler Class.method``: names a failed request."""
        info = req.info
        handler = (f" handler {type(self.ops).__name__}.{info.handler}"
                   if info.handler is not None else "")
        return f"{info.name} unique={req.unique:#x} nodeid={req.nodeid}{handler}"

    @property
    def _lookups(self) -> list[int]:
        """Nodeids the current request's reply counts (this thread's request)."""
        got: list[int] = self._tls.lookups
        return got

    @_lookups.setter
    def _lookups(self, value: list[int]) -> None:
        self._tls.lookups = value

    def _resolve(self, info: OpInfo) -> Callable[[Request[Any, Any]], Buffers | None]:
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

    def _error(self, req: Request[Any, Any], err: int) -> Buffers | None:
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

    def _ok(self, req: Request[Any, Any], *payload: Any) -> Buffers:
        return self._reply(req.unique, *payload)

    def _ctx(self, req: Request[Any, Any], umask: int = 0) -> RequestContext:
        ext = req.ext
        return self._context(req.uid, req.gid, req.pid, umask, req.unique, None,
                             req.unique > _RESEND_MASK, self._interrupted,
                             ext.groups if ext is not None else ())
