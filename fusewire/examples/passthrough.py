"""Passthrough: mirror a source directory through FUSE, confined to that tree.

Every object the kernel knows is a node holding an ``O_PATH | O_NOFOLLOW``
file descriptor, obtained by opening one name relative to the parent node's
descriptor.  Names "." and ".." and names containing "/" are refused, and
nothing ever follows a symlink, so no request can reach outside the source
tree.  Operations use the ``*at()`` calls relative to those descriptors, or
reopen the node's inode through ``/proc/self/fd/N`` (that magic link names
the very inode the descriptor holds; for a symlink it names the link itself).

Node ids: ``(st_dev, st_ino)`` of the source object maps to the nodeid.  The
root is 1; an object on the source's device uses its own inode number (so
``stat``, plain READDIR ``d_ino`` and the source all agree, and a successor
process computes the same ids); other objects (submounts, inode number 1 or
>= 2**63) get ids allocated from 2**63 up.  A node's descriptor is closed
when FORGET brings its lookup count to zero.

Acting as the caller: when the server runs as root, every operation that
looks up, creates, opens, changes or removes something in the source runs
with the caller's fsuid, fsgid and supplementary groups and without
capabilities (see :mod:`fusewire.examples.caller`; per thread, so correct
with ``--workers``).  The source filesystem itself checks permissions, sets
ownership, applies set-group-ID inheritance and default ACLs: through the
mount nobody can do more than they could on the source directly, so the
filesystem declares ``checks_permissions`` and ``allow_other`` needs no
``default_permissions``.  Creation happens with a umask of 0 in the serving
thread (the kernel already applied the caller's), so nothing is chowned or
chmodded after the fact.  Without root the server can only act as itself:
then ``checks_permissions`` is false and :meth:`Passthrough.access` compares
the caller's ids with the mode bits.

Locks are the kernel's.  Passthrough implements neither ``getlk``/``setlk``
nor ``flock``, so FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS are not negotiated
and the kernel keeps fcntl record locks, OFD locks and flock locks on the
mount's own inodes, exactly as on a local filesystem: per-process owners,
ranges split and merged, every lock of a process dropped when it closes any
descriptor of the file, the holder's pid in F_GETLK, blocking waits that
sleep in the kernel (interruptible, EDEADLK detection) without holding a
server thread, and no lock lost when a successor takes over the connection.
Keeping the locks in the server instead would mean re-implementing all of
that per lock owner and answering a blocked F_SETLKW or LOCK_EX later,
which the one-reply-per-handler dispatcher cannot do: a waiter would hold
the only serving thread, so the holder could never unlock (the whole mount
hangs).  The cost is that locks are private to this mount: a process that
locks the source files directly, or through another mount, does not see
them (see docs/design.md).

Stable handles (:meth:`Passthrough.handle_of`) carry the nodeid, ``(st_dev,
st_ino)`` and, where the source filesystem supports it, a
``name_to_handle_at`` file handle; :meth:`Passthrough.inode_for_handle`
reopens objects a successor does not know yet with ``open_by_handle_at``
(needs CAP_DAC_READ_SEARCH, i.e. root), verifying ``(st_dev, st_ino)``.
Handles must come from a trusted store: a forged file handle could name any
object of the source filesystem.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import resource
import stat
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from fusewire.errors import UsageError
from fusewire.examples.caller import CallerIdentity
from fusewire.operations import Operations
from fusewire.recovery_api import HandleRecovery
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

if TYPE_CHECKING:
    from fusewire.readdir import ReaddirToken
    from fusewire.server.processes import SharedTable

__all__ = ["Passthrough"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_ROOT = 1
_ALLOC_BASE = 1 << 63
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_STATX_BTIME = 0x800
_MAX_HANDLE_SZ = 128
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

_libc = ctypes.CDLL(None, use_errno=True)


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _os_error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


def _c(ret: int) -> int:
    if ret < 0:
        raise _os_error()
    return ret


def _bind(name: str, argtypes: list[type]) -> Callable[..., int]:
    fn = getattr(_libc, name)
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_renameat2 = _bind("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_uint])
_fchownat = _bind("fchownat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                               ctypes.c_uint32, ctypes.c_int])
_utimensat = _bind("utimensat", [ctypes.c_int, ctypes.c_char_p,
                                 ctypes.POINTER(_Timespec), ctypes.c_int])
_linkat = _bind("linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_int])
_fallocate = _bind("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                 ctypes.c_int64])
_name_to_handle_at = _bind("name_to_handle_at", [ctypes.c_int, ctypes.c_char_p,
                                                 ctypes.c_char_p,
                                                 ctypes.POINTER(ctypes.c_int), ctypes.c_int])
_open_by_handle_at = _bind("open_by_handle_at", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int])
_fdopendir = _libc.fdopendir
_fdopendir.argtypes = [ctypes.c_int]
_fdopendir.restype = ctypes.c_void_p
_readdir_c = _libc.readdir
_readdir_c.argtypes = [ctypes.c_void_p]
_readdir_c.restype = ctypes.POINTER(_Dirent)
_seekdir = _libc.seekdir
_seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_seekdir.restype = None
_closedir = _libc.closedir
_closedir.argtypes = [ctypes.c_void_p]
_statx = _bind("statx", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                         ctypes.c_char_p])


#: handler name -> positions of its fh arguments (multi-process: EBADF may mean
#: "opened by another serving process"; see Passthrough._adopt_handles)
_FH_ARGS = {"read": (1,), "write": (1,), "flush": (1,), "fsync": (1,), "fallocate": (1,),
            "lseek": (1,), "copy_file_range": (1, 4), "setattr": (4,), "ioctl": (1,)}


def _errmap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn any OSError escaping ``fn`` into ``FUSEError(errno)``."""
    positions = _FH_ARGS.get(fn.__name__, ())

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if e.errno == errno.EBADF and positions:
                self = args[0]
                if isinstance(self, Passthrough) and self._shared is not None \
                        and self._adopt_handles([args[i] for i in positions if i < len(args)]):
                    try:
                        return fn(*args, **kwargs)
                    except OSError as e2:
                        raise FUSEError(e2.errno or errno.EIO) from None
            raise FUSEError(e.errno or errno.EIO) from None

    return wrapper


def _as_caller(fn: Callable[..., _R]) -> Callable[..., _R]:
    """Run the handler with the identity of its ``ctx`` (its last argument)."""

    @functools.wraps(fn)
    def wrapper(self: Passthrough, *args: object, **kwargs: object) -> _R:
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
    """An object the kernel holds a reference to."""

    __slots__ = ("fd", "key", "kind", "nlookup", "nodeid")

    def __init__(self, nodeid: int, fd: int, key: tuple[int, int], kind: int,
                 nlookup: int) -> None:
        self.nodeid = nodeid
        self.fd = fd
        self.key = key
        self.kind = kind
        self.nlookup = nlookup


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


