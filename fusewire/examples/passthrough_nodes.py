"""Passthrough's building blocks: constants, nodes, handles and handler wrappers.

:class:`PassthroughState` declares the state the core (:mod:`.passthrough`)
and the recovery half (:mod:`.passthrough_recovery`) share; the core's
``__init__`` fills it in.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from fusewire.errors import errno_of
from fusewire.examples.caller import CallerIdentity
from fusewire.examples.passthrough_fdcache import DescriptorCache
from fusewire.types import FUSEError, RequestContext

if TYPE_CHECKING:
    from fusewire.server.processes import SharedTable

_P = ParamSpec("_P")
_R = TypeVar("_R")

_ROOT = 1
_ALLOC_BASE = 1 << 63
_HANDLE_MAGIC = b"FWP1"
_HANDLE_HEAD = struct.Struct("<4sQQQiii")   # magic, nodeid, dev, ino, mount_id, type, size
_O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: chattr(1)'s ioctls (FS_IOC_GETFLAGS/SETFLAGS, their 32-bit forms, FS_IOC_FSGETXATTR/
#: FSSETXATTR): the only ones forwarded to backing files
_FLAG_IOCTLS = frozenset({0x80086601, 0x40086602, 0x80046601, 0x40046602,
                          0x801C581F, 0x401C5820})
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_DIRECT
_REOPEN_STRIP = _OPEN_STRIP | os.O_TRUNC | os.O_TMPFILE
_DOTS = (b".", b"..")

_FH_ARGS = {"read": (1,), "write": (1,), "write_kill_suidgid": (1,), "flush": (1,),
            "fsync": (1,), "fallocate": (1,),
            "lseek": (1,), "copy_file_range": (1, 4), "setattr": (4,), "ioctl": (1,)}


def _errmap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn any OSError escaping ``fn`` into ``FUSEError(errno)``."""
    positions = _FH_ARGS.get(fn.__name__, ())

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        cache = getattr(args[0], "_fdcache", None) if args else None
        if cache is not None:
            cache.enter()
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if e.errno == errno.EBADF and positions:
                self = args[0]
                if isinstance(self, PassthroughState) and self._shared is not None \
                        and self._adopt_handles([args[i] for i in positions if i < len(args)]):
                    try:
                        return fn(*args, **kwargs)
                    except OSError as e2:
                        raise FUSEError(errno_of(e2)) from None
            raise FUSEError(errno_of(e)) from None
        finally:
            if cache is not None:
                cache.leave()

    return wrapper


def _as_caller(fn: Callable[..., _R]) -> Callable[..., _R]:
    """Run the handler with the identity of its ``ctx`` (its last argument)."""

    @functools.wraps(fn)
    def wrapper(self: PassthroughState, *args: object, **kwargs: object) -> _R:
        ctx = kwargs["ctx"] if "ctx" in kwargs else args[-1]
        if not isinstance(ctx, RequestContext):
            raise TypeError(f"{fn.__name__}: the last argument must be a RequestContext")
        identity = self._identity
        switched = identity.enter(ctx)
        try:
            return fn(self, *args, **kwargs)
        finally:
            if switched:
                identity.leave()

    return wrapper


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _check_name(name: bytes) -> None:
    """Refuse names that could leave the directory: ".", "..", "a/b", NUL."""
    if not name or name in _DOTS or b"/" in name or b"\0" in name:
        raise FUSEError(errno.EINVAL)
    if len(name) > 255:
        raise FUSEError(errno.ENAMETOOLONG)


class _Node:
    """An object the kernel holds a reference to.

    ``fd`` is its ``O_PATH`` descriptor; with a descriptor ``cache`` it may
    have been closed while idle (``raw_fd`` -1) and is reopened from
    ``handle`` on first use (see :mod:`.passthrough_fdcache`).
    """

    __slots__ = ("cache", "handle", "key", "kind", "nlookup", "nodeid", "raw_fd")

    def __init__(self, nodeid: int, fd: int, key: tuple[int, int], kind: int,
                 nlookup: int) -> None:
        self.nodeid = nodeid
        self.raw_fd = fd
        self.key = key
        self.kind = kind
        self.nlookup = nlookup
        self.handle: bytes | None = None
        self.cache: DescriptorCache | None = None

    @property
    def fd(self) -> int:
        """The node's descriptor, reopened by handle if the cache closed it."""
        fd = self.raw_fd
        if fd < 0 and self.cache is not None:
            return self.cache.reopen(self)
        return fd

    @fd.setter
    def fd(self, value: int) -> None:
        self.raw_fd = value


class _DirHandle:
    """An open directory with its listing snapshot (index + 1 is the cookie)."""

    __slots__ = ("entries", "fd", "nodeid")

    def __init__(self, fd: int, nodeid: int) -> None:
        self.fd = fd
        self.nodeid = nodeid
        self.entries: list[tuple[bytes, int, int]] | None = None   # name, d_ino, S_IFMT


def _entry_kind(entry: os.DirEntry[str]) -> int:
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)



class PassthroughState:
    """The tables a :class:`~fusewire.examples.passthrough.Passthrough` keeps."""

    source: str
    kernel_passthrough: bool
    #: multi-process: most node descriptors a process keeps beyond those in use
    node_cache = 4096
    _shared: SharedTable | None = None
    #: node descriptors opened lazily by handle (root, one process); None: all kept open
    _fdcache: DescriptorCache | None = None
    _identity: CallerIdentity
    _lock: threading.Lock
    _root_key: tuple[int, int]
    _nodes: dict[int, _Node]
    _by_key: dict[tuple[int, int], _Node]
    _next_alloc: int
    _files: dict[int, int]               # open fd (fh) -> nodeid
    _backing: dict[int, int]             # fh -> kernel backing id
    _inode_backing: dict[int, int]       # inode -> backing id for new opens
    _backing_refs: dict[int, int]        # backing id -> handles using it
    _recoverable: bool
    _dirs: dict[int, _DirHandle]
    _root_mount_id: int

    def _node(self, nodeid: int) -> _Node:
        """The node ``nodeid`` (ESTALE if unknown); the core implements it."""
        raise NotImplementedError

    def _adopt_handles(self, fhs: list[object]) -> bool:
        """Multi-process: copy handles another process opened (the recovery half)."""
        return False
