"""pyfuse3 compatibility: run a filesystem written for ``import pyfuse3`` on fusewire.

The pyfuse3 3.x public API: async :class:`Operations`, :func:`init`,
:func:`main`, :func:`close`, :func:`terminate`, :class:`EntryAttributes`,
:class:`FileInfo`, :class:`SetattrFields`, :class:`StatvfsData`,
:class:`RequestContext`, :class:`ReaddirToken` with :func:`readdir_reply`,
:class:`FUSEError`, :func:`invalidate_inode`, :func:`invalidate_entry`,
:func:`notify_store`, :data:`default_options`, under trio (the default) or
asyncio (``pyfuse3.asyncio.enable()``).  Make ``import pyfuse3`` resolve here
with::

    python -m fusewire.compat.pyfuse3 myfs.py ARGS...

or :func:`install` before the filesystem's module is imported.

How requests run: fusewire's server reads and answers requests on its own
thread; each request's ``async def`` handler is handed to the event loop
that runs :func:`main` (``trio.from_thread.run`` /
``asyncio.run_coroutine_threadsafe``) and the server waits for its result.
Handlers therefore run on the event loop, one at a time and in order, and
everything else on that loop (timers, other tasks) keeps running while the
filesystem serves.  ``min_tasks``/``max_tasks`` are accepted and ignored.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fusewire.operations import Operations as _InodeOperations
from fusewire.readdir import ReaddirToken
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

__all__ = [
    "ENOATTR",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INODE",
    "EntryAttributes",
    "FUSEError",
    "FileHandleT",
    "FileInfo",
    "FileNameT",
    "FlagT",
    "InodeT",
    "ModeT",
    "Operations",
    "ReaddirToken",
    "RequestContext",
    "SetattrFields",
    "StatvfsData",
    "XAttrNameT",
    "close",
    "default_options",
    "get_sup_groups",
    "getxattr",
    "init",
    "install",
    "invalidate_entry",
    "invalidate_entry_async",
    "invalidate_inode",
    "listdir",
    "main",
    "notify_store",
    "readdir_reply",
    "setxattr",
    "syncfs",
    "terminate",
]

__version__ = "3.5.0"

FileHandleT = int
FileNameT = bytes
FlagT = int
InodeT = int
ModeT = int
XAttrNameT = bytes

ROOT_INODE: InodeT = 1
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
RENAME_NOREPLACE: FlagT = 1
RENAME_EXCHANGE: FlagT = 2
#: pyfuse3's default mount options
default_options: frozenset[str] = frozenset(("default_permissions",))
#: set while :func:`main` runs under trio (pyfuse3 exposes the same name)
trio_token: Any = None

_T = TypeVar("_T")


def _enosys() -> FUSEError:
    return FUSEError(errno.ENOSYS)


class Operations:
    """pyfuse3's Operations: override the ``async def`` methods you support.

    Every default raises ``FUSEError(ENOSYS)`` (``forget`` does nothing); what
    you do not override is not implemented, and the kernel stops asking for
    the calls where it remembers that.
    """

    supports_dot_lookup: bool = True
    enable_writeback_cache: bool = False
    enable_acl: bool = False

    def init(self) -> None:
        """Called just before the first request is handled (must not raise)."""

    async def lookup(self, parent_inode: InodeT, name: FileNameT,
                     ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        pass

    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def setattr(self, inode: InodeT, attr: EntryAttributes, fields: SetattrFields,
                      fh: FileHandleT | None, ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        raise _enosys()

    async def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT,
                    ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        raise _enosys()

    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        raise _enosys()

    async def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                      ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def rename(self, parent_inode_old: InodeT, name_old: FileNameT,
                     parent_inode_new: InodeT, name_new: FileNameT, flags: FlagT,
                     ctx: RequestContext) -> None:
        raise _enosys()

    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
                   ctx: RequestContext) -> EntryAttributes:
        raise _enosys()

    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> FileInfo:
        raise _enosys()

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        raise _enosys()

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        raise _enosys()

    async def flush(self, fh: FileHandleT) -> None:
        raise _enosys()

    async def release(self, fh: FileHandleT) -> None:
        raise _enosys()

    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        raise _enosys()

    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        raise _enosys()

    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        raise _enosys()

    async def releasedir(self, fh: FileHandleT) -> None:
        raise _enosys()

    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        raise _enosys()

    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        raise _enosys()

    def stacktrace(self) -> None:
        """pyfuse3 dumps all threads' stacks here (on a special xattr); fusewire does not."""

    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes,
                       ctx: RequestContext) -> None:
        raise _enosys()

    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        raise _enosys()

    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        raise _enosys()

    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> None:
        raise _enosys()

    async def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> bool:
        raise _enosys()

    async def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        raise _enosys()


