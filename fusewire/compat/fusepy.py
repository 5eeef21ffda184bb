"""fusepy / mfusepy compatibility: run a filesystem written for ``import fuse`` on fusewire.

The public names of fusepy's ``fuse`` module: :class:`FUSE`,
:class:`Operations`, :class:`FuseOSError`, :class:`LoggingMixIn`,
:func:`fuse_get_context`, :func:`fuse_exit`, :data:`ENOTSUP`.  A filesystem
written against them runs unmodified once ``import fuse`` (or ``import
mfusepy``) resolves to this module, either with::

    python -m fusewire.compat.fusepy myfs.py ARGS...     # runs myfs.py as __main__

or, from your own code, before the filesystem's module is imported::

    import fusewire.compat.fusepy
    fusewire.compat.fusepy.install()      # sys.modules["fuse"] = sys.modules["mfusepy"] = this

Calls go through the operations object's ``__call__(op, path, *args)``
exactly as in fusepy (subclasses that override ``__call__``, like fusepy's
loopback example, keep working), with fusepy's argument orders
(``symlink(target, source)``, ``link(target, source)``, ``read(path, size,
offset, fh)``...).  A method set to ``None`` is not implemented (the kernel
gets ENOSYS); methods inherited from :class:`Operations` answer fusepy's
defaults (EROFS for writes, ENOTSUP for xattrs...).

Differences from fusepy, on purpose:

- Paths are decoded with :func:`os.fsdecode` (UTF-8 with ``surrogateescape``),
  not strict UTF-8: names that are not UTF-8 still reach the filesystem.
- One serving thread: ``nothreads`` is accepted and changes nothing.
- An exception other than ``OSError`` gives the caller EIO (fusepy: EFAULT)
  and logs the traceback.
- A file unlinked while open stays readable through its handle
  (see :class:`fusewire.PathAdapter`), as with libfuse's default.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as _stat
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fusewire.pathops import Attributes, DirEntry, PathAdapter, PathOperations, current_context
from fusewire.types import EntryAttributes, FileInfo, FUSEError, StatvfsData

__all__ = [
    "ENOATTR",
    "ENOTSUP",
    "FUSE",
    "FuseOSError",
    "LoggingMixIn",
    "MountError",
    "Operations",
    "ReadDirResult",
    "fuse_config",
    "fuse_conn_info",
    "fuse_exit",
    "fuse_get_context",
    "install",
    "log_callback",
    "overrides",
]

log = logging.getLogger("fuse")

#: fusepy exports this name (Linux: EOPNOTSUPP)
ENOTSUP = errno.ENOTSUP
#: mfusepy: the errno of a missing xattr (Linux: ENODATA)
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
#: mfusepy's type of what ``readdir`` returns
ReadDirResult = Iterable[str | tuple[str, Any, int]]

#: options FUSE() consumes itself instead of passing them to mount(2)
_OWN_OPTIONS = {"foreground", "nothreads", "debug", "raw_fi", "encoding", "use_ino",
                "hard_remove", "direct_io", "kernel_cache", "auto_cache", "entry_timeout",
                "attr_timeout", "negative_timeout", "big_writes", "large_read", "nonempty",
                "readdir_ino", "max_readahead", "splice_read", "splice_write", "splice_move",
                "no_remote_lock", "atomic_o_trunc", "intr", "noforget", "remember",
                "modules", "max_background", "congestion_threshold", "async_read",
                "sync_read"}

_servers: list[Any] = []


class MountError(RuntimeError):
    """``FUSE(...)`` could not mount (a RuntimeError, as fusepy raises); the reason was printed."""


class FuseOSError(OSError):
    """Raise ``FuseOSError(errno.ENOENT)`` to make the caller's system call fail."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno, os.strerror(errno))


def fuse_get_context() -> tuple[int, int, int]:
    """``(uid, gid, pid)`` of the process making the current request."""
    ctx = current_context()
    return ctx.uid, ctx.gid, ctx.pid


def fuse_exit() -> None:
    """Stop serving (the ``FUSE(...)`` call returns once the mount is gone)."""
    for server in list(_servers):
        server.stop()


