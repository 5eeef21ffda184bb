"""The server: a loop that only reads, hands off, and writes.

Theory of operation
-------------------
Each ``read(2)`` on ``/dev/fuse`` returns exactly one request and each
``write(2)`` carries exactly one reply (protocol.md §1), so there is nothing
to reassemble: a thread reads into one preallocated buffer of at least
``max_write + 80`` bytes (the kernel refuses smaller ones with EINVAL),
hands the bytes to the :class:`~fusewire.server.dispatch.Dispatcher`, and
writes the reply with one ``writev``.  On this 2-vCPU VM a synchronous stat
is a ping-pong between client and server and a wake-up on the other vCPU
costs 6-10x (perf.md), so the default is one thread that answers inline.

The fd is non-blocking; a read that would block parks the thread in a
``epoll`` wait on the fd and a wake-up pipe, so another thread (or a
signal handler, through the pipe) can stop the loop.  Kernel errno rules:
``EINTR``/``EAGAIN`` on read mean try again; ``ENODEV`` means the
filesystem was unmounted (clean stop); ``ECONNABORTED`` means the
connection was aborted.  A reply write failing with ``ENOENT`` means the
kernel no longer waits for that request (interrupted or aborted): the
lookups it carried are rolled back.

Optional worker threads each get their own fd cloned with
``FUSE_DEV_IOC_CLONE``; a reply must go back through the fd that read its
request, which the per-thread loop guarantees.

Deferred replies (a handler raised ``ctx.defer()``, or an async handler is
awaiting): each serving thread has a :class:`_Completions` queue with its
own wake-up pipe.  Whoever finishes a deferred request, from any thread,
appends it there and writes a byte to the pipe; the thread that read the
request encodes the reply (:meth:`Dispatcher.complete`) and writes it to
its fd.  The queue is looked at after each request and whenever the pipe
wakes the thread, so a completion never waits behind a busy stream.

If any handler is ``async def``, :meth:`Server.serve` runs
:meth:`Server.serve_async` under ``asyncio.run``: the fd is registered with
``add_reader``, each wake-up drains up to 64 requests (sync handlers answer
inline, async ones become tasks) and the completion pipe is a second
reader.  ``await server.serve_async()`` serves inside an application's own
loop.  Without async handlers nothing here imports asyncio.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import select
import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from fusewire.connection import Config, Connection, Request, encode_error
from fusewire.opcodes.flags import InitFlag, NotifyCode
from fusewire.operations import Operations
from fusewire.server import mount as _mount
from fusewire.server.dispatch import Buffers, Dispatcher, NodeTable, wanted_flags
from fusewire.structs.codec import CODECS
from fusewire.types import Pending
from fusewire.wire import reply_header

__all__ = ["Server"]

log = logging.getLogger(__name__)

_FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
_FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502
_libc = ctypes.CDLL(None, use_errno=True)
_IN_HDR = CODECS["in_header"].struct
#: requests one wake-up of the async reader handles before it lets tasks run
ASYNC_BATCH = 64


class _Completions:
    """Finished deferred requests of one serving thread, and the pipe that wakes it."""

    __slots__ = ("queue", "wake_r", "wake_w")

    def __init__(self, wake_r: int, wake_w: int) -> None:
        self.queue: deque[Pending] = deque()
        self.wake_r = wake_r
        self.wake_w = wake_w

    def submit(self, p: Pending) -> None:
        """Queue ``p`` for its serving thread (any thread; signal-safe enough)."""
        self.queue.append(p)
        try:
            os.write(self.wake_w, b"c")
        except OSError:
            pass  # full: a wake-up is pending anyway; closed: not serving

    def drain_pipe(self) -> None:
        """Swallow the wake-up bytes (the pipe is non-blocking)."""
        try:
            while len(os.read(self.wake_r, 4096)) == 4096:
                pass
        except OSError:
            pass


def _header_of(req: Request) -> memoryview:
    """A fuse_in_header for ``req`` (what ``on_reply`` hooks read of a deferred one)."""
    return memoryview(_IN_HDR.pack(40, req.opcode, req.unique, req.nodeid, req.uid, req.gid,
                                   req.pid, 0, 0))


class Server:
    """Serve an :class:`~fusewire.Operations` instance on a mount.

    ``options`` are libfuse-style ``-o`` options (see :mod:`fusewire.server.mount`).
    ``workers`` > 0 starts that many extra threads, each on a cloned fd.
    ``processes`` > 1 serves from that many processes (a multiprocess_safe
    filesystem only; see :mod:`fusewire.server.processes`).
    ``fd`` and ``connection`` let a successor serve an already-mounted,
    already-initialised connection (recovery).  ``capture`` receives every
    message crossing the fd (see :mod:`fusewire.testing.capture`).
    """

    def __init__(self, ops: Operations, mountpoint: str, options: str | Sequence[str] | None = None,
                 *, debug: bool = False, workers: int = 0, config: Config | None = None,
                 on_error: str = "log", fd: int | None = None,
                 connection: Connection | None = None, nodes: NodeTable | None = None,
                 capture: Any = None, fsname: str = "fusewire",
                 subtype: str | None = None, processes: int = 1) -> None:
        if processes != 1:
            from fusewire.server.processes import check_processes

            check_processes(ops, processes, capture=capture, workers=workers)
        self.ops = ops
        self.mountpoint = os.path.abspath(mountpoint)
        self.options = _mount.parse_options(options, fsname=fsname, subtype=subtype)
        base = config or Config()
        want = wanted_flags(ops, base.want)
        changes: dict[str, Any] = {"want": want}
        if want & InitFlag.PASSTHROUGH and not base.max_stack_depth:
            changes["max_stack_depth"] = 1  # backing files on a non-stacked filesystem
        self.config = Config(**{**base.__dict__, **changes})
        self.conn = connection or Connection(self.config)
        self.dispatcher = Dispatcher(ops, self.conn, debug=debug, on_error=on_error,
                                     nodes=nodes)
        self.workers = workers
        self.processes = processes   # > 1: see fusewire.server.processes
        self.fd = fd
        self._owns_mount = fd is None
        self.capture = capture
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: wakes serve_async's loop through its own self-pipe: close() may close
        #: our pipes before the loop reads the wake-up byte
        self._stop_hook: Callable[[], None] | None = None
        #: one completion queue (and wake-up pipe) per serving thread; [0] is the main one
        self._completions = [_Completions(self._wake_r, self._wake_w)]
        self._threads: list[threading.Thread] = []
        self._extra_fds: list[int] = []
        self._retrieve_ids = itertools.count(1)
        self._retrieved: dict[int, tuple[threading.Event, list[bytes]]] = {}
        self.ready = threading.Event()
        self.unmounted = False
        #: hooks for recovery and tests: called with the message after it is read,
        #: and after its reply was written (None: no call on the hot path)
        self.on_read: Callable[[memoryview], None] | None = None
        self.on_reply: Callable[[memoryview], None] | None = None
        ops.notifier = self

    # -- lifecycle ---------------------------------------------------------------

    def mount(self) -> int:
        """Mount (unless an fd was given) and return the /dev/fuse fd."""
        if self.fd is None:
            self.fd = _mount.mount(self.mountpoint, self.options,
                                   checks_permissions=self.ops.checks_permissions)
        os.set_blocking(self.fd, False)
        if self.conn.session is not None:
            self.ready.set()
        return self.fd

    def serve(self, *, install_signals: bool = True) -> None:
        """Serve until unmount, :meth:`stop`, SIGINT or SIGTERM.

        With ``async def`` handlers this runs :meth:`serve_async` on a new
        asyncio event loop; with ``processes > 1`` it forks the other
        serving processes first (:mod:`fusewire.server.processes`);
        otherwise the plain loop below, without asyncio.
        """
        if self.processes > 1:
            from fusewire.server.processes import serve_processes

            n, self.processes = self.processes, 1   # this process serves as one of them
            serve_processes(self, n, install_signals=install_signals)
            return
        if self.dispatcher.async_handlers:
            import asyncio

            asyncio.run(self.serve_async(install_signals=install_signals))
            return
        if self.fd is None:
            self.mount()
        assert self.fd is not None
        old = self._install_signals(install_signals)
        try:
            for i in range(self.workers):
                wfd = _mount.clone_fd(self.fd)
                os.set_blocking(wfd, False)
                self._extra_fds.append(wfd)
                comp = _Completions(*os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
                self._completions.append(comp)
                t = threading.Thread(target=self._loop, args=(wfd, comp),
                                     name=f"fusewire-{i}", daemon=True)
                t.start()
                self._threads.append(t)
            self._loop(self.fd, self._completions[0])
        finally:
            self._finish_serving(old)

    async def serve_async(self, *, install_signals: bool = True) -> None:
        """Serve on the running asyncio loop until unmount, :meth:`stop` or a signal.

        Sync handlers answer inline in the loop's thread; ``async def``
        handlers run as tasks, so one that awaits never holds up the others.
        ``workers`` is ignored here (a warning says so).
        """
        import asyncio

        loop = asyncio.get_running_loop()
        if self.fd is None:
            self.mount()
        fd = self.fd
        assert fd is not None
        if self.workers:
            log.warning("workers=%d ignored: async handlers share the event loop",
                        self.workers)
        comp = self._completions[0]
        dispatcher = self.dispatcher
        dispatcher.aloop = loop
        loop_thread = threading.get_ident()
        scheduled = False

        def submit(p: Pending) -> None:
            # Finished on the loop's own thread: no pipe.  A task's own reply is
            # written at once; one finished inside another request's handler (a
            # lock granted by an unlock) waits until that handler's reply is out.
            nonlocal scheduled
            if threading.get_ident() != loop_thread:
                comp.submit(p)
                return
            comp.queue.append(p)
            if dispatcher.finishing_task:
                if self._complete_all(fd, comp):
                    end()
            elif not scheduled:
                scheduled = True
                loop.call_soon(flush)

        def flush() -> None:
            nonlocal scheduled
            scheduled = False
            if comp.queue and self._complete_all(fd, comp):
                end()

        dispatcher.attach(submit)
        old = self._install_signals(install_signals)
        finished = loop.create_future()
        bufsize = max(8192, self.config.max_write + 4096)
        buf = bytearray(bufsize)
        view = memoryview(buf)

        def end(exc: BaseException | None = None) -> None:
            self._stop.set()
            if not finished.done():
                if exc is None:
                    finished.set_result(None)
                else:
                    finished.set_exception(exc)

        def readable() -> None:
            for _ in range(ASYNC_BATCH):
                if self._stop.is_set():
                    break
                try:
                    n = os.readv(fd, [buf])
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    if exc.errno == errno.ENODEV:
                        log.info("filesystem unmounted")
                        self.unmounted = True
                    elif exc.errno == errno.ECONNABORTED:
                        log.warning("connection aborted")
                    else:
                        end(exc)
                        return
                    end()
                    return
                if self._one(fd, view[:n]):
                    end()
                    return
            if (comp.queue and self._complete_all(fd, comp)) or self._stop.is_set():
                end()

        def woken() -> None:
            comp.drain_pipe()
            if (comp.queue and self._complete_all(fd, comp)) or self._stop.is_set():
                end()

        def stopped() -> None:
            if self._stop.is_set():
                end()

        wake_r = comp.wake_r          # close() from another thread may reset comp's
        loop.add_reader(fd, readable)
        loop.add_reader(wake_r, woken)

        def stop_hook() -> None:
            loop.call_soon_threadsafe(stopped)

        self._stop_hook = stop_hook
        if self._stop.is_set():
            end()
        try:
            await finished
        finally:
            self._stop_hook = None
            for reader in (fd, wake_r):
                try:
                    loop.remove_reader(reader)
                except (ValueError, OSError):
                    pass
            dispatcher.cancel_tasks()
            dispatcher.aloop = None
            self._finish_serving(old)

    def _install_signals(self, install: bool) -> dict[signal.Signals, Any]:
        old: dict[signal.Signals, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._on_signal)
        return old

    def _finish_serving(self, old: dict[signal.Signals, Any]) -> None:
        self._stop.set()
        self._wake()
        for t in self._threads:
            t.join(timeout=5)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        try:
            self.ops.destroy()
        except Exception:
            log.exception("destroy raised")
        if self.dispatcher.fatal is not None:
            failed = self.dispatcher.init_error
            what = (f"init() failed: {type(failed).__name__}: {failed}"
                    if failed is not None else "handler failed with on_error='raise'")
            raise RuntimeError(what) from self.dispatcher.fatal

    def stop(self) -> None:
        """Ask every loop to return (thread-safe, signal-safe)."""
        self._stop.set()
        self._wake()
        hook = self._stop_hook
        if hook is not None:
            try:
                hook()
            except RuntimeError:
                pass  # the event loop is already closed

    def close(self, *, unmount: bool = True) -> None:
        """Unmount (if we mounted) and close our fds."""
        self.stop()
        if unmount and self._owns_mount and not self.unmounted:
            try:
                _mount.unmount(self.mountpoint, lazy=True)
            except OSError as exc:
                log.debug("unmount: %s", exc)
            self.unmounted = True
        for fd in self._extra_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.fd is not None:
            try:
                _mount.release(self.fd)  # also ends an auto_unmount helper
            except OSError:
                pass
        self._extra_fds.clear()
        self.fd = None
        for comp in self._completions:
            for fd in (comp.wake_r, comp.wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            comp.wake_r = comp.wake_w = -1
        del self._completions[1:]
        self._wake_r = self._wake_w = -1

    def run(self) -> None:
        """Mount, serve, and unmount: the whole life of a simple filesystem."""
        self.mount()
        try:
            self.serve()
        finally:
            self.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        self.stop()

    def _wake(self) -> None:
        for comp in self._completions:
            if comp.wake_w >= 0:
                try:
                    os.write(comp.wake_w, b"x")
                except OSError:
                    pass

    # -- the loop ---------------------------------------------------------------------

    def _loop(self, fd: int, comp: _Completions) -> None:
        self.dispatcher.attach(comp.submit)
        queue = comp.queue
        bufsize = max(8192, self.config.max_write + 4096)
        buf = bytearray(bufsize)
        view = memoryview(buf)
        into = [buf]  # readv's buffer list, built once rather than per request
        readv = os.readv
        writev = os.writev
        dispatcher = self.dispatcher
        dispatch = dispatcher.dispatch
        capture = self.capture
        on_read = self.on_read
        on_reply = self.on_reply
        stop = self._stop
        ready = self.ready
        is_ready = ready.is_set()
        # A bare epoll rather than a selectors.Selector: its select() builds key
        # objects and a list per wake-up, and an idle loop wakes once per request.
        sel = select.epoll()
        sel.register(fd, select.EPOLLIN)
        sel.register(comp.wake_r, select.EPOLLIN)
        poll = sel.poll
        try:
            while not stop.is_set():
                try:
                    n = readv(fd, into)
                except BlockingIOError:
                    for ready_fd, _ in poll():
                        if ready_fd != fd:        # the wake-up pipe (not on the hot path)
                            comp.drain_pipe()
                            if queue and self._complete_all(fd, comp):
                                return
                    continue
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    if exc.errno == errno.ENODEV:
                        log.info("filesystem unmounted")
                        self.unmounted = True
                        stop.set()
                        self._wake()
                        return
                    if exc.errno == errno.ECONNABORTED:
                        log.warning("connection aborted")
                        stop.set()
                        self._wake()
                        return
                    raise
                msg = view[:n]
                if on_read is not None:
                    on_read(msg)
                if capture is not None:
                    capture.request(msg)
                bufs, lookups = dispatch(msg)
                if bufs is None:
                    continue
                if capture is not None:
                    capture.reply(bufs)
                try:
                    writev(fd, bufs)
                except (TypeError, ValueError) as exc:
                    # a reply part the dispatcher let through: never fatal
                    self._bad_reply(fd, bufs, lookups, exc)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        # The kernel stopped waiting (interrupt or abort).
                        self.dispatcher.rollback(lookups)
                    elif exc.errno == errno.ENODEV:
                        self.unmounted = True
                        stop.set()
                        self._wake()
                        return
                    else:
                        log.error("reply write failed: %s", exc)
                        self.dispatcher.rollback(lookups)
                if (not is_ready and self.conn.session is not None
                        and dispatcher.fatal is None):
                    ready.set()
                    is_ready = True
                if on_reply is not None:
                    on_reply(msg)
                if dispatcher.fatal is not None:
                    stop.set()
                    self._wake()
                    return
                if queue and self._complete_all(fd, comp):
                    return
        finally:
            sel.close()

    def _one(self, fd: int, msg: memoryview) -> bool:
        """Handle one message read from ``fd`` (the async reader's path; the sync
        loop has the same steps inline).  True: stop serving."""
        if self.on_read is not None:
            self.on_read(msg)
        if self.capture is not None:
            self.capture.request(msg)
        bufs, lookups = self.dispatcher.dispatch(msg)
        if bufs is None:
            return False
        if self._write(fd, bufs, lookups):
            return True
        if (not self.ready.is_set() and self.conn.session is not None
                and self.dispatcher.fatal is None):
            self.ready.set()
        if self.on_reply is not None:
            self.on_reply(msg)
        return self.dispatcher.fatal is not None

    def _write(self, fd: int, bufs: Buffers, lookups: list[int]) -> bool:
        """Write one reply; True when the connection is gone (stop serving)."""
        if self.capture is not None:
            self.capture.reply(bufs)
        try:
            os.writev(fd, bufs)
        except (TypeError, ValueError) as exc:
            # a reply part the dispatcher let through: never fatal
            self._bad_reply(fd, bufs, lookups, exc)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                self.unmounted = True
                self._stop.set()
                self._wake()
                return True
            if exc.errno != errno.ENOENT:     # ENOENT: the kernel stopped waiting
                log.error("reply write failed: %s", exc)
            self.dispatcher.rollback(lookups)
        return False

    def _complete_all(self, fd: int, comp: _Completions) -> bool:
        """Write the replies of this thread's finished deferred requests, in the
        order they finished.  True: stop serving."""
        queue = comp.queue
        complete = self.dispatcher.complete
        while queue:
            p = queue.popleft()
            bufs, lookups = complete(p)
            if bufs is None:
                continue
            if self._write(fd, bufs, lookups):
                return True
            if self.on_reply is not None:
                self.on_reply(_header_of(p.slot[0]))
            if self.dispatcher.fatal is not None:
                self._stop.set()
                self._wake()
                return True
        return False

    def _bad_reply(self, fd: int, bufs: list[Any], lookups: list[int],
                   exc: Exception) -> None:
        """A reply writev could not send: answer its request with EIO instead."""
        self.dispatcher.rollback(lookups)
        try:
            _, _, unique = reply_header(bufs[0])
            log.error("reply to unique=%#x could not be written (%s); answering EIO",
                      unique, exc)
            os.write(fd, encode_error(unique, errno.EIO))
        except Exception as again:
            log.error("unwritable reply dropped: %s (%s)", exc, again)

    # -- notifications (the Notifier protocol) ---------------------------------------------

    def _notify(self, code: NotifyCode, *fields: int, tail: bytes | Sequence[int] = b"") -> int:
        if self.fd is None:
            raise OSError(errno.ENOTCONN, "not serving")
        # encoded by the sans-IO core from the NOTIFICATIONS row's payload schema
        bufs = self.conn.notification(code, *fields, tail=tail)
        if self.capture is not None:
            self.capture.notify(bufs)
        try:
            os.writev(self.fd, bufs)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def notify_poll(self, kh: int) -> int:
        """Wake pollers waiting on poll handle ``kh``."""
        return self._notify(NotifyCode.POLL, kh)

    def notify_inval_inode(self, inode: int, off: int = 0, length: int = 0) -> int:
        """Invalidate attributes (and page cache from ``off`` unless ``off < 0``)."""
        return self._notify(NotifyCode.INVAL_INODE, inode, off, length)

    def notify_inval_entry(self, parent_inode: int, name: bytes,
                           expire_only: bool = False) -> int:
        """Invalidate (or with ``expire_only`` just expire) a cached dentry."""
        return self._notify(NotifyCode.INVAL_ENTRY, parent_inode, len(name), int(expire_only),
                            tail=name)

    def notify_delete(self, parent_inode: int, inode: int, name: bytes) -> int:
        """Tell the kernel a name was deleted (inotify sees it)."""
        return self._notify(NotifyCode.DELETE, parent_inode, inode, len(name), 0, tail=name)

    def notify_store(self, inode: int, offset: int, data: bytes) -> int:
        """Push ``data`` into the page cache of ``inode``."""
        return self._notify(NotifyCode.STORE, inode, offset, len(data), 0, tail=data)

    def notify_retrieve(self, inode: int, offset: int, size: int,
                        timeout: float = 5.0) -> bytes | None:
        """Ask for the cached pages of ``inode``; wait for the NOTIFY_REPLY.

        Must be called from a thread other than the one serving (the reply
        arrives through the loop); returns None on timeout.
        """
        ident = next(self._retrieve_ids)
        event = threading.Event()
        box: list[bytes] = []
        self._retrieved[ident] = (event, box)
        err = self._notify(NotifyCode.RETRIEVE, ident, inode, offset, size, 0)
        if err:
            self._retrieved.pop(ident, None)
            raise OSError(err, os.strerror(err))
        event.wait(timeout)
        self._retrieved.pop(ident, None)
        return box[0] if box else None

    def retrieve_reply(self, notify_unique: int, nodeid: int, offset: int, data: bytes) -> None:
        """Called by the dispatcher for NOTIFY_REPLY."""
        slot = self._retrieved.get(notify_unique)
        if slot is not None:
            slot[1].append(data)
            slot[0].set()

    def notify_prune(self, inodes: Sequence[int]) -> int:
        """Ask the kernel to forget unused inodes (7.45)."""
        ids = list(inodes)
        return self._notify(NotifyCode.PRUNE, len(ids), 0, 0, tail=ids)

    def notify_inc_epoch(self) -> int:
        """Make every cached dentry revalidate on next use (7.44)."""
        return self._notify(NotifyCode.INC_EPOCH)

    def notify_resend(self) -> int:
        """Make the kernel re-send every request read but not answered (7.40)."""
        return self._notify(NotifyCode.RESEND)

    # -- kernel passthrough ------------------------------------------------------------------

    def backing_open(self, fd: int) -> int:
        """Register ``fd`` as a passthrough backing file; return the backing id."""
        if self.fd is None:
            raise OSError(errno.ENOTCONN, "not serving")
        arg = ctypes.create_string_buffer(CODECS["backing_map"].struct.pack(fd, 0, 0), 16)
        res = _libc.ioctl(self.fd, ctypes.c_ulong(_FUSE_DEV_IOC_BACKING_OPEN), arg)
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(res)

    def backing_close(self, backing_id: int) -> None:
        """Release a backing id."""
        if self.fd is None:
            return
        arg = ctypes.c_uint32(backing_id)
        if _libc.ioctl(self.fd, ctypes.c_ulong(_FUSE_DEV_IOC_BACKING_CLOSE),
                       ctypes.byref(arg)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    @property
    def session_flags(self) -> InitFlag:
        """The negotiated INIT flags (empty before INIT)."""
        s = self.conn.session
        return InitFlag(s.flags) if s is not None else InitFlag(0)


def serve_in_thread(server: Server, timeout: float = 10.0) -> threading.Thread:
    """Mount and serve in a daemon thread; return once INIT is answered (tests, demos)."""
    server.mount()
    t = threading.Thread(target=server.serve, kwargs={"install_signals": False}, daemon=True)
    t.start()
    if not server.ready.wait(timeout):
        raise TimeoutError("the kernel did not complete INIT")
    return t