def readdir_reply(token: ReaddirToken, name: FileNameT, attr: EntryAttributes,
                  next_id: int) -> bool:
    """Add one entry to a readdir reply; False when it is full (stop then)."""
    return token.add(name, attr, next_id)


# -- the bridge: fusewire's sync inode API -> the user's coroutines ---------------------


class _Runner:
    """Runs a coroutine function on the event loop of :func:`main`, from the server thread."""

    def __init__(self) -> None:
        self.call: Callable[..., Any] | None = None

    def __call__(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        call = self.call
        if call is None:
            raise FUSEError(errno.EIO)       # a request before main() or after it ended
        result: _T = call(fn, *args)
        return result


#: pyfuse3 method -> how the bridge calls it (same name in fusewire's inode API)
_METHODS = ("lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink",
            "rmdir", "symlink", "rename", "link", "open", "read", "write", "flush",
            "release", "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs",
            "setxattr", "getxattr", "listxattr", "removexattr", "access", "create")


class _Bridge(_InodeOperations):
    """fusewire's :class:`~fusewire.Operations` calling a pyfuse3 Operations object."""

    def __init__(self, ops: Operations, runner: _Runner) -> None:
        self.pyops = ops
        self.run = runner
        self.supports_dot_lookup = bool(getattr(ops, "supports_dot_lookup", True))
        self.enable_writeback_cache = bool(getattr(ops, "enable_writeback_cache", False))
        self.enable_acl = bool(getattr(ops, "enable_acl", False))

    def init(self) -> None:
        self.pyops.init()

    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        return self.run(self.pyops.lookup, parent_inode, name, ctx)

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.run(self.pyops.forget, list(inode_list))

    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self.run(self.pyops.getattr, inode, ctx)

    def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                fh: int | None, ctx: RequestContext) -> EntryAttributes:
        return self.run(self.pyops.setattr, inode, attr, fields, fh, ctx)

    def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        return self.run(self.pyops.readlink, inode, ctx)

    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: RequestContext) -> EntryAttributes:
        return self.run(self.pyops.mknod, parent_inode, name, mode, rdev, ctx)

    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: RequestContext) -> EntryAttributes:
        # pyfuse3 hands mkdir the mode with S_IFDIR set (the kernel sends none)
        return self.run(self.pyops.mkdir, parent_inode, name,
                        (mode & ~stat.S_IFMT(mode)) | stat.S_IFDIR, ctx)

    def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self.run(self.pyops.unlink, parent_inode, name, ctx)

    def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self.run(self.pyops.rmdir, parent_inode, name, ctx)

    def symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: RequestContext) -> EntryAttributes:
        return self.run(self.pyops.symlink, parent_inode, name, target, ctx)

    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, flags: int, ctx: RequestContext) -> None:
        self.run(self.pyops.rename, parent_inode_old, name_old, parent_inode_new, name_new,
                 flags, ctx)

    def link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: RequestContext) -> EntryAttributes:
        return self.run(self.pyops.link, inode, new_parent_inode, new_name, ctx)

    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        return self.run(self.pyops.open, inode, flags, ctx)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return self.run(self.pyops.read, fh, off, size)

    def write(self, fh: int, off: int, buf: memoryview) -> int:
        return self.run(self.pyops.write, fh, off, bytes(buf))

    def flush(self, fh: int, lock_owner: int = 0) -> None:
        self.run(self.pyops.flush, fh)          # pyfuse3's flush takes no lock owner

    def release(self, fh: int) -> None:
        self.run(self.pyops.release, fh)

    def fsync(self, fh: int, datasync: bool) -> None:
        self.run(self.pyops.fsync, fh, datasync)

    def opendir(self, inode: int, ctx: RequestContext) -> int:
        return self.run(self.pyops.opendir, inode, ctx)

    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        self.run(self.pyops.readdir, fh, start_id, token)

    def releasedir(self, fh: int) -> None:
        self.run(self.pyops.releasedir, fh)

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.run(self.pyops.fsyncdir, fh, datasync)

    def statfs(self, ctx: RequestContext) -> StatvfsData:
        return self.run(self.pyops.statfs, ctx)

    def setxattr(self, inode: int, name: bytes, value: bytes, flags: int,
                 ctx: RequestContext) -> None:
        self.run(self.pyops.setxattr, inode, name, bytes(value), ctx)   # pyfuse3: no flags

    def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        return self.run(self.pyops.getxattr, inode, name, ctx)

    def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        return self.run(self.pyops.listxattr, inode, ctx)

    def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        self.run(self.pyops.removexattr, inode, name, ctx)

    def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        return self.run(self.pyops.access, inode, mode, ctx)

    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        return self.run(self.pyops.create, parent_inode, name, mode, flags, ctx)


