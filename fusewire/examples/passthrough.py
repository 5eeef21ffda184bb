"""Passthrough: mirror a source directory through FUSE, confined to that tree.

Every object the kernel knows is a node holding an ``O_PATH | O_NOFOLLOW``
file descriptor, obtained by opening one name relative to the parent node's
descriptor.  When the server is root, a node also keeps the source's file
handle, and idle node descriptors beyond a bound are closed and reopened by
handle on next use (:mod:`.passthrough_fdcache`), so a tree with more nodes
than the descriptor limit is served with a bounded number of descriptors.
Names "." and ".." and names containing "/" are refused, and nothing ever
follows a symlink, so no request can reach outside the source
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
import os
import resource
import stat
import struct
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fusewire.examples.caller import CallerIdentity
from fusewire.examples.passthrough_fdcache import DescriptorCache
from fusewire.examples.passthrough_libc import (
    _AT_EMPTY_PATH,
    _AT_SYMLINK_NOFOLLOW,
    _MAX_HANDLE_SZ,
    _STATX_BTIME,
    _UTIME_NOW,
    _UTIME_OMIT,
    _c,
    _closedir,
    _fallocate,
    _fchownat,
    _fdopendir,
    _linkat,
    _name_to_handle_at,
    _os_error,
    _readdir_c,
    _renameat2,
    _seekdir,
    _statx,
    _Timespec,
    _utimensat,
)
from fusewire.examples.passthrough_nodes import (
    _ALLOC_BASE,
    _DOTS,
    _FLAG_IOCTLS,
    _O_PATH_FLAGS,
    _OPEN_STRIP,
    _ROOT,
    _as_caller,
    _check_name,
    _DirHandle,
    _entry_kind,
    _errmap,
    _Node,
    _proc,
)
from fusewire.examples.passthrough_recovery import PassthroughRecovery
from fusewire.operations import Operations
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

__all__ = ["Passthrough"]


class Passthrough(PassthroughRecovery, Operations):
    """Mirror the directory ``source`` (see the module docstring).

    Recoverable by stable handles (:class:`fusewire.HandleRecovery`).
    """

    #: state lives in the source tree: several serving processes may share it
    #: (``Server(processes=N)``; see "Multi-process serving" below)
    multiprocess_safe = True
    #: the kernel leaves the umask to us (FUSE_DONT_MASK): the source applies the
    #: caller's umask, or the parent's default ACL instead, as it would locally
    applies_umask = True

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
        self._fdcache = self._descriptor_cache()

    # -- node table ----------------------------------------------------------

    def _descriptor_cache(self) -> DescriptorCache | None:
        """Lazy node descriptors where handles can be reopened (root, file handles)."""
        if os.geteuid() != 0:
            return None
        root = self._nodes[_ROOT]
        if self._handle_bytes(root.raw_fd, root.key) is None:
            return None
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = self.node_cache
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft // 4)
        return DescriptorCache(limit, self._mount_fd(), self._identity.as_server)

    def _make_lazy(self, node: _Node) -> None:
        """Let the cache close ``node``'s descriptor while idle (it has a handle)."""
        cache = self._fdcache
        if cache is None:
            return
        # struct file_handle: u32 handle_bytes, int handle_type, f_handle[]
        buf = ctypes.create_string_buffer(_MAX_HANDLE_SZ.to_bytes(4, sys.byteorder),
                                          8 + _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        if _name_to_handle_at(node.raw_fd, b"", buf, ctypes.byref(mount_id),
                              _AT_EMPTY_PATH) != 0:
            return
        node.handle = buf.raw[:8 + int.from_bytes(buf.raw[:4], sys.byteorder)]
        node.cache = cache
        cache.track(node)

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
                self._make_lazy(node)
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
        cache = node.cache
        if cache is not None:
            fd = cache.discard(node)
        else:
            fd, node.raw_fd = node.raw_fd, -1
        if fd >= 0:
            os.close(fd)

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
        with self._identity.umask(ctx.umask):
            os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._created(parent, name)

    @_errmap
    @_as_caller
    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: RequestContext) -> EntryAttributes:
        """mkdirat relative to the parent."""
        parent = self._node(parent_inode)
        _check_name(name)
        with self._identity.umask(ctx.umask):
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
            with self._identity.umask(ctx.umask) as exact:
                fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode & 0o7777,
                             dir_fd=parent.fd)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = os.open(name, base, dir_fd=parent.fd)
            created = False
        try:
            return self._finish_create(fd, mode & ~ctx.umask, created and not exact, flags)
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
        with self._identity.umask(ctx.umask) as exact:
            fd = os.open(".", oflags, mode & 0o7777, dir_fd=parent.fd)
        try:
            return self._finish_create(fd, mode & ~ctx.umask, not exact, flags)
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
    def write_kill_suidgid(self, fh: int, ctx: RequestContext) -> None:
        """An unprivileged write is coming: clear the set-ID bits as write(2) does.

        The write itself runs as the server (which may keep the bits), so the
        rule is applied here: S_ISUID goes, S_ISGID too if the group may
        execute or the writer is not in the file's group.
        """
        st = os.fstat(fh)
        mode = st.st_mode
        if not mode & (stat.S_ISUID | stat.S_ISGID):
            return
        new = mode & ~stat.S_ISUID
        if mode & stat.S_IXGRP or (st.st_gid != ctx.gid and st.st_gid not in ctx.groups):
            new &= ~stat.S_ISGID
        try:
            os.fchmod(fh, new & 0o7777)
        except PermissionError:
            pass        # a non-root server that does not own the file cannot

    @_errmap
    def flush(self, fh: int, lock_owner: int = 0) -> None:
        """close(dup(fh)): report close-time errors (locks are the kernel's).

        Without a free descriptor for the dup (EMFILE, ENFILE) there is no
        close-time error to collect: the client's close(2) must not fail for
        the server's descriptor limit, so that is success.
        """
        try:
            dup = os.dup(fh)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                return
            raise
        os.close(dup)

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

    # -- lifecycle -------------------------------------------------------------------

    def destroy(self) -> None:
        """Close every descriptor this filesystem holds."""
        with self._lock:
            fds = [n.raw_fd for n in self._nodes.values() if n.raw_fd >= 0]
            cache, self._fdcache = self._fdcache, None
            if cache is not None:
                cache.close()
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