class Passthrough(HandleRecovery, Operations):
    """Mirror the directory ``source`` (see the module docstring).

    Recoverable by stable handles (:class:`fusewire.HandleRecovery`).
    """

    #: state lives in the source tree: several serving processes may share it
    #: (``Server(processes=N)``; see "Multi-process serving" below)
    multiprocess_safe = True
    #: multi-process: most node descriptors a process keeps beyond those in use
    node_cache = 4096
    _shared: SharedTable | None = None

    def __init__(self, source: str, *, entry_timeout: float = 0.0,
                 attr_timeout: float = 0.0, kernel_passthrough: bool = False) -> None:
        self.source = source
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.kernel_passthrough = kernel_passthrough
        self.enable_passthrough = kernel_passthrough
        self._identity = CallerIdentity()
        #: the source filesystem checks every request as its caller (root only)
        self.checks_permissions = self._identity.enabled
        self._lock = threading.Lock()
        fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._root_key = (st.st_dev, st.st_ino)
        root = _Node(_ROOT, fd, self._root_key, stat.S_IFDIR, 1)
        self._nodes: dict[int, _Node] = {_ROOT: root}
        self._by_key: dict[tuple[int, int], _Node] = {self._root_key: root}
        self._next_alloc = _ALLOC_BASE
        self._files: dict[int, int] = {}            # open fd (fh) -> nodeid
        self._backing: dict[int, int] = {}          # fh -> kernel backing id
        # one backing id per inode, shared by all its opens (the kernel refuses a
        # second, different backing file for an inode with open files: EIO)
        self._inode_backing: dict[int, int] = {}    # inode -> backing id for new opens
        self._backing_refs: dict[int, int] = {}     # backing id -> handles using it
        self._recoverable = False
        self._dirs: dict[int, _DirHandle] = {}
        self._root_mount_id = self._mount_id(fd)

    # -- node table ----------------------------------------------------------

    def _nodeid_for(self, key: tuple[int, int]) -> int:
        if key == self._root_key:
            return _ROOT
        dev, ino = key
        if dev == self._root_key[0] and 1 < ino < _ALLOC_BASE:
            return ino
        nodeid = self._next_alloc
        self._next_alloc += 1
        return nodeid

    def _node(self, nodeid: int) -> _Node:
        node = self._nodes.get(nodeid)
        if node is None:
            if self._shared is not None:
                return self._shared_node(nodeid)
            raise FUSEError(errno.ESTALE)
        return node

    def _register(self, fd: int, st: os.stat_result, count: int) -> _Node:
        """Adopt ``fd`` (an O_PATH descriptor) as the node for its inode."""
        key = (st.st_dev, st.st_ino)
        shared = self._shared
        if shared is not None and key not in self._by_key:
            self._publish(fd, key)
        with self._lock:
            node = self._by_key.get(key)
            if node is not None:
                node.nlookup += count
            else:
                nodeid = self._nodeid_for(key) if shared is None else self._shared_id(key)
                node = _Node(nodeid, fd, key, stat.S_IFMT(st.st_mode), count)
                self._nodes[nodeid] = node
                self._by_key[key] = node
                fd = -1
        if fd >= 0:
            os.close(fd)
        return node

    def _unref(self, node: _Node, count: int) -> None:
        with self._lock:
            node.nlookup -= count
            if node.nlookup > 0 or node.nodeid == _ROOT:
                return
            if self._nodes.get(node.nodeid) is node:
                del self._nodes[node.nodeid]
                del self._by_key[node.key]
        os.close(node.fd)

    def _lookup(self, parent: _Node, name: bytes, count: int) -> tuple[_Node, os.stat_result]:
        _check_name(name)
        fd = os.open(name, _O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        return self._register(fd, st, count), st

    def _attr(self, nodeid: int, st: os.stat_result) -> EntryAttributes:
        return EntryAttributes.from_stat(st, st_ino=nodeid, entry_timeout=self.entry_timeout,
                                         attr_timeout=self.attr_timeout)

    def _plain_ino(self, dev: int, ino: int) -> int:
        """The d_ino for a plain READDIR entry, without registering a node."""
        key = (dev, ino)
        node = self._by_key.get(key)
        if node is not None:
            return node.nodeid
        if key == self._root_key:
            return _ROOT
        return ino

    # -- names and attributes ----------------------------------------------------

    @_errmap
    @_as_caller
    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        """Open ``name`` under the parent's descriptor (no symlink following)."""
        if self._shared is not None and len(self._nodes) > self.node_cache:
            self._trim()
        node, st = self._lookup(self._node(parent_inode), name, 1)
        return self._attr(node.nodeid, st)

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Drop lookup counts; close node descriptors that reach zero."""
        for nodeid, count in inode_list:
            node = self._nodes.get(nodeid)
            if node is not None:
                try:
                    self._unref(node, count)
                except OSError:
                    pass
        if self._shared is not None:
            self._sweep()
            self._trim()

    @_errmap
    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """fstat the node's descriptor."""
        return self._attr(inode, os.fstat(self._node(inode).fd))

    @_errmap
    def statx(self, inode: int, fh: int | None, flags: int, mask: int,
              ctx: RequestContext) -> EntryAttributes:
        """Attributes plus the birth time from statx(2) where the source has one."""
        node = self._node(inode)
        attr = self._attr(inode, os.fstat(node.fd))
        buf = ctypes.create_string_buffer(256)
        if _statx(node.fd, b"", _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf) == 0:
            (got,) = struct.unpack_from("<I", buf.raw, 0)
            if got & _STATX_BTIME:
                sec, nsec = struct.unpack_from("<qI", buf.raw, 80)
                attr.st_birthtime_ns = sec * 10**9 + nsec
        return attr

    @_errmap
    @_as_caller
    def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                fh: int | None, ctx: RequestContext) -> EntryAttributes:
        """chmod, chown, truncate and utimes on the source object."""
        node = self._node(inode)
        path = _proc(node.fd)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else 0xFFFFFFFF
            gid = attr.st_gid if fields.update_gid else 0xFFFFFFFF
            # before chmod: chown clears set-id bits a chmod in the same call sets
            _c(_fchownat(node.fd, b"", uid, gid, _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW))
        if fields.update_mode:
            if node.kind == stat.S_IFLNK:
                raise FUSEError(errno.EOPNOTSUPP)
            self._chmod(node, fh, attr.st_mode & 0o7777)
        if fields.update_size:
            if node.kind == stat.S_IFDIR:
                raise FUSEError(errno.EISDIR)
            if node.kind != stat.S_IFREG:
                raise FUSEError(errno.EINVAL)
            if fh is not None:
                os.ftruncate(fh, attr.st_size)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
            if fields.kill_suidgid:
                self._kill_suidgid(node)
        if fields.update_atime or fields.update_mtime:
            times = (_Timespec * 2)()
            for i, (want, now, ns) in enumerate((
                    (fields.update_atime, fields.atime_now, attr.st_atime_ns),
                    (fields.update_mtime, fields.mtime_now, attr.st_mtime_ns))):
                if not want:
                    times[i].tv_sec, times[i].tv_nsec = 0, _UTIME_OMIT
                elif now:
                    times[i].tv_sec, times[i].tv_nsec = 0, _UTIME_NOW
                else:
                    times[i].tv_sec, times[i].tv_nsec = divmod(ns, 10**9)
            _c(_utimensat(node.fd, b"", times, _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW))
        return self._attr(inode, os.fstat(node.fd))

    def _chmod(self, node: _Node, fh: int | None, mode: int) -> None:
        """chmod as the caller; dropping only set-ID bits is done in any case.

        The kernel clears set-user-ID (and group-executable set-group-ID) bits
        before a write or truncate by someone who may write the file but does
        not own it; it sends that as a SETATTR of the mode, which the caller
        could not do on the source.  Removing privilege is always allowed.
        """
        try:
            if fh is not None:
                os.fchmod(fh, mode)
            else:
                os.chmod(_proc(node.fd), mode)
        except PermissionError:
            old = os.fstat(node.fd).st_mode & 0o7777
            setid = stat.S_ISUID | stat.S_ISGID
            if mode == old or mode & ~old or (mode | setid) != (old | setid) \
                    or not os.access(_proc(node.fd), os.W_OK, effective_ids=True):
                raise
            with self._identity.as_server():
                os.chmod(_proc(node.fd), mode)

    def _kill_suidgid(self, node: _Node) -> None:
        mode = os.fstat(node.fd).st_mode
        new = mode & ~stat.S_ISUID
        if mode & stat.S_IXGRP:
            new &= ~stat.S_ISGID
        if new != mode:
            self._chmod(node, None, new & 0o7777)

    @_errmap
    def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        """readlinkat(fd, "") on the symlink's own descriptor."""
        return os.readlink(b"", dir_fd=self._node(inode).fd)

    @_errmap
    def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        """faccessat(AT_EACCESS) as the caller; without root, the mode bits by hand."""
        node = self._node(inode)
        want = mode & 7
        if self._identity.enabled:
            if node.kind == stat.S_IFLNK:
                return True
            with self._identity.acting_as(ctx):
                return os.access(_proc(node.fd), want, effective_ids=True)
        st = os.fstat(node.fd)
        if want & os.W_OK and node.kind != stat.S_IFLNK \
                and not os.access(_proc(node.fd), os.W_OK):
            return False
        if ctx.uid == 0:
            return not (want & os.X_OK and not stat.S_ISDIR(st.st_mode)
                        and not st.st_mode & 0o111)
        if ctx.uid == st.st_uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in ctx.groups:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return want & ~bits == 0

    # -- creating and removing names ---------------------------------------------

    def _created(self, parent: _Node, name: bytes) -> EntryAttributes:
        """Look up a just-created ``name`` and count one lookup (nothing is changed).

        The object was created as the caller with a umask of 0, so owner,
        group and mode are already right; if someone swapped another object
        onto the name meanwhile, this reports that one, as a LOOKUP would.
        """
        node, st = self._lookup(parent, name, 1)
        return self._attr(node.nodeid, st)

    @_errmap
    @_as_caller
    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: RequestContext) -> EntryAttributes:
        """mknodat relative to the parent."""
        parent = self._node(parent_inode)
        _check_name(name)
        with self._identity.no_umask():
            os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._created(parent, name)

    @_errmap
    @_as_caller
    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: RequestContext) -> EntryAttributes:
        """mkdirat relative to the parent."""
        parent = self._node(parent_inode)
        _check_name(name)
        with self._identity.no_umask():
            os.mkdir(name, mode & 0o7777, dir_fd=parent.fd)
        return self._created(parent, name)

    @_errmap
    @_as_caller
    def symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: RequestContext) -> EntryAttributes:
        """symlinkat relative to the parent (the target is stored, never followed)."""
        parent = self._node(parent_inode)
        _check_name(name)
        os.symlink(target, name, dir_fd=parent.fd)
        return self._created(parent, name)

    @_errmap
    @_as_caller
    def link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: RequestContext) -> EntryAttributes:
        """linkat of the node's own descriptor (AT_EMPTY_PATH, else via /proc)."""
        node = self._node(inode)
        parent = self._node(new_parent_inode)
        _check_name(new_name)
        if node.kind == stat.S_IFDIR:
            raise FUSEError(errno.EPERM)
        if _linkat(node.fd, b"", parent.fd, new_name, _AT_EMPTY_PATH) < 0:
            code = ctypes.get_errno()
            if code not in (errno.ENOENT, errno.EPERM) or node.kind == stat.S_IFLNK:
                raise OSError(code, os.strerror(code))
            os.link(_proc(node.fd), new_name, dst_dir_fd=parent.fd, follow_symlinks=True)
        new, st = self._lookup(parent, new_name, 1)
        return self._attr(new.nodeid, st)

    @_errmap
    @_as_caller
    def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """unlinkat relative to the parent."""
        _check_name(name)
        os.unlink(name, dir_fd=self._node(parent_inode).fd)

    @_errmap
    @_as_caller
    def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """unlinkat(AT_REMOVEDIR) relative to the parent."""
        _check_name(name)
        os.rmdir(name, dir_fd=self._node(parent_inode).fd)

    @_errmap
    @_as_caller
    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, flags: int, ctx: RequestContext) -> None:
        """renameat2 with the kernel's flags."""
        _check_name(name_old)
        _check_name(name_new)
        old = self._node(parent_inode_old)
        new = self._node(parent_inode_new)
        if flags:
            _c(_renameat2(old.fd, name_old, new.fd, name_new, flags))
        else:
            os.rename(name_old, name_new, src_dir_fd=old.fd, dst_dir_fd=new.fd)

    # -- files -----------------------------------------------------------------

    def _file_info(self, fd: int, nodeid: int, flags: int = 0) -> FileInfo:
        fd = self._place(fd) if self._shared is None else self._shared_place(
            fd, nodeid, stat.S_IFREG, flags)
        with self._lock:
            self._files[fd] = nodeid
        if self.kernel_passthrough and self.notifier is not None:
            with self._lock:
                backing_id = self._inode_backing.get(nodeid)
                if backing_id is not None:
                    self._backing[fd] = backing_id
                    self._backing_refs[backing_id] += 1
            if backing_id is None:
                try:
                    with self._identity.as_server():     # the ioctl needs CAP_SYS_ADMIN
                        backing_id = self.notifier.backing_open(fd)
                except (OSError, FUSEError):
                    return FileInfo(fh=fd)        # the kernel refused: serve I/O ourselves
                with self._lock:
                    self._backing[fd] = backing_id
                    self._backing_refs[backing_id] = 1
                    self._inode_backing[nodeid] = backing_id
            return FileInfo(fh=fd, passthrough=True, backing_id=backing_id)
        return FileInfo(fh=fd)

    @_errmap
    @_as_caller
    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        """Reopen the node's inode through /proc/self/fd with the caller's flags."""
        node = self._node(inode)
        if node.kind == stat.S_IFDIR:
            raise FUSEError(errno.EISDIR)
        if node.kind == stat.S_IFLNK:
            raise FUSEError(errno.ELOOP)
        if node.kind != stat.S_IFREG:
            raise FUSEError(errno.EINVAL)      # the kernel opens special files itself
        fd = os.open(_proc(node.fd), (flags & ~_OPEN_STRIP) | os.O_CLOEXEC)
        return self._file_info(fd, inode, flags)

    @_errmap
    @_as_caller
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """openat(O_CREAT | O_NOFOLLOW) relative to the parent."""
        parent = self._node(parent_inode)
        _check_name(name)
        base = (flags & ~_OPEN_STRIP) | os.O_NOFOLLOW | os.O_CLOEXEC
        created = True
        try:
            with self._identity.no_umask() as exact:
                fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode & 0o7777,
                             dir_fd=parent.fd)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = os.open(name, base, dir_fd=parent.fd)
            created = False
        try:
            return self._finish_create(fd, mode, created and not exact, flags)
        except BaseException:
            os.close(fd)
            raise

    def _finish_create(self, fd: int, mode: int, fix_mode: bool,
                       flags: int = 0) -> tuple[FileInfo, EntryAttributes]:
        """Register the created file; ``fix_mode``: fchmod what the umask removed.

        The only adjustment is made on ``fd``, the descriptor of the object
        this request created, never by name.
        """
        if fix_mode and os.fstat(fd).st_mode & 0o777 != mode & 0o777:
            os.fchmod(fd, mode & 0o7777)
        pfd = os.open(_proc(fd), os.O_PATH | os.O_CLOEXEC)
        try:
            st = os.fstat(pfd)
        except OSError:
            os.close(pfd)
            raise
        node = self._register(pfd, st, 1)
        try:
            attr = self._attr(node.nodeid, os.fstat(node.fd))
        except OSError:
            self._unref(node, 1)
            raise
        return self._file_info(fd, node.nodeid, flags), attr

    @_errmap
    @_as_caller
    def tmpfile(self, parent_inode: int, mode: int, flags: int,
                ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """openat(".", O_TMPFILE) in the parent directory."""
        parent = self._node(parent_inode)
        oflags = os.O_TMPFILE | (flags & (os.O_ACCMODE | os.O_EXCL | os.O_APPEND)) \
            | os.O_CLOEXEC
        with self._identity.no_umask() as exact:
            fd = os.open(".", oflags, mode & 0o7777, dir_fd=parent.fd)
        try:
            return self._finish_create(fd, mode, not exact, flags)
        except BaseException:
            os.close(fd)
            raise

    @_errmap
    def read(self, fh: int, off: int, size: int) -> bytes:
        """pread."""
        return os.pread(fh, size, off)

    @_errmap
    def write(self, fh: int, off: int, buf: memoryview) -> int:
        """pwrite (an O_APPEND handle appends, as pwrite does on Linux)."""
        return os.pwrite(fh, buf, off)

    @_errmap
    def flush(self, fh: int, lock_owner: int = 0) -> None:
        """close(dup(fh)): report close-time errors (locks are the kernel's)."""
        os.close(os.dup(fh))

    @_errmap
    def release(self, fh: int) -> None:
        """Close the handle (and its kernel backing id)."""
        if self._shared is not None:
            self._shared_release(fh, dirs=False)
            return
        with self._lock:
            backing_id = self._backing.pop(fh, None)
            nodeid = self._files.pop(fh, None)
            known = nodeid is not None
            if backing_id is not None:
                left = self._backing_refs.get(backing_id, 1) - 1
                if left > 0:
                    self._backing_refs[backing_id] = left
                    backing_id = None           # other opens still use it
                else:
                    self._backing_refs.pop(backing_id, None)
                    if self._inode_backing.get(nodeid or 0) == backing_id:
                        del self._inode_backing[nodeid or 0]
        if backing_id is not None and self.notifier is not None:
            try:
                self.notifier.backing_close(backing_id)
            except (OSError, FUSEError):
                pass
        if known:
            os.close(fh)

    @_errmap
    def fsync(self, fh: int, datasync: bool) -> None:
        """fsync / fdatasync."""
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    @_errmap
    def fallocate(self, fh: int, mode: int, offset: int, length: int,
                  ctx: RequestContext) -> None:
        """fallocate(2) with the kernel's mode bits."""
        if _fallocate(fh, mode, offset, length) < 0:
            code = ctypes.get_errno()
            if mode == 0 and code == errno.EOPNOTSUPP:
                os.posix_fallocate(fh, offset, length)
                return
            raise OSError(code, os.strerror(code))

    @_errmap
    def lseek(self, fh: int, offset: int, whence: int, ctx: RequestContext) -> int:
        """lseek (SEEK_DATA / SEEK_HOLE answered by the source filesystem)."""
        return os.lseek(fh, offset, whence)

    @_errmap
    def copy_file_range(self, fh_in: int, off_in: int, inode_out: int, fh_out: int,
                        off_out: int, length: int, flags: int,
                        ctx: RequestContext) -> int:
        """copy_file_range(2) between the two handles."""
        if flags:
            raise FUSEError(errno.EINVAL)
        return os.copy_file_range(fh_in, fh_out, length, off_in, off_out)

    @_errmap
    def ioctl(self, fh: int, cmd: int, arg: int, in_data: bytes, out_size: int,
              flags: int, ctx: RequestContext) -> tuple[int, bytes]:
        """``chattr``/``lsattr`` flags, forwarded to the backing file (others: ENOTTY)."""
        if cmd not in _FLAG_IOCTLS:
            raise FUSEError(errno.ENOTTY)
        buf = bytearray(max(out_size, len(in_data), 32))
        buf[:len(in_data)] = in_data
        result = fcntl.ioctl(fh, cmd, buf)   # fh: the file's (or directory's) own fd
        return int(result), bytes(buf[:out_size])

    # -- directories -----------------------------------------------------------

    @_errmap
    @_as_caller
    def opendir(self, inode: int, ctx: RequestContext) -> int:
        """Open the directory for reading; the descriptor number is the handle."""
        node = self._node(inode)
        # through /proc: read permission on the directory itself, as opendir(3)
        fd = os.open(_proc(node.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = self._place(fd) if self._shared is None else self._shared_place(
            fd, inode, stat.S_IFDIR, os.O_RDONLY | os.O_DIRECTORY)
        with self._lock:
            self._dirs[fd] = _DirHandle(fd, inode)
        return fd

    def _snapshot(self, d: _DirHandle) -> list[tuple[bytes, int, int]]:
        st = os.fstat(d.fd)
        entries = [(b".", st.st_ino, stat.S_IFDIR), (b"..", 0, stat.S_IFDIR)]
        with os.scandir(d.fd) as it:
            for entry in it:
                try:
                    kind = _entry_kind(entry)
                except OSError:
                    continue            # vanished meanwhile
                entries.append((os.fsencode(entry.name), entry.inode(), kind))
        return entries

    @_errmap
    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        """List a snapshot taken at offset 0; cookies are index + 1."""
        if self._shared is not None and len(self._nodes) > self.node_cache:
            self._trim()
        d = self._dirs.get(fh)
        if d is None:
            d = self._shared_dir(fh)
        if self._shared is not None:
            self._readdir_cookies(d, start_id, token)
            return
        if start_id == 0 or d.entries is None:
            d.entries = self._snapshot(d)
        plus = bool(getattr(token, "plus", False))
        dev = os.fstat(d.fd).st_dev
        parent = self._node(d.nodeid)
        for i in range(start_id, len(d.entries)):
            name, ino, kind = d.entries[i]
            if name in _DOTS:
                nodeid = d.nodeid if name == b"." or d.nodeid == _ROOT else 0
                attr = EntryAttributes(nodeid or self._dotdot_ino(d), st_mode=kind)
                if not token.add(name, attr, i + 1):
                    return
                continue
            if not plus:
                if not token.add_name(name, self._plain_ino(dev, ino), kind, i + 1):
                    return
                continue
            try:
                node, st = self._lookup(parent, name, 0)
            except (OSError, FUSEError):
                continue                # removed since the snapshot
            if token.add(name, self._attr(node.nodeid, st), i + 1):
                with self._lock:
                    node.nlookup += 1
            else:
                self._unref(node, 0)
                return

    def _readdir_cookies(self, d: _DirHandle, start_id: int, token: ReaddirToken) -> None:
        """List from the source's own directory offsets (multi-process serving).

        Any process can resume a listing another one started, so the cookies
        are the source filesystem's ``d_off`` values, not indexes into one
        process's snapshot; a directory changed meanwhile behaves as on the
        source (tmpfs and ext4 keep offsets stable under deletion).
        """
        plus = bool(getattr(token, "plus", False))
        dev = os.fstat(d.fd).st_dev
        parent = self._node(d.nodeid)
        dirp = _fdopendir(os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                  dir_fd=d.fd))
        if not dirp:
            raise _os_error()
        try:
            if start_id:
                _seekdir(dirp, start_id)
            while True:
                ctypes.set_errno(0)
                ent = _readdir_c(dirp)
                if not ent:
                    if ctypes.get_errno():
                        raise _os_error()
                    return
                e = ent.contents
                name, ino, off = e.d_name, int(e.d_ino), int(e.d_off)
                kind = (e.d_type << 12) if e.d_type else 0
                if name in _DOTS:
                    nodeid = d.nodeid if name == b"." or d.nodeid == _ROOT else 0
                    attr = EntryAttributes(nodeid or self._dotdot_ino(d), st_mode=stat.S_IFDIR)
                    if not token.add(name, attr, off):
                        return
                    continue
                if not plus:
                    if not kind:
                        try:
                            kind = stat.S_IFMT(os.stat(name, dir_fd=d.fd,
                                                       follow_symlinks=False).st_mode)
                        except OSError:
                            continue
                    if not token.add_name(name, self._plain_ino(dev, ino), kind, off):
                        return
                    continue
                try:
                    node, st = self._lookup(parent, name, 0)
                except (OSError, FUSEError):
                    continue
                if token.add(name, self._attr(node.nodeid, st), off):
                    with self._lock:
                        node.nlookup += 1
                else:
                    self._unref(node, 0)
                    return
        finally:
            _closedir(dirp)

    def _dotdot_ino(self, d: _DirHandle) -> int:
        try:
            st = os.stat("..", dir_fd=d.fd, follow_symlinks=False)
        except OSError:
            return _ROOT
        return self._plain_ino(st.st_dev, st.st_ino)

    @_errmap
    def releasedir(self, fh: int) -> None:
        """Close the directory descriptor."""
        if self._shared is not None:
            self._shared_release(fh, dirs=True)
            return
        with self._lock:
            d = self._dirs.pop(fh, None)
        if d is not None:
            os.close(d.fd)

    @_errmap
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        """fsync the directory."""
        d = self._dirs.get(fh)
        if d is None:
            d = self._shared_dir(fh)
        os.fsync(d.fd)

    # -- filesystem-wide ---------------------------------------------------------

    @_errmap
    def statfs(self, ctx: RequestContext) -> StatvfsData:
        """fstatvfs of the source root."""
        s = os.fstatvfs(self._nodes[_ROOT].fd)
        return StatvfsData(f_bsize=s.f_bsize, f_frsize=s.f_frsize, f_blocks=s.f_blocks,
                           f_bfree=s.f_bfree, f_bavail=s.f_bavail, f_files=s.f_files,
                           f_ffree=s.f_ffree, f_favail=s.f_favail, f_namemax=s.f_namemax)

    # -- extended attributes ------------------------------------------------------
    # /proc/self/fd/N resolves to the node's own inode (for a symlink, the link).

    @_errmap
    @_as_caller
    def setxattr(self, inode: int, name: bytes, value: bytes, flags: int,
                 ctx: RequestContext) -> None:
        """setxattr on the node's inode."""
        os.setxattr(_proc(self._node(inode).fd), name, value, flags)

    @_errmap
    @_as_caller
    def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        """getxattr on the node's inode."""
        return os.getxattr(_proc(self._node(inode).fd), name)

    @_errmap
    @_as_caller
    def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        """listxattr on the node's inode."""
        return [os.fsencode(n) for n in os.listxattr(_proc(self._node(inode).fd))]

    @_errmap
    @_as_caller
    def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        """removexattr on the node's inode."""
        os.removexattr(_proc(self._node(inode).fd), name)

    # -- stable identity -----------------------------------------------------------

    @staticmethod
    def _mount_id(fd: int) -> int:
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
        struct.pack_into("<I", buf, 0, _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) < 0:
            return -1
        return mount_id.value

    @_errmap
    def handle_of(self, inode: int) -> bytes | None:
        """nodeid, (st_dev, st_ino) and the source's file handle, if it has one."""
        node = self._nodes.get(inode)
        if node is None:
            return None
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
        struct.pack_into("<I", buf, 0, _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        fh_type, fh = 0, b""
        if _name_to_handle_at(node.fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) == 0:
            size, fh_type = struct.unpack_from("<Ii", buf.raw, 0)
            fh = buf.raw[8:8 + size]
        return _HANDLE_HEAD.pack(_HANDLE_MAGIC, node.nodeid, node.key[0], node.key[1],
                                 mount_id.value, fh_type, len(fh)) + fh

    @_errmap
    def inode_for_handle(self, handle: bytes) -> int:
        """Resolve a :meth:`handle_of` handle; ESTALE if the object is gone.

        A node already in the table is returned as is.  Otherwise (a successor
        process) the object is reopened with open_by_handle_at and registered
        under the recorded nodeid with a lookup count of 1, so the kernel's
        eventual FORGET releases it.
        """
        mount_fd = self._mount_fd()
        try:
            return self._revive(handle, mount_fd, 1)
        finally:
            os.close(mount_fd)

    def _mount_fd(self) -> int:
        # open_by_handle_at's mount descriptor may not be an O_PATH one
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                       dir_fd=self._nodes[_ROOT].fd)

    def _revive(self, handle: bytes, mount_fd: int, count: int) -> int:
        """The nodeid of ``handle``, registering it with ``count`` lookups if it is new."""
        if len(handle) < _HANDLE_HEAD.size:
            raise FUSEError(errno.ESTALE)
        magic, nodeid, dev, ino, mount_id, fh_type, size = _HANDLE_HEAD.unpack_from(handle)
        nodeid = int(nodeid)
        fh = handle[_HANDLE_HEAD.size:]
        if magic != _HANDLE_MAGIC or len(fh) != size or nodeid == 0:
            raise FUSEError(errno.ESTALE)
        key = (dev, ino)
        with self._lock:
            node = self._by_key.get(key)
            if node is not None:
                if node.nodeid != nodeid:
                    raise FUSEError(errno.ESTALE)
                return nodeid
            if nodeid in self._nodes or not fh or mount_id != self._root_mount_id:
                raise FUSEError(errno.ESTALE)
        buf = struct.pack("<Ii", size, fh_type) + fh
        # open_by_handle_at needs CAP_DAC_READ_SEARCH, which a handler running
        # as a non-root caller has dropped (caller.py): revive as the server
        with self._identity.as_server():
            fd = _open_by_handle_at(mount_fd, buf, os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            raise FUSEError(errno.ESTALE)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != key:
                raise FUSEError(errno.ESTALE)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            node = self._by_key.get(key)
            if node is None and nodeid not in self._nodes:
                node = _Node(nodeid, fd, key, stat.S_IFMT(st.st_mode), count)
                self._nodes[nodeid] = node
                self._by_key[key] = node
                if nodeid >= self._next_alloc:
                    self._next_alloc = nodeid + 1
                return nodeid
        os.close(fd)
        if node is not None and node.nodeid == nodeid:
            return nodeid
        raise FUSEError(errno.ESTALE)

    # -- crash recovery (fusewire.recovery, "handles" mode) -------------------------
    # The kernel keeps using the nodeids and fh values a dead server handed out.
    # Nodeids are revived from their handle_of() handles; fh values are
    # descriptor numbers, so a successor reopens each open file at the very
    # same number.  prepare_recovery() keeps open files and directories at
    # numbers >= half the descriptor limit, far above what a process opens at
    # start-up, so those numbers are free in the successor.

    _fh_base = 0      # 0: handles are whatever number open() returns

    def prepare_recovery(self) -> None:
        """Place open-file and directory handles at high descriptor numbers (see above)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(1 << 20, hard if hard != resource.RLIM_INFINITY else 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (OSError, ValueError):
                pass
        limit = soft if soft != resource.RLIM_INFINITY else want
        self._fh_base = max(64, limit // 2)
        self._recoverable = True

    def import_backing(self, handles: Mapping[int, tuple[int, int]]) -> None:
        """Adopt the kernel backing ids of reopened handles: ``fh -> (inode, id)``."""
        with self._lock:
            for fh, (inode, backing_id) in handles.items():
                if fh not in self._files:
                    continue
                self._backing[fh] = backing_id
                self._backing_refs[backing_id] = self._backing_refs.get(backing_id, 0) + 1
                self._inode_backing.setdefault(inode, backing_id)

    def _place(self, fd: int) -> int:
        """``fd`` moved to a number >= the handle base (unchanged without one)."""
        base = self._fh_base
        if not base or fd >= base:
            return fd
        try:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base)
        except OSError:
            return fd               # nothing free up there: keep the low number
        os.close(fd)
        return new

    @_errmap
    def entry_identity(self, parent_inode: int, name: bytes) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of ``name`` in the directory, None if absent (no lookup)."""
        _check_name(name)
        try:
            st = os.stat(name, dir_fd=self._node(parent_inode).fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def import_nodes(self, nodes: Mapping[int, tuple[bytes, int]]) -> list[int]:
        """Make the node table ``nodeid -> (handle, lookup count)``; return what is lost.

        Nodes already known keep their descriptor and take the given count;
        the others are reopened by handle (open_by_handle_at).  Known nodes
        missing from ``nodes`` and used by no open handle are dropped.
        """
        lost = []
        mount_fd = self._mount_fd()
        try:
            for nodeid, (handle, count) in nodes.items():
                node = self._nodes.get(nodeid)
                if node is None:
                    try:
                        if self._revive(handle, mount_fd, count) == nodeid:
                            continue
                    except (OSError, FUSEError):
                        pass
                    lost.append(nodeid)
                else:
                    node.nlookup = count
        finally:
            os.close(mount_fd)
        with self._lock:
            used = set(self._files.values()) | {d.nodeid for d in self._dirs.values()}
            drop = [n for nid, n in self._nodes.items()
                    if nid != _ROOT and nid not in nodes and nid not in used]
            for n in drop:
                del self._nodes[n.nodeid]
                del self._by_key[n.key]
        for n in drop:
            os.close(n.fd)
        return lost

    def _claim_number(self, number: int) -> None:
        """Make descriptor ``number`` free, moving a node descriptor of ours out of the way."""
        try:
            fcntl.fcntl(number, fcntl.F_GETFD)
        except OSError:
            return                      # free
        with self._lock:
            for node in self._nodes.values():
                if node.fd == number:
                    node.fd = fcntl.fcntl(number, fcntl.F_DUPFD_CLOEXEC, 0)
                    os.close(number)
                    return
        raise FUSEError(errno.EBUSY)

    def reopen_handle(self, fh: int, inode: int, flags: int) -> None:
        """Make ``fh``, an OPEN/CREATE/OPENDIR handle of a previous process, valid here.

        The node's inode is reopened with the recorded open flags (less those
        that act only at creation: O_CREAT, O_EXCL, O_TRUNC) and placed at
        descriptor number ``fh``.  If it cannot be reopened, ``fh`` is still
        reserved, by an O_PATH descriptor that fails every I/O with EBADF, so
        the number is never reused for another file while the kernel holds it;
        FUSEError is raised after that.
        """
        self._claim_number(fh)
        node = self._nodes.get(inode)
        if node is not None:
            is_dir = node.kind == stat.S_IFDIR
        else:       # O_TMPFILE includes the O_DIRECTORY bit
            is_dir = flags & os.O_TMPFILE == os.O_DIRECTORY
        fd = -1
        err = errno.ESTALE
        if node is not None:
            try:
                if is_dir:
                    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                 dir_fd=node.fd)
                else:
                    fd = os.open(_proc(node.fd), (flags & ~_REOPEN_STRIP) | os.O_CLOEXEC)
            except OSError as exc:
                err = exc.errno or errno.EIO
        failed = fd < 0
        if failed:
            fd = os.open(_proc(self._nodes[_ROOT].fd), os.O_PATH | os.O_CLOEXEC)
        if fd != fh:
            os.dup2(fd, fh, inheritable=False)
            os.close(fd)
        with self._lock:
            if is_dir:
                self._dirs[fh] = _DirHandle(fh, inode)
            else:
                self._files[fh] = inode
        if failed:
            raise FUSEError(err)

    # -- multi-process serving (fusewire.server.processes) ---------------------------
    # Each serving process has its own node table and descriptors.  A node it
    # has not seen is revived from the handle another process published in the
    # shared node log (before that process replied to the kernel); an fh it does
    # not hold is copied from the opener with pidfd_getfd and placed at the same
    # descriptor number.  Lookup counts are per process and only approximate the
    # kernel's: FORGET drops what this process holds, and the node cache is
    # trimmed to ``node_cache``, since any node can be revived again.

    def check_multiprocess(self) -> None:
        """Raise UsageError (one line) if this process cannot serve with several processes."""
        if not hasattr(os, "pidfd_open"):
            raise UsageError("passthrough --processes needs pidfd_open (Linux 5.3, Python 3.9)")
        if self.kernel_passthrough:
            # the kernel takes one backing file per inode; the ids would have to be
            # shared per inode across the processes (docs/design.md)
            raise UsageError("passthrough: -o kernel_passthrough cannot be combined with "
                             "--processes yet")
        root = self._nodes[_ROOT]
        handle = self._handle_bytes(root.fd, root.key)
        if handle is None:
            raise UsageError(f"passthrough --processes: {self.source} has no file handles "
                             "(name_to_handle_at), so processes cannot share its nodes")
        mount_fd = self._mount_fd()
        try:
            fh_type, size = struct.unpack_from("<ii", handle, _HANDLE_HEAD.size - 8)
            buf = struct.pack("<Ii", size, fh_type) + handle[_HANDLE_HEAD.size:]
            fd = _open_by_handle_at(mount_fd, buf, os.O_PATH | os.O_CLOEXEC)
            if fd < 0:
                raise UsageError("passthrough --processes needs open_by_handle_at "
                                 f"(CAP_DAC_READ_SEARCH, i.e. root): {_os_error().strerror}")
            os.close(fd)
        finally:
            os.close(mount_fd)

    def attach_shared(self, table: SharedTable) -> None:
        """Serve as one of several processes sharing ``table`` (called before forking)."""
        self._shared = table
        self._sweep_lock = threading.Lock()
        self._held: set[int] = set()
        self._seen_release = table.released_gen()

    def after_fork(self) -> None:
        """In a serving process forked from a running one: drop the handles it copied.

        The parent's open handles are the parent's (the shared slots do not
        list this process as a holder), and its lock may have been held at
        the fork.
        """
        self._lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        fds = list(self._files) + list(self._dirs)
        self._files.clear()
        self._dirs.clear()
        self._backing.clear()
        self._held = set()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def _handle_bytes(self, fd: int, key: tuple[int, int]) -> bytes | None:
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
        struct.pack_into("<I", buf, 0, _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) < 0:
            return None
        size, fh_type = struct.unpack_from("<Ii", buf.raw, 0)
        return _HANDLE_HEAD.pack(_HANDLE_MAGIC, 0, key[0], key[1], mount_id.value, fh_type,
                                 size) + buf.raw[8:8 + size]

    def _fixed_id(self, key: tuple[int, int]) -> int | None:
        if key == self._root_key:
            return _ROOT
        if key[0] == self._root_key[0] and 1 < key[1] < _ALLOC_BASE:
            return key[1]
        return None

    def _publish(self, fd: int, key: tuple[int, int]) -> None:
        """Put ``key``'s handle in the shared node log unless it is there already.

        Runs once per object new to this process; the handle is compared, not
        just the key, so an inode number reused by a new object is republished.
        """
        shared = self._shared
        assert shared is not None
        if key == self._root_key:
            return
        handle = self._handle_bytes(fd, key)
        if handle is None:
            raise FUSEError(errno.ESTALE)
        if not shared.known(key, handle):
            shared.publish_node(key, self._fixed_id(key), handle)

    def _shared_id(self, key: tuple[int, int]) -> int:
        nodeid = self._fixed_id(key)
        if nodeid is None:
            assert self._shared is not None
            nodeid = self._shared.known_key(key)
            if nodeid is None:
                raise FUSEError(errno.ESTALE)
        return nodeid

    def _shared_node(self, nodeid: int) -> _Node:
        """A node another process registered: revive it by handle, else from an open file."""
        shared = self._shared
        assert shared is not None
        self._sweep()
        handle = shared.node_handle(nodeid)
        if handle is not None:
            head = _HANDLE_HEAD.unpack_from(handle)
            handle = _HANDLE_HEAD.pack(head[0], nodeid, *head[2:]) + handle[_HANDLE_HEAD.size:]
            mount_fd = self._mount_fd()
            try:
                self._revive(handle, mount_fd, 0)
            except FUSEError:
                pass
            finally:
                os.close(mount_fd)
        node = self._nodes.get(nodeid)
        if node is None:        # gone from the tree (unlinked) but still open somewhere
            for fh, owner in shared.opens_of(nodeid):
                try:
                    with self._identity.as_server():     # pidfd_getfd: CAP_SYS_PTRACE
                        copy = shared.copy_from(owner, fh)
                except OSError:
                    continue
                try:
                    if not self._is_node(copy, nodeid):
                        continue
                    fd = os.open(_proc(copy), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                finally:
                    os.close(copy)
                st = os.fstat(fd)
                with self._lock:
                    node = self._nodes.get(nodeid)
                    if node is None and (st.st_dev, st.st_ino) not in self._by_key:
                        node = _Node(nodeid, fd, (st.st_dev, st.st_ino),
                                     stat.S_IFMT(st.st_mode), 0)
                        self._nodes[nodeid] = node
                        self._by_key[node.key] = node
                        fd = -1
                if fd >= 0:
                    os.close(fd)
                break
        if node is None:
            raise FUSEError(errno.ESTALE)
        return node

    def _trim(self) -> None:
        """Keep at most ``node_cache`` idle node descriptors (any can be revived).

        Called only where no handler of this process holds a node: after
        FORGET and at the start of LOOKUP and READDIR (multi-process serving
        runs one thread per process).
        """
        if len(self._nodes) <= self.node_cache:
            return
        with self._lock:
            used = set(self._files.values()) | {d.nodeid for d in self._dirs.values()}
            drop = [n for nid, n in self._nodes.items() if nid != _ROOT and nid not in used]
            drop = drop[:len(self._nodes) - self.node_cache // 2]
            for n in drop:
                del self._nodes[n.nodeid]
                del self._by_key[n.key]
        for n in drop:
            os.close(n.fd)

    def _free_here(self, number: int) -> bool:
        try:
            fcntl.fcntl(number, fcntl.F_GETFD)
        except OSError:
            return True
        return False

    def _shared_place(self, fd: int, nodeid: int, kind: int, flags: int) -> int:
        """Move a new open's ``fd`` to a handle number free in every process."""
        shared = self._shared
        assert shared is not None
        self._sweep()
        try:
            fh = shared.claim(nodeid, kind, flags, self._free_here)
            try:
                os.dup2(fd, fh, inheritable=False)
            except OSError:
                shared.release(fh)
                raise
        finally:
            os.close(fd)
        with self._lock:
            self._held.add(fh)
        return fh

    def _adopt_handles(self, fhs: list[object]) -> bool:
        """Take over the handles in ``fhs`` this process does not hold; True if any."""
        adopted = False
        for fh in fhs:
            if isinstance(fh, int) and fh not in self._files and fh not in self._dirs:
                adopted = self._adopt(fh) or adopted
        return adopted

    def _adopt(self, fh: int) -> bool:
        """Hold handle ``fh`` of another process here (pidfd_getfd, else reopen)."""
        shared = self._shared
        if shared is None:
            return False
        self._sweep()
        try:
            info = shared.hold(fh)
        except OSError:
            return False
        if info is None:
            return False
        owner, nodeid, kind, flags = info
        try:
            self._place_copy(fh, owner, nodeid, kind, flags)
        except BaseException:
            shared.unhold(fh)       # we hold no descriptor there after all
            raise
        with self._lock:
            self._held.add(fh)
            if kind == stat.S_IFDIR:
                self._dirs[fh] = _DirHandle(fh, nodeid)
            else:
                self._files[fh] = nodeid
        return True

    def _place_copy(self, fh: int, owner: int, nodeid: int, kind: int, flags: int) -> None:
        """Put at number ``fh`` a descriptor of the file process ``owner`` opened there."""
        shared = self._shared
        assert shared is not None
        try:
            with self._identity.as_server():     # pidfd_getfd: CAP_SYS_PTRACE
                copy = shared.copy_from(owner, fh)
            if not self._is_node(copy, nodeid):
                os.close(copy)
                raise OSError(errno.ESTALE, "not the file of that handle")
        except OSError:         # the opener died: reopen from the node
            node = self._node(nodeid)
            if kind == stat.S_IFDIR:
                copy = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
            else:
                copy = os.open(_proc(node.fd), (flags & ~_REOPEN_STRIP) | os.O_CLOEXEC)
        if kind == stat.S_IFDIR:    # a description of our own: scandir moves the offset
            try:
                own = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=copy)
            except OSError:
                pass
            else:
                os.close(copy)
                copy = own
        try:
            self._claim_number(fh)
            os.dup2(copy, fh, inheritable=False)
        finally:
            os.close(copy)

    def _is_node(self, fd: int, nodeid: int) -> bool:
        """Whether ``fd`` is the object ``nodeid`` names (as far as the id tells)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        fixed = self._fixed_id(key)
        if fixed is not None:
            return fixed == nodeid
        node = self._nodes.get(nodeid)
        return node is None or node.key == key

    def _shared_dir(self, fh: int) -> _DirHandle:
        if self._shared is not None and self._adopt(fh):
            return self._dirs[fh]
        raise FUSEError(errno.EBADF)

    def _shared_release(self, fh: int, *, dirs: bool) -> None:
        """RELEASE/RELEASEDIR landed here: free the slot, close our copy, if any."""
        shared = self._shared
        assert shared is not None
        with self._sweep_lock:
            with self._lock:
                self._backing.pop(fh, None)
                self._files.pop(fh, None)
                self._dirs.pop(fh, None)
                held = fh in self._held
                self._held.discard(fh)
            if held:            # closed before the number can be given to a new open
                os.close(fh)
            try:
                backing_id = shared.release(fh)
            except OSError:
                backing_id = -1
        if backing_id >= 0 and self.notifier is not None:
            try:
                self.notifier.backing_close(backing_id)
            except (OSError, FUSEError):
                pass
        self._sweep()

    def _sweep(self) -> None:
        """Close our copies of handles released through other processes.

        Each copy is closed before the table stops counting this process as
        a holder, so its number cannot be handed to a new open while the old
        file still sits there.
        """
        shared = self._shared
        if shared is None or shared.released_gen() == self._seen_release:
            return
        with self._sweep_lock:
            gen = shared.released_gen()
            if gen == self._seen_release:
                return
            with self._lock:
                held = list(self._held)
            gone = shared.released(held)
            for fh in gone:
                with self._lock:
                    mine = fh in self._held
                    self._held.discard(fh)
                    self._files.pop(fh, None)
                    self._dirs.pop(fh, None)
                    self._backing.pop(fh, None)
                if mine:
                    os.close(fh)
            shared.drop(gone)
            self._seen_release = gen

    def sweep_shared(self) -> None:
        """Called about twice a second from a helper thread of each serving process."""
        self._sweep()

    # -- lifecycle -------------------------------------------------------------------

    def destroy(self) -> None:
        """Close every descriptor this filesystem holds."""
        with self._lock:
            fds = [n.fd for n in self._nodes.values()]
            fds += list(self._files) + [d.fd for d in self._dirs.values()]
            # a recoverable server's backing ids outlive it: its successor reuses them
            backing = [] if self._recoverable else list(self._backing_refs)
            self._inode_backing.clear()
            self._backing_refs.clear()
            self._nodes.clear()
            self._by_key.clear()
            self._files.clear()
            self._dirs.clear()
            self._backing.clear()
        if self.notifier is not None:
            for backing_id in backing:
                try:
                    self.notifier.backing_close(backing_id)
                except (OSError, FUSEError):
                    pass
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