def _bridge_for(ops: Operations, runner: _Runner) -> _Bridge:
    """A bridge whose class overrides exactly what ``ops`` implements (the dispatcher
    answers ENOSYS without a thread hop for the rest, and negotiates INIT flags from it)."""
    base = Operations
    absent = {name: getattr(_InodeOperations, name) for name in _METHODS
              if getattr(type(ops), name, None) is getattr(base, name, None)}
    if type(ops).forget is base.forget:
        absent["forget"] = _InodeOperations.forget
    cls = type("_Pyfuse3Bridge", (_Bridge,), absent)
    bridge: _Bridge = cls(ops, runner)
    return bridge


# -- the session --------------------------------------------------------------------------


class _Session:
    def __init__(self, ops: Operations, mountpoint: str, options: Sequence[str]) -> None:
        from fusewire.server.loop import Server

        self.runner = _Runner()
        self.bridge = _bridge_for(ops, self.runner)
        opts = [o for o in options if o != "debug"]
        fsname = next((o.split("=", 1)[1] for o in opts if o.startswith("fsname=")),
                      os.path.basename(sys.argv[0] or "pyfuse3"))
        self.server = Server(self.bridge, mountpoint, opts, debug="debug" in options,
                             fsname=fsname)
        self.thread: threading.Thread | None = None


_session: _Session | None = None


def _current() -> _Session:
    if _session is None:
        raise RuntimeError("pyfuse3.init() has not been called")
    return _session


def init(ops: Operations, mountpoint: str,
         options: Sequence[str] | set[str] | frozenset[str] = default_options) -> None:
    """Mount ``mountpoint`` for ``ops`` (requests are served once :func:`main` runs)."""
    global _session
    if _session is not None:
        raise RuntimeError("pyfuse3.init() called twice")
    session = _Session(ops, mountpoint, sorted(options))
    try:
        session.server.mount()
    except OSError as exc:
        session.server.close()
        raise RuntimeError(f"cannot mount {mountpoint}: {exc.strerror or exc}") from None
    _session = session


def _asyncio_mode() -> bool:
    module = sys.modules.get(__name__ + ".asyncio")
    return bool(module is not None and getattr(module, "enabled", False))


async def main(min_tasks: int = 1, max_tasks: int = 99) -> None:
    """Serve until unmounted or :func:`terminate` (run it under trio or asyncio)."""
    session = _current()
    if _asyncio_mode():
        await _main_asyncio(session)
    else:
        await _main_trio(session)


def _serve_thread(session: _Session, done: Callable[[], None]) -> threading.Thread:
    def body() -> None:
        try:
            session.server.serve(install_signals=False)
        finally:
            session.runner.call = None
            done()

    t = threading.Thread(target=body, name="fusewire-pyfuse3", daemon=True)
    session.thread = t
    t.start()
    return t