def overrides(parent_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """mfusepy's decorator: checks that the method exists in ``parent_class``."""

    def check(method: Callable[..., Any]) -> Callable[..., Any]:
        if not hasattr(parent_class, method.__name__):
            raise TypeError(f"{method.__name__} overrides nothing in {parent_class.__name__}")
        return method

    return check


def log_callback(method: Callable[..., Any]) -> Callable[..., Any]:
    """mfusepy's decorator: log each call of ``method`` and its result."""
    logger = logging.getLogger("fuse.log-mixin")

    def logged(*args: Any) -> Any:
        logger.debug("-> %s %s", method.__name__, repr(args[1:]))
        try:
            ret = method(*args)
        except OSError as e:
            logger.debug("<- %s %s", method.__name__, e)
            raise
        logger.debug("<- %s %s", method.__name__, repr(ret))
        return ret

    logged.__name__ = method.__name__
    return logged


class fuse_conn_info:  # noqa: N801 - mfusepy's name
    """mfusepy passes libfuse's connection info to ``init_with_config``; fusewire passes None."""


class fuse_config:  # noqa: N801 - mfusepy's name
    """mfusepy passes libfuse's config to ``init_with_config``; fusewire passes None."""


def _not_served(method: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a base-class method the bridge does not serve unless a subclass overrides it."""
    method.libfuse_ignore = True  # type: ignore[attr-defined]
    return method


class Operations:
    """fusepy's Operations: override the methods you support.

    ``__call__(op, *args)`` dispatches to the method named ``op``; override it
    to intercept every call.
    """

    def __call__(self, op: str, *args: Any) -> Any:
        if not hasattr(self, op):
            raise FuseOSError(errno.EFAULT)
        return getattr(self, op)(*args)

    def access(self, path: str, amode: int) -> int:
        return 0

    bmap = None

    def chmod(self, path: str, mode: int) -> int:
        raise FuseOSError(errno.EROFS)

    def chown(self, path: str, uid: int, gid: int) -> int:
        raise FuseOSError(errno.EROFS)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        raise FuseOSError(errno.EROFS)

    def destroy(self, path: str) -> None:
        pass

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path != "/":
            raise FuseOSError(errno.ENOENT)
        return {"st_mode": _stat.S_IFDIR | 0o755, "st_nlink": 2}

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise FuseOSError(ENOTSUP)

    def init(self, path: str) -> None:
        pass

    def ioctl(self, path: str, cmd: int, arg: Any, fip: Any, flags: int, data: Any) -> int:
        raise FuseOSError(errno.ENOTTY)

    def link(self, target: str, source: str) -> int:
        raise FuseOSError(errno.EROFS)

    def listxattr(self, path: str) -> list[str]:
        return []

    lock = None

    def mkdir(self, path: str, mode: int) -> int:
        raise FuseOSError(errno.EROFS)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise FuseOSError(errno.EROFS)

    def open(self, path: str, flags: int) -> int:
        return 0

    def opendir(self, path: str) -> int:
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        raise FuseOSError(errno.EIO)

    def readdir(self, path: str, fh: int) -> Iterable[Any]:
        return [".", ".."]

    def readlink(self, path: str) -> str:
        raise FuseOSError(errno.ENOENT)

    def release(self, path: str, fh: int) -> int:
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def removexattr(self, path: str, name: str) -> int:
        raise FuseOSError(ENOTSUP)

    def rename(self, old: str, new: str) -> int:
        raise FuseOSError(errno.EROFS)

    def rmdir(self, path: str) -> int:
        raise FuseOSError(errno.EROFS)

    def setxattr(self, path: str, name: str, value: bytes, options: int,
                 position: int = 0) -> int:
        raise FuseOSError(ENOTSUP)

    def statfs(self, path: str) -> dict[str, int]:
        return {}

    def symlink(self, target: str, source: str) -> int:
        raise FuseOSError(errno.EROFS)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        raise FuseOSError(errno.EROFS)

    def unlink(self, path: str) -> int:
        raise FuseOSError(errno.EROFS)

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> int:
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        raise FuseOSError(errno.EROFS)

    # mfusepy's additions: served only when a subclass overrides them

    @_not_served
    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        raise FuseOSError(errno.EOPNOTSUPP)

    @_not_served
    def flock(self, path: str, fh: int, op: int) -> int:
        raise FuseOSError(errno.ENOSYS)

    @_not_served
    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        pass

    @_not_served
    def poll(self, path: str, fh: int, ph: Any, reventsp: Any) -> int:
        raise FuseOSError(errno.ENOSYS)

    @_not_served
    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
        raise FuseOSError(errno.ENOSYS)

    @_not_served
    def readdir_with_offset(self, path: str, offset: int, fh: int) -> Iterable[Any]:
        return [".", ".."]

    @_not_served
    def write_buf(self, path: str, buf: Any, offset: int, fh: int) -> int:
        raise FuseOSError(errno.ENOSYS)


class LoggingMixIn:
    """Log every call and its result (logger ``fuse.log-mixin``, level DEBUG)."""

    log = logging.getLogger("fuse.log-mixin")

    def __call__(self, op: str, path: str, *args: Any) -> Any:
        self.log.debug("-> %s %s %s", op, path, repr(args))
        ret: Any = "[Unhandled Exception]"
        try:
            ret = super().__call__(op, path, *args)  # type: ignore[misc]
            return ret
        except OSError as e:
            ret = str(e)
            raise
        finally:
            self.log.debug("<- %s %s", op, repr(ret))


class RawFileInfo:
    """What ``raw_fi=True`` filesystems get instead of an fh: fuse_file_info's fields."""

    def __init__(self, flags: int = 0) -> None:
        self.flags = flags
        self.fh = 0
        self.fh_old = 0
        self.direct_io = 0
        self.keep_cache = 0
        self.nonseekable = 0
        self.flush = 0
        self.writepage = 0
        self.lock_owner = 0


def _ns(d: Mapping[str, Any], key: str, use_ns: bool) -> int:
    ns = d.get(key + "_ns")
    if ns is not None:
        return int(ns)
    value = d.get(key)
    if value is None:
        return 0
    if use_ns:
        return int(value)
    if isinstance(value, int):
        return value * 1_000_000_000
    return round(float(value) * 1e9)


def attributes_from_dict(d: Mapping[str, Any], use_ns: bool = False) -> EntryAttributes:
    """A fusepy ``getattr`` dict (``st_mode``, ``st_size``, ``st_mtime``...) as attributes.

    Times are seconds (float or int), or integer nanoseconds with ``use_ns``
    (mfusepy); ``st_blocks`` defaults to the size in 512-byte blocks.
    """
    size = int(d.get("st_size", 0))
    blocks = d.get("st_blocks")
    return EntryAttributes(
        int(d.get("st_ino", 0)), 0, 0.0, 0.0, int(d.get("st_mode", 0)),
        int(d.get("st_nlink", 1)), int(d.get("st_uid", 0)), int(d.get("st_gid", 0)),
        int(d.get("st_rdev", 0)), size, int(d.get("st_blksize", 4096)),
        int(blocks) if blocks is not None else (size + 511) // 512,
        _ns(d, "st_atime", use_ns), _ns(d, "st_mtime", use_ns), _ns(d, "st_ctime", use_ns),
        _ns(d, "st_birthtime", use_ns))


def _attrs(raw: Any, use_ns: bool = False) -> Attributes:
    if isinstance(raw, (EntryAttributes, os.stat_result)):
        return raw
    if isinstance(raw, Mapping):
        return attributes_from_dict(raw, use_ns)
    if isinstance(raw, int) and raw < 0:
        raise FUSEError(-raw)
    raise TypeError(f"getattr returned {type(raw).__name__}, not a dict")


def _status(ret: Any) -> Any:
    """mfusepy methods may return -errno instead of raising."""
    if isinstance(ret, int) and not isinstance(ret, bool) and ret < 0:
        raise FUSEError(-ret)
    return ret


def _statvfs(raw: Any) -> StatvfsData:
    if isinstance(raw, os.statvfs_result):
        return StatvfsData(raw.f_bsize, raw.f_frsize, raw.f_blocks, raw.f_bfree,
                           raw.f_bavail, raw.f_files, raw.f_ffree, raw.f_favail,
                           raw.f_namemax)
    d: Mapping[str, Any] = raw or {}
    bsize = int(d.get("f_bsize", 0)) or 512
    return StatvfsData(bsize, int(d.get("f_frsize", 0)) or bsize, int(d.get("f_blocks", 0)),
                       int(d.get("f_bfree", d.get("f_bavail", 0))), int(d.get("f_bavail", 0)),
                       int(d.get("f_files", 0)), int(d.get("f_ffree", 0)),
                       int(d.get("f_favail", d.get("f_ffree", 0))),
                       int(d.get("f_namemax", 0)) or 255)


class _Bridge(PathOperations):
    """fusewire's path API in terms of a fusepy operations object."""

    def __init__(self, ops: Any, raw_fi: bool, use_ino: bool, hard_remove: bool,
                 timeouts: tuple[float, float, float], direct_io: bool,
                 keep_cache: bool) -> None:
        self.ops = ops
        self.raw_fi = raw_fi
        self.use_ino = use_ino
        self.hard_remove = hard_remove
        self.entry_timeout, self.attr_timeout, self.negative_timeout = timeouts
        self.direct_io = direct_io
        self.keep_cache = keep_cache
        self.call: Callable[..., Any] = ops
        self.use_ns = bool(getattr(ops, "use_ns", False))
        with_offset = getattr(ops, "readdir_with_offset", None)
        self.with_offset = with_offset is not None and not getattr(with_offset,
                                                                   "libfuse_ignore", False)
        self._fis: dict[int, RawFileInfo] = {}
        self._fi_seq = 0
        self._fi_lock = threading.Lock()
        #: the FileInfo flags of the handle opened last (read by the adapter)
        self.last_info = FileInfo()

    # handles: with raw_fi the filesystem sees a RawFileInfo, fusewire an int
    def _opened(self, fi: RawFileInfo | None, ret: Any) -> int:
        if fi is None:
            self.last_info = FileInfo(direct_io=self.direct_io, keep_cache=self.keep_cache)
            return int(ret or 0)
        self.last_info = FileInfo(direct_io=bool(fi.direct_io) or self.direct_io,
                                  keep_cache=bool(fi.keep_cache) or self.keep_cache,
                                  nonseekable=bool(fi.nonseekable))
        with self._fi_lock:
            self._fi_seq += 1
            self._fis[self._fi_seq] = fi
            return self._fi_seq

    def _fh(self, fh: int | None) -> Any:
        if fh is None or not self.raw_fi:
            return fh
        return self._fis.get(fh, fh)

    def init(self) -> None:
        with_config = getattr(self.ops, "init_with_config", None)
        if with_config is not None and not getattr(with_config, "libfuse_ignore", False):
            with_config(None, None)
        else:
            self.call("init", "/")

    def destroy(self) -> None:
        self.call("destroy", "/")

    def getattr(self, path: str, fh: int | None = None) -> Attributes:
        if fh is None:
            return _attrs(self.call("getattr", path), self.use_ns)
        return _attrs(self.call("getattr", path, self._fh(fh)), self.use_ns)

    def chmod(self, path: str, mode: int, fh: int | None = None) -> None:
        _status(self.call("chmod", path, mode))

    def chown(self, path: str, uid: int, gid: int, fh: int | None = None) -> None:
        _status(self.call("chown", path, uid, gid))

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is None:
            _status(self.call("truncate", path, length))
        else:
            _status(self.call("truncate", path, length, self._fh(fh)))

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None,
                fh: int | None = None) -> None:
        if atime_ns is None or mtime_ns is None:
            cur = self.getattr(path)
            if atime_ns is None:
                atime_ns = cur.st_atime_ns
            if mtime_ns is None:
                mtime_ns = cur.st_mtime_ns
        if self.use_ns:
            _status(self.call("utimens", path, (atime_ns, mtime_ns)))
        else:
            _status(self.call("utimens", path, (atime_ns / 1e9, mtime_ns / 1e9)))

    def readlink(self, path: str) -> str:
        target = self.call("readlink", path)
        return os.fsdecode(target)

    def access(self, path: str, mode: int) -> None:
        _status(self.call("access", path, mode))

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        _status(self.call("mknod", path, mode, rdev))

    def mkdir(self, path: str, mode: int) -> None:
        _status(self.call("mkdir", path, mode))

    def unlink(self, path: str) -> None:
        _status(self.call("unlink", path))

    def rmdir(self, path: str) -> None:
        _status(self.call("rmdir", path))

    def symlink(self, path: str, target: str) -> None:
        _status(self.call("symlink", path, target))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags:
            raise FUSEError(errno.EINVAL)     # fusepy's rename takes no flags
        _status(self.call("rename", old, new))

    def link(self, target: str, path: str) -> None:
        _status(self.call("link", path, target))

    def create(self, path: str, mode: int, flags: int) -> int:
        if self.raw_fi:
            fi = RawFileInfo(flags)
            self.call("create", path, mode, fi)
            return self._opened(fi, None)
        return self._opened(None, self.call("create", path, mode))

    def open(self, path: str, flags: int) -> int:
        if self.raw_fi:
            fi = RawFileInfo(flags)
            self.call("open", path, fi)
            return self._opened(fi, None)
        return self._opened(None, self.call("open", path, flags))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = _status(self.call("read", path, size, offset, self._fh(fh)))
        if isinstance(data, str):
            data = data.encode()
        return bytes(data[:size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return int(_status(self.call("write", path, data, offset, self._fh(fh))))

    def flush(self, path: str, fh: int) -> None:
        _status(self.call("flush", path, self._fh(fh)))

    def release(self, path: str, fh: int) -> None:
        try:
            _status(self.call("release", path, self._fh(fh)))
        finally:
            if self.raw_fi:
                with self._fi_lock:
                    self._fis.pop(fh, None)

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        _status(self.call("fsync", path, int(datasync), self._fh(fh)))

    def fallocate(self, path: str, mode: int, offset: int, length: int, fh: int) -> None:
        _status(self.call("fallocate", path, mode, offset, length, self._fh(fh)))

    def opendir(self, path: str) -> int:
        return int(self.call("opendir", path) or 0)

    def readdir(self, path: str, fh: int) -> Iterable[DirEntry]:
        if self.with_offset:
            items = self.call("readdir_with_offset", path, 0, fh)
        else:
            items = self.call("readdir", path, fh)
        for item in items:
            if isinstance(item, (tuple, list)):
                name = item[0]
                raw = item[1] if len(item) > 1 else None
                if isinstance(raw, int):          # mfusepy: just the mode
                    yield (name, EntryAttributes(st_mode=raw)) if raw else name
                elif raw and self._complete(raw):
                    yield (name, _attrs(raw, self.use_ns))
                else:
                    yield name
            else:
                yield item

    @staticmethod
    def _complete(raw: Any) -> bool:
        """Whether a listing's attributes can stand for getattr (else only the name is used)."""
        return not isinstance(raw, Mapping) or ("st_mode" in raw and "st_size" in raw)

    def releasedir(self, path: str, fh: int) -> None:
        _status(self.call("releasedir", path, fh))

    def fsyncdir(self, path: str, datasync: bool, fh: int) -> None:
        _status(self.call("fsyncdir", path, int(datasync), fh))

    def statfs(self, path: str) -> StatvfsData:
        return _statvfs(self.call("statfs", path))

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        _status(self.call("setxattr", path, name, value, flags))

    def getxattr(self, path: str, name: str) -> bytes:
        value = self.call("getxattr", path, name)
        if isinstance(value, str):
            value = value.encode()
        return bytes(value)

    def listxattr(self, path: str) -> list[str]:
        return [os.fsdecode(n) for n in self.call("listxattr", path)]

    def removexattr(self, path: str, name: str) -> None:
        _status(self.call("removexattr", path, name))


#: fusewire path method -> the fusepy method it needs (None in the ops: not implemented)
_NEEDS = {
    "getattr": "getattr", "chmod": "chmod", "chown": "chown", "truncate": "truncate",
    "utimens": "utimens", "readlink": "readlink", "access": "access", "mknod": "mknod",
    "mkdir": "mkdir", "unlink": "unlink", "rmdir": "rmdir", "symlink": "symlink",
    "rename": "rename", "link": "link", "create": "create", "open": "open", "read": "read",
    "write": "write", "flush": "flush", "release": "release", "fsync": "fsync",
    "opendir": "opendir", "readdir": "readdir", "releasedir": "releasedir",
    "fsyncdir": "fsyncdir", "statfs": "statfs", "setxattr": "setxattr",
    "getxattr": "getxattr", "listxattr": "listxattr", "removexattr": "removexattr",
    "init": "init", "destroy": "destroy", "fallocate": "fallocate",
}

#: what the kernel gets when a method is None, if not ENOSYS
_ABSENT_DEFAULTS: dict[str, Callable[..., Any]] = {
    "open": lambda self, path, flags: 0,
    "opendir": lambda self, path: 0,
    "release": lambda self, path, fh: None,
    "releasedir": lambda self, path, fh: None,
    "flush": lambda self, path, fh: None,
    "statfs": lambda self, path: StatvfsData(512, 512, f_namemax=255),
    "init": lambda self: None,
    "destroy": lambda self: None,
}


def _absent(ops: Any, name: str) -> bool:
    """None in the operations object, or a base-class method that is not served."""
    method = getattr(ops, name, None)
    return method is None or getattr(method, "libfuse_ignore", False) is True


def bridge_for(ops: Any, **kw: Any) -> _Bridge:
    """A :class:`fusewire.PathOperations` calling the fusepy operations object ``ops``."""
    missing = {mine for mine, theirs in _NEEDS.items() if _absent(ops, theirs)}
    if not missing:
        return _Bridge(ops, **kw)
    body: dict[str, Any] = {}
    for name in missing:
        if name in _ABSENT_DEFAULTS:
            body[name] = _ABSENT_DEFAULTS[name]
        else:
            body[name] = getattr(PathOperations, name)
    cls = type("_PartialBridge", (_Bridge,), body)
    bridge: _Bridge = cls(ops, **kw)
    return bridge


class _Adapter(PathAdapter):
    """PathAdapter with fusepy's per-open caching flags (raw_fi, direct_io, kernel_cache)."""

    fs: _Bridge

    def file_info(self, fh: int, flags: int) -> FileInfo:
        info = self.fs.last_info
        return FileInfo(fh=fh, direct_io=info.direct_io, keep_cache=info.keep_cache,
                        nonseekable=info.nonseekable)


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes"))


class FUSE:
    """Mount ``operations`` on ``mountpoint`` and serve it (fusepy's entry point).

    Keyword options as in fusepy: ``foreground`` (else the process forks and
    the parent exits once the mount works, like libfuse), ``nothreads``,
    ``debug``, ``raw_fi``, ``encoding``; ``use_ino``, ``hard_remove``,
    ``direct_io``, ``kernel_cache``, ``entry_timeout``, ``attr_timeout``,
    ``negative_timeout``; everything else is a mount option (``allow_other=True``
    -> ``allow_other``, ``fsname="x"`` -> ``fsname=x``, ``ro=True`` -> ``ro``).
    Returns when the filesystem is unmounted (or on SIGINT/SIGTERM).
    """

    def __init__(self, operations: Any, mountpoint: str, raw_fi: bool = False,
                 encoding: str = "utf-8", **kwargs: Any) -> None:
        self.operations = operations
        self.raw_fi = raw_fi
        self.encoding = encoding
        foreground = _flag(kwargs.get("foreground", False))
        debug = _flag(kwargs.get("debug", False))
        options = []
        for key, value in kwargs.items():
            if key in _OWN_OPTIONS or value is False or value is None:
                continue
            options.append(key if value is True else f"{key}={value}")
        fsname = str(kwargs.get("fsname") or os.path.basename(sys.argv[0] or "fusepy"))

        def timeout(key: str, default: float) -> float:
            value = kwargs.get(key)
            return default if value is None else float(value)

        bridge = bridge_for(operations, raw_fi=raw_fi, use_ino=_flag(kwargs.get("use_ino")),
                            hard_remove=_flag(kwargs.get("hard_remove")),
                            timeouts=(timeout("entry_timeout", 1.0),
                                      timeout("attr_timeout", 1.0),
                                      timeout("negative_timeout", 0.0)),
                            direct_io=_flag(kwargs.get("direct_io")),
                            keep_cache=_flag(kwargs.get("kernel_cache")))
        from fusewire.server.loop import Server

        if debug:
            logging.basicConfig(level=logging.DEBUG)
        try:
            server = Server(_Adapter(bridge), mountpoint, options, debug=debug, fsname=fsname)
        except ValueError as exc:
            sys.stderr.write(f"fuse: {exc}\n")
            raise MountError(1) from None
        self.server = server
        try:
            server.mount()
        except OSError as exc:
            sys.stderr.write(f"fuse: cannot mount {mountpoint}: {exc.strerror or exc}\n")
            server.close()
            raise MountError(1) from None
        if not foreground:
            self._daemonize(server)
        _servers.append(server)
        try:
            server.serve()
        finally:
            _servers.remove(server)
            server.close()

    @staticmethod
    def _daemonize(server: Any) -> None:
        """libfuse's daemon mode: the parent exits once the mount answers; the child serves."""
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            ok = os.read(r, 1) == b"1"
            os._exit(0 if ok else 1)
        os.close(r)
        os.setsid()

        def report() -> None:
            ok = server.ready.wait(30)
            try:
                os.write(w, b"1" if ok else b"0")
            finally:
                os.close(w)

        threading.Thread(target=report, daemon=True).start()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)


def install() -> None:
    """Make ``import fuse`` and ``import mfusepy`` give this module."""
    module = sys.modules[__name__]
    sys.modules["fuse"] = module
    sys.modules["mfusepy"] = module


def main(argv: list[str] | None = None) -> int:
    """``python -m fusewire.compat.fusepy SCRIPT ARGS...``: run a fusepy script on fusewire."""
    from fusewire.compat._runner import run_script

    return run_script("fusewire.compat.fusepy", argv, "'import fuse' and 'import mfusepy'",
                      install, (MountError,))


if __name__ == "__main__":
    import fusewire.compat.fusepy as _real

    sys.exit(_real.main())
