"""Deferred replies and async handlers: the part of the dispatcher that answers later.

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
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fusewire.connection import Connection, Request
from fusewire.opcodes.table import OpInfo
from fusewire.operations import Operations
from fusewire.server.draft_serve import Buffers
from fusewire.server.trace import format_reply, format_request
from fusewire.types import DeferrableContext, FUSEError, Pending, RequestContext

__all__ = ["DeferredServing"]

log = logging.getLogger("fusewire.server.dispatch")


def _eager_task() -> Any:
    """asyncio.Task where it can start eagerly (Python 3.12+), else None."""
    if sys.version_info < (3, 12):
        return None
    import asyncio

    return asyncio.Task


class _Replay:
    """Stands in for the dispatcher while an ``_op_*`` function runs again: every
    attribute is the dispatcher's, except ``ops``."""

    __slots__ = ("_d", "ops")

    def __init__(self, d: DeferredServing, ops: Any) -> None:
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


class DeferredServing:
    """The :class:`~fusewire.server.dispatch.Dispatcher`'s deferred and async half (a mixin).

    A handler that raised a Pending is kept in ``pending`` and completed by
    :meth:`complete` on the thread that read it; an ``async def`` handler's
    opcode runs in passes inside a task (:meth:`_go_async`, :meth:`_drive`).
    """

    if TYPE_CHECKING:
        ops: Operations
        conn: Connection
        journal: Any
        nodes: Any
        debug: bool
        pending: dict[int, Pending]
        _context: type[RequestContext]
        aloop: Any
        _private_loop: Any
        _tasks: set[Any]
        _eager: Any
        finishing_task: bool
        async_handlers: frozenset[str]
        _tls: Any
        _interrupted: Callable[[int], bool]

        def _error(self, req: Request[Any, Any], err: int) -> Buffers | None: ...
        def _failure(self, req: Request[Any, Any], exc: BaseException) -> Buffers | None: ...

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

    def _defer(self, req: Request[Any, Any], p: Pending,
               fn: Callable[[Request[Any, Any]], Buffers | None] | None) -> Buffers | None:
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

    def _deferred_extra(self, req: Request[Any, Any]) -> Any:
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

    def _pass(self, fn: Callable[[Request[Any, Any]], Buffers | None] | None, ops: Any,
              req: Request[Any, Any]) -> Buffers | None:
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

    def _launcher(self, fn: Callable[[Request[Any, Any]], Buffers | None]
                  ) -> Callable[[Request[Any, Any]], Buffers | None]:
        def launch(req: Request[Any, Any]) -> Buffers | None:
            return self._go_async(req, fn)
        return launch

    def _finished_inline(self, p: Pending, outer: list[int]) -> Buffers | None:
        """The reply of an async request whose task already ran to the end here:
        its lookups join those of the request being handled (``outer``)."""
        out = p.outcome
        assert out is not None
        self._tls.lookups = outer
        outer.extend(out[2])
        bufs: Buffers | None = out[1]
        return bufs

    def _go_async(self, req: Request[Any, Any], fn: Callable[[Request[Any, Any]], Buffers | None]
                  ) -> Buffers | None:
        """Run an async opcode in a task (raises a Pending), or, without a serving
        loop, to completion on a private loop (returns its reply)."""
        p = Pending(req.unique)
        if isinstance(req.data, memoryview):
            # the loop's read buffer is reused while the handler awaits
            req = req._replace(data=memoryview(bytes(req.data)))
        coro = self._drive(req, fn, p)
        loop = self.aloop
        if loop is None:
            # no serving loop (emulator, replay): run it to completion here
            if self._private_loop is None:
                import asyncio

                self._private_loop = asyncio.new_event_loop()
            outer = self._tls.lookups
            self._private_loop.run_until_complete(coro)
            return self._finished_inline(p, outer)
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
                return self._finished_inline(p, outer)
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

    async def _drive(self, req: Request[Any, Any],
                     fn: Callable[[Request[Any, Any]], Buffers | None], p: Pending) -> None:
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