async def _main_asyncio(session: _Session) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    def call(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        return asyncio.run_coroutine_threadsafe(fn(*args), loop).result()  # type: ignore[arg-type]

    session.runner.call = call
    def done() -> None:
        loop.call_soon_threadsafe(finished.set)

    _serve_thread(session, done)
    try:
        await finished.wait()
    finally:
        session.runner.call = None
        session.server.stop()


async def _main_trio(session: _Session) -> None:
    global trio_token
    import trio

    token = trio.lowlevel.current_trio_token()
    trio_token = token
    finished = trio.Event()

    def call(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        result: _T = trio.from_thread.run(fn, *args, trio_token=token)
        return result

    def done() -> None:
        try:
            trio.from_thread.run_sync(finished.set, trio_token=token)
        except trio.RunFinishedError:
            pass

    session.runner.call = call
    _serve_thread(session, done)
    try:
        await finished.wait()
    finally:
        session.runner.call = None
        session.server.stop()
        trio_token = None


def terminate() -> None:
    """Make :func:`main` return (the file system stays mounted until :func:`close`)."""
    if _session is not None:
        _session.server.stop()


def close(unmount: bool = True) -> None:
    """Unmount (unless ``unmount`` is false) and release the session."""
    global _session
    session = _session
    if session is None:
        return
    _session = None
    session.server.stop()
    if session.thread is not None and session.thread is not threading.current_thread():
        session.thread.join(timeout=10)
    session.server.close(unmount=unmount)


# -- notifications --------------------------------------------------------------------------


def _notify(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))


def invalidate_inode(inode: InodeT, attr_only: bool = False) -> None:
    """Drop the kernel's cached attributes (and data, unless ``attr_only``) of ``inode``."""
    _notify(_current().server.notify_inval_inode(inode, -1 if attr_only else 0, 0))


def invalidate_entry(inode_p: InodeT, name: FileNameT, deleted: InodeT = 0) -> None:
    """Drop the cached name ``name`` in ``inode_p``; with ``deleted``, also tell
    the kernel that it named inode ``deleted`` and is gone (inotify sees it)."""
    server = _current().server
    if deleted:
        _notify(server.notify_delete(inode_p, deleted, name))
    else:
        _notify(server.notify_inval_entry(inode_p, name))


def invalidate_entry_async(inode_p: InodeT, name: FileNameT, deleted: InodeT = 0,
                           ignore_enoent: bool = False) -> None:
    """:func:`invalidate_entry` from a helper thread (safe inside a handler)."""
    def body() -> None:
        try:
            invalidate_entry(inode_p, name, deleted)
        except OSError as exc:
            if not (ignore_enoent and exc.errno == errno.ENOENT):
                import logging

                logging.getLogger(__name__).warning("invalidate_entry_async: %s", exc)

    threading.Thread(target=body, daemon=True).start()


def notify_store(inode: InodeT, offset: int, data: bytes) -> None:
    """Put ``data`` into the kernel's page cache of ``inode`` at ``offset``."""
    _notify(_current().server.notify_store(inode, offset, data))


# -- helpers pyfuse3 also exports ----------------------------------------------------------------


def get_sup_groups(pid: int) -> set[int]:
    """The supplementary groups of process ``pid`` (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    raise RuntimeError(f"no Groups line for pid {pid}")


def listdir(path: str) -> list[str]:
    """``os.listdir``."""
    return os.listdir(path)


def syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` (syncfs(2))."""
    fd = os.open(path, os.O_RDONLY)
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def setxattr(path: str, name: str, value: bytes, namespace: str = "user") -> None:
    """Set ``namespace.name`` on a file outside the mount."""
    os.setxattr(path, f"{namespace}.{name}", value, follow_symlinks=False)


def getxattr(path: str, name: str, size_guess: int = 128, namespace: str = "user") -> bytes:
    """Read ``namespace.name`` of a file outside the mount."""
    return os.getxattr(path, f"{namespace}.{name}", follow_symlinks=False)


def install() -> None:
    """Make ``import pyfuse3`` (and ``pyfuse3.asyncio``, ``pyfuse3_asyncio``) give this package."""
    from fusewire.compat.pyfuse3 import asyncio as _asyncio_layer

    module = sys.modules[__name__]
    sys.modules["pyfuse3"] = module
    sys.modules["pyfuse3.asyncio"] = _asyncio_layer
    sys.modules["pyfuse3_asyncio"] = _asyncio_layer
