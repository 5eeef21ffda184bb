"""MemFS: an in-memory filesystem with the semantics users expect of tmpfs.

Everything lives in Python objects: inodes are small ``__slots__`` records
kept in one table keyed by inode number (which is also the FUSE nodeid),
directories keep their entries in insertion order with a per-entry cookie,
and file data is a sparse dict of 64 KiB chunks (a missing chunk is a hole),
on the heap or, on a recoverable mount, in a memfd the keeper holds
(:mod:`fusewire.examples.memfs_data`).

Supported: regular files, directories, hard links, symlinks, fifos, sockets
and device nodes; ownership and permission bits (with setgid-directory
inheritance); POSIX timestamps; xattrs; rename flags; truncate, fallocate,
SEEK_DATA/SEEK_HOLE; copy_file_range; POSIX record locks and flock; O_TMPFILE;
chattr flags (immutable, append-only, nodump, noatime: ``ioctl``);
unlinked-but-open files; stable readdir cookies; statfs accounting; stable
handles and a state dump for hand-over to a successor process.

Locks live in a :class:`fusewire.locks.LockTable`.  A blocking lock
(``setlk``/``flock`` with ``sleep=True``) that has to wait is a deferred
reply: the serving thread goes on serving (the unlock among others) and the
waiter is answered when the lock is granted, or with EINTR when the kernel
interrupts it (a signal), or EDEADLK at once if it would deadlock.  Every
close(2) sends FLUSH with the closing lock owner, and ``flush`` drops that
owner's POSIX locks on the file.  Called directly (a context without
deferred replies), a blocking call blocks the calling thread instead, and
``lock_wait_timeout=<seconds>`` bounds that wait (EINTR after it).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from collections.abc import Sequence

from fusewire.examples.memfs_acl import (
    ACL_ACCESS,
    ACL_DEFAULT,
    acl_allows,
    acl_chmod,
    acl_create,
    decode_acl,
    encode_acl,
)
from fusewire.examples.memfs_blocks import BlockStore
from fusewire.examples.memfs_data import MemFSData
from fusewire.examples.memfs_locks import MemFSLocks
from fusewire.examples.memfs_nodes import (
    _BLOCK,
    _BOGO_DIRENT_SIZE,
    _DAY_NS,
    _INO_MASK,
    _LISTING_MIN,
    _PROTECTED_HARDLINKS,
    _ROOT,
    _S_IFMT,
    _UNCHANGED,
    _XFLAGS,
    CHUNK_SIZE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FS_APPEND_FL,
    FS_IMMUTABLE_FL,
    FS_IOC32_GETFLAGS,
    FS_IOC32_SETFLAGS,
    FS_IOC_FSGETXATTR,
    FS_IOC_FSSETXATTR,
    FS_IOC_GETFLAGS,
    FS_IOC_SETFLAGS,
    FS_NOATIME_FL,
    FS_NODUMP_FL,
    NAME_MAX,
    OFFSET_MAX,
    PATH_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    SEEK_DATA,
    SEEK_HOLE,
    SUPPORTED_FLAGS,
    XATTR_CREATE,
    XATTR_REPLACE,
    _check_name,
    _check_new_name,
    _Dir,
    _err,
    _Handle,
    _in_group,
    _Inode,
    _now,
    _xattr_bytes,
)
from fusewire.examples.memfs_state import MemFSState
from fusewire.examples.memfs_xattrs import MemFSXattrs
from fusewire.locks import LockTable
from fusewire.operations import Operations
from fusewire.readdir import PackedListing, ReaddirToken
from fusewire.recovery_api import ReplayRecovery
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

__all__ = ["CHUNK_SIZE", "FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE", "FALLOC_FL_ZERO_RANGE",
           "FS_NODUMP_FL", "SEEK_DATA", "SEEK_HOLE", "XATTR_CREATE", "XATTR_REPLACE", "MemFS"]


_FSXATTR = struct.Struct("<IIIII8x")


class MemFS(MemFSData, MemFSXattrs, MemFSLocks, MemFSState, ReplayRecovery, Operations):
    """A tmpfs-like in-memory filesystem.

    Recoverable by replay (:class:`fusewire.ReplayRecovery`): its timestamps
    come from :func:`fusewire.now_ns`, its inode and fh numbers from counters
    in the snapshot.

    ``entry_timeout``/``attr_timeout`` are handed to the kernel with every
    entry; ``negative_timeout > 0`` makes failed lookups cacheable.
    ``max_bytes``/``max_inodes`` bound the data and inode count (ENOSPC);
    they default to half the physical memory and one inode per 1 KiB of it.
    Extended attributes (name and value bytes) count against ``max_bytes``.

    Permissions: memfs checks every request itself with the POSIX rules
    (owner, group including the caller's supplementary groups, other; search
    permission on the directory a name is looked up in; write and search
    permission to add or remove names; sticky directories; read/write for
    opens, truncates and ``user.*`` xattrs; root may do anything but execute
    a file with no x bit), so ``access()`` agrees with what the operations do
    and ``allow_other`` is safe without ``default_permissions``
    (``checks_permissions``).

    POSIX ACLs (``acl=True``, the CLI's ``-o acl``): the
    ``system.posix_acl_access``/``system.posix_acl_default`` xattrs hold
    ACLs, as on tmpfs.  The kernel then enforces them (FUSE_POSIX_ACL turns on
    ``default_permissions``) and memfs's own checks evaluate them too; an
    access ACL sets the mode bits, chmod updates its mask entry, and a new
    object under a directory with a default ACL inherits it instead of having
    the umask applied (memfs applies the umask itself then: DONT_MASK).
    Without ``acl`` those xattrs are EOPNOTSUPP.
    """

    checks_permissions = True

    def __init__(self, *, entry_timeout: float = 1.0, attr_timeout: float = 1.0,
                 negative_timeout: float = 0.0, max_bytes: int | None = None,
                 max_inodes: int | None = None, root_mode: int = 0o755,
                 root_uid: int | None = None, root_gid: int | None = None,
                 lock_wait_timeout: float | None = None, acl: bool = False) -> None:
        #: POSIX ACLs: the kernel enforces them and leaves the umask to us
        self.enable_acl = self.applies_umask = acl
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.negative_timeout = negative_timeout
        self.lock_wait_timeout = lock_wait_timeout
        if max_bytes is None:
            try:
                max_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
            except (ValueError, OSError):
                max_bytes = 1 << 30
        self.max_bytes = max_bytes
        self.max_inodes = max_inodes if max_inodes is not None else max(max_bytes // 1024, 1024)
        self._lock = threading.RLock()
        self._generation = int.from_bytes(os.urandom(4), "little") | 1
        self._inodes: dict[int, _Inode] = {}
        self._handles: dict[int, _Handle] = {}
        self._nopen: dict[int, int] = {}            # inode -> open handles
        self._next_ino = _ROOT + 1
        self._next_fh = 1
        self._used = 0                              # bytes held in chunks and xattrs
        self._store: BlockStore | None = None       # file data on the heap (recovery_fds)
        self._linkable: set[int] = set()            # O_TMPFILE inodes linkat may name
        self._iflags: dict[int, int] = {}           # inode -> chattr flags (when not 0)
        self.locks = LockTable()                    # POSIX and flock locks, with waiters
        self._replaying = False                     # keep lookup-only inodes (replay)
        root = _Inode(_ROOT, stat.S_IFDIR | (root_mode & 0o7777),
                      os.getuid() if root_uid is None else root_uid,
                      os.getgid() if root_gid is None else root_gid, _now())
        root.nlink = 2
        root.data = _Dir(_ROOT)
        self._inodes[_ROOT] = root

    # -- internal helpers ----------------------------------------------------

    def _get(self, ino: int) -> _Inode:
        node = self._inodes.get(ino)
        if node is None:
            raise _err(errno.ESTALE)
        return node

    def _dirnode(self, ino: int) -> tuple[_Inode, _Dir]:
        node = self._get(ino)
        if node.dir is None:
            raise _err(errno.ENOTDIR)
        return node, node.dir

    def _live_dir(self, ino: int) -> tuple[_Inode, _Dir]:
        """A directory that may get new entries (not already removed)."""
        node, d = self._dirnode(ino)
        if node.nlink == 0:
            raise _err(errno.ENOENT)
        return node, d

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        return h

    def _file_handle(self, fh: int, write: bool) -> tuple[_Handle, _Inode]:
        h = self._handle(fh)
        if h.is_dir:
            raise _err(errno.EISDIR)
        node = self._get(h.ino)
        if not stat.S_ISREG(node.mode):
            raise _err(errno.EINVAL)
        acc = h.flags & os.O_ACCMODE
        if (write and acc == os.O_RDONLY) or (not write and acc == os.O_WRONLY):
            raise _err(errno.EBADF)
        return h, node

    def _size_of(self, node: _Inode) -> int:
        if node.dir is not None:
            return (len(node.dir) + 2) * _BOGO_DIRENT_SIZE
        return node.size

    def _attr(self, node: _Inode) -> EntryAttributes:
        data = node.data
        blocks = node.blocks
        if blocks < 0:
            blocks = node.blocks = self._data_blocks(node)
        if isinstance(data, _Dir):
            size = (len(data) + 2) * _BOGO_DIRENT_SIZE
        else:
            size = node.size
        # positional on purpose: keyword arguments cost ~0.6 µs here (hot path)
        return EntryAttributes(
            node.ino, self._generation, self.entry_timeout, self.attr_timeout, node.mode,
            node.nlink, node.uid, node.gid, data if isinstance(data, int) else 0, size,
            _BLOCK, blocks, node.atime, node.mtime, node.ctime, node.btime)

    def _entry(self, node: _Inode) -> EntryAttributes:
        """Attributes for a reply that counts one lookup."""
        node.nlookup += 1
        return self._attr(node)

    def _new_inode(self, parent: _Inode | None, mode: int, ctx: RequestContext) -> _Inode:
        if len(self._inodes) >= self.max_inodes:
            raise _err(errno.ENOSPC)
        gid = ctx.gid
        if parent is not None and parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
            elif (mode & (stat.S_ISGID | stat.S_IXGRP)) == (stat.S_ISGID | stat.S_IXGRP) \
                    and ctx.uid != 0 and not _in_group(ctx, gid):
                mode &= ~stat.S_ISGID
        ino = self._next_ino
        self._next_ino += 1
        node = _Inode(ino, mode, ctx.uid, gid, _now())
        self._inodes[ino] = node
        return node

    def _init_acl(self, parent: _Inode, node: _Inode, ctx: RequestContext) -> None:
        """A new object's permissions where memfs applies the umask (ACLs on): the
        parent's default ACL (POSIX.1e inheritance) if it has one, else the umask."""
        default = parent.xattrs.get(ACL_DEFAULT) if parent.xattrs is not None else None
        if default is None:
            node.mode &= ~(ctx.umask & 0o777)
            return
        mode, access = acl_create(decode_acl(default), node.mode)
        try:
            if stat.S_ISDIR(node.mode):
                self._put_xattr(node, ACL_DEFAULT, default)
            if access is not None:
                self._put_xattr(node, ACL_ACCESS, encode_acl(access))
        except BaseException:
            self._put_xattr(node, ACL_DEFAULT, None)
            del self._inodes[node.ino]
            raise
        node.mode = mode

    def _link_into(self, parent: _Inode, d: _Dir, name: bytes, node: _Inode) -> None:
        d.add(name, node.ino)
        if node.dir is not None:
            parent.nlink += 1
        parent.mtime = parent.ctime = node.ctime

    def _maybe_free(self, node: _Inode) -> None:
        if (node.nlink or node.nlookup or node.ino in self._nopen or node.ino == _ROOT
                or self._replaying):
            return
        del self._inodes[node.ino]
        self._free_data(node)
        if node.xattrs:
            self._used -= _xattr_bytes(node.xattrs)
        self._linkable.discard(node.ino)
        self._iflags.pop(node.ino, None)
        self.locks.forget(node.ino)

    def _immutable(self, node: _Inode, *, append_ok: bool = False) -> None:
        """EPERM if ``node`` is immutable, or append-only and ``append_ok`` is false."""
        if self._iflags:
            f = self._iflags.get(node.ino, 0)
            if f & FS_IMMUTABLE_FL or (f & FS_APPEND_FL and not append_ok):
                raise _err(errno.EPERM)

    def _touch_atime(self, node: _Inode) -> None:
        """relatime: update atime if older than mtime/ctime or a day old (never with +A)."""
        if self._iflags and self._iflags.get(node.ino, 0) & FS_NOATIME_FL:
            return
        now = _now()
        if node.atime <= node.mtime or node.atime <= node.ctime or now - node.atime >= _DAY_NS:
            node.atime = now

    def _open_handle(self, node: _Inode, flags: int, is_dir: bool) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(node.ino, flags, is_dir)
        self._nopen[node.ino] = self._nopen.get(node.ino, 0) + 1
        return fh

    # -- names and attributes ----------------------------------------------------

    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        """Look up ``name`` in a directory (counts one lookup)."""
        with self._lock:
            # The hot path: an existing name.  (A name that is in the directory
            # was valid when it was made, so it needs no checks now.)
            parent = self._inodes.get(parent_inode)
            if parent is not None and isinstance(parent.data, _Dir):
                if ctx.uid and parent.mode & 0o111 != 0o111:
                    self._need(parent, os.X_OK, ctx)     # search permission
                ent = parent.data.entries.get(name)
                if ent is not None:
                    node = self._inodes[ent & _INO_MASK]
                    node.nlookup += 1
                    return self._attr(node)
                if name != b"." and name != b"..":
                    # a miss (a create's lookup): the same checks as below, once
                    _check_name(name)
                    if self.negative_timeout > 0:
                        return EntryAttributes(0, entry_timeout=self.negative_timeout)
                    raise _err(errno.ENOENT)
            parent, d = self._dirnode(parent_inode)
            if name == b".":
                return self._entry(parent)
            if name == b"..":
                return self._entry(self._get(d.parent))
            _check_name(name)
            ino = d.get(name)
            if ino is None:
                if self.negative_timeout > 0:
                    return EntryAttributes(0, entry_timeout=self.negative_timeout)
                raise _err(errno.ENOENT)
            return self._entry(self._inodes[ino])

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Drop kernel references; free unlinked, unopened inodes at zero."""
        with self._lock:
            for ino, count in inode_list:
                node = self._inodes.get(ino)
                if node is None:
                    continue
                node.nlookup = max(0, node.nlookup - count)
                self._maybe_free(node)

    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """Return the attributes of ``inode``."""
        with self._lock:
            return self._attr(self._get(inode))

    def statx(self, inode: int, fh: int | None, flags: int, mask: int,
              ctx: RequestContext) -> EntryAttributes:
        """Attributes including the birth time."""
        return self.getattr(inode, ctx)

    def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                fh: int | None, ctx: RequestContext) -> EntryAttributes:
        """chmod, chown, truncate and utimes, with the usual ownership rules."""
        with self._lock:
            node = self._get(inode)
            root = ctx.uid == 0
            owner = root or ctx.uid == node.uid
            # -- validate everything first, then apply
            if self._iflags:
                touch = not (fields.update_mode or fields.update_uid or fields.update_gid
                             or fields.update_size
                             or (fields.update_atime and not fields.atime_now)
                             or (fields.update_mtime and not fields.mtime_now))
                self._immutable(node, append_ok=touch)   # +a: only utimes(NULL)
            if fields.update_uid and attr.st_uid != node.uid and not root:
                raise _err(errno.EPERM)
            if fields.update_uid and not owner:
                raise _err(errno.EPERM)
            if fields.update_gid and not root:
                if not owner:
                    raise _err(errno.EPERM)
                if attr.st_gid != node.gid and not _in_group(ctx, attr.st_gid):
                    raise _err(errno.EPERM)
            if fields.update_mode and not owner:
                # The kernel clears suid/sgid on behalf of a (non-owner) writer
                # with a mode change in the writer's name: allow only that.
                old, new = node.mode & 0o7777, attr.st_mode & 0o7777
                if new & ~old or (old ^ new) & ~(stat.S_ISUID | stat.S_ISGID):
                    raise _err(errno.EPERM)
            explicit_times = (fields.update_atime and not fields.atime_now) or \
                (fields.update_mtime and not fields.mtime_now)
            if explicit_times and not owner:
                raise _err(errno.EPERM)
            if (fields.update_atime or fields.update_mtime) and not owner \
                    and not self._may(node, os.W_OK, ctx):
                raise _err(errno.EACCES)
            if fields.update_size:
                if node.dir is not None:
                    raise _err(errno.EISDIR)
                if not stat.S_ISREG(node.mode):
                    raise _err(errno.EINVAL)
                if attr.st_size < 0:
                    raise _err(errno.EINVAL)
                if attr.st_size > OFFSET_MAX:
                    raise _err(errno.EFBIG)
                if fh is None:
                    self._need(node, os.W_OK, ctx)       # truncate(2) by name
            now = _now()
            changed = False
            if fields.update_uid or fields.update_gid:
                if fields.update_uid:
                    node.uid = attr.st_uid
                if fields.update_gid:
                    node.gid = attr.st_gid
                if not stat.S_ISDIR(node.mode):
                    self._kill_suid(node)
                if node.xattrs:
                    node.xattrs.pop(b"security.capability", None)
                changed = True
            if fields.update_mode:
                mode = attr.st_mode & 0o7777
                if not root and not _in_group(ctx, node.gid) and not stat.S_ISDIR(node.mode):
                    mode &= ~stat.S_ISGID
                node.mode = (node.mode & _S_IFMT) | mode
                if node.xattrs is not None and ACL_ACCESS in node.xattrs:
                    # the owner, mask and other entries follow the mode (same size)
                    node.xattrs[ACL_ACCESS] = encode_acl(
                        acl_chmod(decode_acl(node.xattrs[ACL_ACCESS]), mode))
                changed = True
            if fields.update_size:
                if fields.kill_suidgid:
                    self._kill_suid(node, ctx)
                if attr.st_size != node.size:
                    self._set_size(node, attr.st_size)
                    node.mtime = now
                    changed = True
            if fields.update_atime:
                node.atime = attr.st_atime_ns
                changed = True
            if fields.update_mtime:
                node.mtime = attr.st_mtime_ns
                changed = True
            if fields.update_ctime:
                node.ctime = attr.st_ctime_ns
            elif changed:
                node.ctime = now
            return self._attr(node)

    @staticmethod
    def _kill_suid(node: _Inode, writer: RequestContext | None = None) -> None:
        """Clear S_ISUID, and S_ISGID where the group may execute; for an unprivileged
        ``writer`` (write, truncate) also where it is not in the file's group."""
        mode = node.mode & ~stat.S_ISUID
        if mode & stat.S_IXGRP or (writer is not None and not _in_group(writer, node.gid)):
            mode &= ~stat.S_ISGID
        node.mode = mode

    def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        """Return a symlink's target."""
        with self._lock:
            node = self._get(inode)
            if node.target is None:
                raise _err(errno.EINVAL)
            return node.target

    def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        """Permission check for mounts without ``default_permissions``."""
        with self._lock:
            return self._may(self._get(inode), mode & 7, ctx)

    @staticmethod
    def _may(node: _Inode, want: int, ctx: RequestContext) -> bool:
        if not want:
            return True
        if ctx.uid == 0:
            # root may read/write anything, and execute if any x bit is set
            return not (want & os.X_OK and not stat.S_ISDIR(node.mode)
                        and not node.mode & 0o111)
        if ctx.uid == node.uid:
            bits = (node.mode >> 6) & 7
        elif node.xattrs is not None and ACL_ACCESS in node.xattrs:
            return acl_allows(decode_acl(node.xattrs[ACL_ACCESS]), node.uid, node.gid,
                              want, ctx)
        elif _in_group(ctx, node.gid):
            bits = (node.mode >> 3) & 7
        else:
            bits = node.mode & 7
        return want & ~bits == 0

    def _need(self, node: _Inode, want: int, ctx: RequestContext) -> None:
        """EACCES unless the caller has ``want`` (R_OK/W_OK/X_OK bits) on ``node``."""
        if ctx.uid != 0 and not self._may(node, want, ctx):
            raise _err(errno.EACCES)

    @staticmethod
    def _sticky(parent: _Inode, node: _Inode, ctx: RequestContext) -> None:
        """EPERM if a sticky ``parent`` keeps the caller from removing ``node``'s name."""
        if parent.mode & stat.S_ISVTX and ctx.uid not in (0, node.uid, parent.uid):
            raise _err(errno.EPERM)

    def _need_open(self, node: _Inode, flags: int, ctx: RequestContext) -> None:
        acc = flags & os.O_ACCMODE
        want = os.R_OK if acc == os.O_RDONLY else os.W_OK if acc == os.O_WRONLY \
            else os.R_OK | os.W_OK
        if flags & os.O_TRUNC:
            want |= os.W_OK
        self._need(node, want, ctx)

    # -- creating and removing names ---------------------------------------------

    def _create_node(self, parent_inode: int, name: bytes, mode: int,
                     ctx: RequestContext) -> tuple[_Inode, _Inode, _Dir]:
        _check_new_name(name)
        parent, d = self._live_dir(parent_inode)
        self._need(parent, os.X_OK, ctx)
        if name in d.entries:
            raise _err(errno.EEXIST)
        self._immutable(parent, append_ok=True)
        self._need(parent, os.W_OK, ctx)
        node = self._new_inode(parent, mode, ctx)
        return node, parent, d

    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: RequestContext) -> EntryAttributes:
        """Create a regular file, fifo, socket or device node."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind == stat.S_IFDIR:
            raise _err(errno.EPERM)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise _err(errno.EINVAL)
        with self._lock:
            node, parent, d = self._create_node(parent_inode, name, kind | (mode & 0o7777), ctx)
            if self.applies_umask:
                self._init_acl(parent, node, ctx)
            if kind in (stat.S_IFCHR, stat.S_IFBLK):
                node.data = rdev
            self._link_into(parent, d, name, node)
            return self._entry(node)

    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: RequestContext) -> EntryAttributes:
        """Create a directory."""
        with self._lock:
            node, parent, d = self._create_node(
                parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx)
            if self.applies_umask:
                self._init_acl(parent, node, ctx)
            node.nlink = 2
            node.data = _Dir(parent.ino)
            self._link_into(parent, d, name, node)
            return self._entry(node)

    def symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: RequestContext) -> EntryAttributes:
        """Create a symlink."""
        if not target:
            raise _err(errno.ENOENT)
        if len(target) >= PATH_MAX:
            raise _err(errno.ENAMETOOLONG)
        with self._lock:
            node, parent, d = self._create_node(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
            node.data = bytes(target)
            node.size = len(target)
            self._link_into(parent, d, name, node)
            return self._entry(node)

    def link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: RequestContext) -> EntryAttributes:
        """Create a hard link (EPERM for directories)."""
        with self._lock:
            node = self._get(inode)
            if node.dir is not None:
                raise _err(errno.EPERM)
            _check_new_name(new_name)
            parent, d = self._live_dir(new_parent_inode)
            self._need(parent, os.X_OK, ctx)
            if new_name in d.entries:
                raise _err(errno.EEXIST)
            self._immutable(node)
            self._immutable(parent, append_ok=True)
            self._need(parent, os.W_OK, ctx)
            if ctx.uid not in (0, node.uid) and not self._safe_hardlink(node, ctx):
                raise _err(errno.EPERM)     # fs.protected_hardlinks, as the VFS applies it
            if node.nlink == 0:
                if node.ino not in self._linkable:
                    raise _err(errno.ENOENT)
                self._linkable.discard(node.ino)
            node.nlink += 1
            node.ctime = _now()
            self._link_into(parent, d, new_name, node)
            return self._entry(node)

    def _safe_hardlink(self, node: _Inode, ctx: RequestContext) -> bool:
        """May a non-owner link ``node`` (the kernel's protected_hardlinks rule)?"""
        if not _PROTECTED_HARDLINKS:
            return True
        mode = node.mode
        if not stat.S_ISREG(mode) or mode & stat.S_ISUID \
                or (mode & (stat.S_ISGID | stat.S_IXGRP)) == (stat.S_ISGID | stat.S_IXGRP):
            return False
        return self._may(node, os.R_OK | os.W_OK, ctx)

    def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove a non-directory name."""
        with self._lock:
            parent, d = self._dirnode(parent_inode)
            _check_name(name)
            if name in (b".", b".."):
                raise _err(errno.EISDIR)
            ino = d.get(name)
            if ino is None:
                raise _err(errno.ENOENT)
            node = self._inodes[ino]
            if self._iflags:            # (what _immutable tests first: no call when unset)
                self._immutable(parent)
                self._immutable(node)
            if node.dir is not None:
                raise _err(errno.EISDIR)
            if ctx.uid:
                self._need(parent, os.W_OK | os.X_OK, ctx)
                self._sticky(parent, node, ctx)
            d.remove(name)
            node.nlink -= 1
            parent.mtime = parent.ctime = node.ctime = _now()
            self._maybe_free(node)

    def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove an empty directory."""
        with self._lock:
            parent, d = self._dirnode(parent_inode)
            _check_name(name)
            if name == b".":
                raise _err(errno.EINVAL)
            if name == b"..":
                raise _err(errno.ENOTEMPTY)
            ino = d.get(name)
            if ino is None:
                raise _err(errno.ENOENT)
            node = self._inodes[ino]
            self._immutable(parent)
            self._immutable(node)
            if node.dir is None:
                raise _err(errno.ENOTDIR)
            self._need(parent, os.W_OK | os.X_OK, ctx)
            self._sticky(parent, node, ctx)
            if len(node.dir):
                raise _err(errno.ENOTEMPTY)
            d.remove(name)
            node.nlink = 0
            parent.nlink -= 1
            parent.mtime = parent.ctime = node.ctime = _now()
            self._maybe_free(node)

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        """True if directory ``anc`` is ``ino`` or one of its ancestors."""
        while True:
            if ino == anc:
                return True
            if ino == _ROOT:
                return False
            d = self._inodes[ino].dir
            if d is None:
                return False
            ino = d.parent

    def _may_rename(self, op: _Inode, src: _Inode, np_: _Inode, dst: _Inode | None,
                    exchange: bool, ctx: RequestContext) -> None:
        """The permission part of rename (as the VFS checks it)."""
        self._need(op, os.W_OK | os.X_OK, ctx)
        self._need(np_, os.W_OK | os.X_OK, ctx)
        self._sticky(op, src, ctx)
        if dst is not None:
            self._sticky(np_, dst, ctx)
        if op is not np_:
            # a directory that moves gets a new "..": write permission on it
            if src.dir is not None:
                self._need(src, os.W_OK, ctx)
            if exchange and dst is not None and dst.dir is not None:
                self._need(dst, os.W_OK, ctx)

    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, flags: int, ctx: RequestContext) -> None:
        """rename/renameat2 with RENAME_NOREPLACE, RENAME_EXCHANGE and RENAME_WHITEOUT."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
            raise _err(errno.EINVAL)
        if flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT):
            raise _err(errno.EINVAL)
        with self._lock:
            op, od = self._dirnode(parent_inode_old)
            np_, nd = self._dirnode(parent_inode_new)
            for n in (name_old, name_new):
                _check_name(n)
                if n in (b".", b".."):
                    raise _err(errno.EINVAL)
            src_ino = od.get(name_old)
            if src_ino is None:
                raise _err(errno.ENOENT)
            src = self._inodes[src_ino]
            dst_ino = nd.get(name_new)
            self._may_rename(op, src, np_, None if dst_ino is None else self._inodes[dst_ino],
                             bool(flags & RENAME_EXCHANGE), ctx)
            now = _now()
            if self._iflags and dst_ino != src_ino:
                self._immutable(op)
                self._immutable(src)
                if dst_ino is not None:
                    self._immutable(np_)
                    self._immutable(self._inodes[dst_ino])
                else:
                    self._immutable(np_, append_ok=True)
            if flags & RENAME_EXCHANGE:
                if dst_ino is None:
                    raise _err(errno.ENOENT)
                if dst_ino == src_ino:
                    return
                other = self._inodes[dst_ino]
                if src.dir is not None and self._is_ancestor(src_ino, np_.ino):
                    raise _err(errno.EINVAL)
                if other.dir is not None and self._is_ancestor(dst_ino, op.ino):
                    raise _err(errno.EINVAL)
                od.set(name_old, dst_ino)
                nd.set(name_new, src_ino)
                if op is not np_:
                    if src.dir is not None:
                        src.dir.parent = np_.ino
                        op.nlink -= 1
                        np_.nlink += 1
                    if other.dir is not None:
                        other.dir.parent = op.ino
                        np_.nlink -= 1
                        op.nlink += 1
                src.ctime = other.ctime = now
                op.mtime = op.ctime = np_.mtime = np_.ctime = now
                return
            if dst_ino is not None and flags & RENAME_NOREPLACE:
                raise _err(errno.EEXIST)
            if dst_ino == src_ino:
                return
            if src.dir is not None and self._is_ancestor(src_ino, np_.ino):
                raise _err(errno.EINVAL)
            dst: _Inode | None = None
            if dst_ino is not None:
                dst = self._inodes[dst_ino]
                if src.dir is not None and dst.dir is None:
                    raise _err(errno.ENOTDIR)
                if src.dir is None and dst.dir is not None:
                    raise _err(errno.EISDIR)
                if dst.dir is not None and len(dst.dir):
                    raise _err(errno.ENOTEMPTY)
            if np_.nlink == 0:
                raise _err(errno.ENOENT)
            whiteout: _Inode | None = None
            if flags & RENAME_WHITEOUT:
                whiteout = self._new_inode(op, stat.S_IFCHR, ctx)
            od.remove(name_old)
            if dst is not None:
                nd.set(name_new, src_ino)
                if dst.dir is not None:
                    dst.nlink = 0
                    np_.nlink -= 1
                else:
                    dst.nlink -= 1
                dst.ctime = now
            else:
                nd.add(name_new, src_ino)
            if src.dir is not None and op is not np_:
                src.dir.parent = np_.ino
                op.nlink -= 1
                np_.nlink += 1
            if whiteout is not None:
                od.add(name_old, whiteout.ino)
            src.ctime = now
            op.mtime = op.ctime = np_.mtime = np_.ctime = now
            if dst is not None:
                self._maybe_free(dst)

    # -- files -----------------------------------------------------------------

    def _open_check(self, node: _Inode, flags: int) -> None:
        """chattr: no writing open of +i; +a opens for writing only with O_APPEND."""
        if self._iflags:
            writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
            if writing:
                self._immutable(node, append_ok=bool(flags & os.O_APPEND
                                                     and not flags & os.O_TRUNC))

    def _truncate_on_open(self, node: _Inode, flags: int, ctx: RequestContext) -> None:
        # Linux truncates on O_TRUNC even for O_RDONLY (tmpfs and ext4 do).
        if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
            if ctx.uid != 0:            # like truncate(2): set-ID bits go (no CAP_FSETID)
                self._kill_suid(node, ctx)
            self._set_size(node, 0)
            node.mtime = node.ctime = _now()

    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        """Open a file; O_TRUNC truncates."""
        with self._lock:
            node = self._get(inode)
            if node.dir is not None:
                raise _err(errno.EISDIR)
            self._open_check(node, flags)
            self._need_open(node, flags, ctx)
            self._truncate_on_open(node, flags, ctx)
            return FileInfo(fh=self._open_handle(node, flags, False), keep_cache=True)

    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """Create and open a regular file (opens an existing one without O_EXCL)."""
        with self._lock:
            _check_new_name(name)
            parent, d = self._live_dir(parent_inode)
            self._need(parent, os.X_OK, ctx)
            ino = d.get(name)
            if ino is not None:
                if flags & os.O_EXCL:
                    raise _err(errno.EEXIST)
                node = self._inodes[ino]
                if node.dir is not None:
                    raise _err(errno.EISDIR)
                self._open_check(node, flags)
                self._need_open(node, flags, ctx)
                self._truncate_on_open(node, flags, ctx)
            else:
                if self._iflags:
                    self._immutable(parent, append_ok=True)
                if ctx.uid:
                    self._need(parent, os.W_OK, ctx)
                node = self._new_inode(parent, stat.S_IFREG | (mode & 0o7777), ctx)
                if self.applies_umask:
                    self._init_acl(parent, node, ctx)
                self._link_into(parent, d, name, node)
            fh = self._open_handle(node, flags, False)
            return FileInfo(fh=fh, keep_cache=True), self._entry(node)

    def tmpfile(self, parent_inode: int, mode: int, flags: int,
                ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """O_TMPFILE: an open regular file with no name (linkable unless O_EXCL)."""
        with self._lock:
            parent, _ = self._live_dir(parent_inode)
            self._immutable(parent, append_ok=True)
            self._need(parent, os.W_OK | os.X_OK, ctx)
            node = self._new_inode(parent, stat.S_IFREG | (mode & 0o7777), ctx)
            if self.applies_umask:
                self._init_acl(parent, node, ctx)
            node.nlink = 0
            if not flags & os.O_EXCL:
                self._linkable.add(node.ino)
            fh = self._open_handle(node, flags, False)
            return FileInfo(fh=fh, keep_cache=True), self._entry(node)

    def release(self, fh: int) -> None:
        """Close a file handle; drop its flock and the POSIX locks taken through it."""
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                return
            self.locks.release(h.ino, fh)
            left = self._nopen[h.ino] - 1
            if left:
                self._nopen[h.ino] = left
            else:
                del self._nopen[h.ino]
            node = self._inodes.get(h.ino)
            if node is not None:
                self._maybe_free(node)

    # -- directories -----------------------------------------------------------

    def opendir(self, inode: int, ctx: RequestContext) -> int:
        """Open a directory for listing."""
        with self._lock:
            node, _ = self._dirnode(inode)
            self._need(node, os.R_OK, ctx)
            return self._open_handle(node, os.O_RDONLY, True)

    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        """List ".", ".." and the entries after cookie ``start_id``."""
        plus = bool(getattr(token, "plus", False))
        with self._lock:
            h = self._handle(fh)
            node, d = self._dirnode(h.ino)
            if node.nlink == 0:
                return
            self._touch_atime(node)
            if start_id < 1 and not token.add(b".", self._attr(node), 1):
                return
            if start_id < 2 and not token.add(b"..", self._attr(self._get(d.parent)), 2):
                return
            inodes = self._inodes
            listing = d.listing
            if listing is None:
                d.listing = _UNCHANGED
            if not plus:
                # The library's own token packs in bulk; a wrapper or subclass (recovery's
                # isolation maps inode numbers in add_name) gets one add_name per entry.
                if type(token) is ReaddirToken:
                    if listing is _UNCHANGED and len(d.entries) >= _LISTING_MIN:
                        listing = d.listing = PackedListing(
                            (name, ino, inodes[ino].mode, cookie)
                            for name, ino, cookie in d.iter_after(2))
                    if listing is not None and listing is not _UNCHANGED:
                        token.add_listing(listing, start_id)
                        return
                    token.add_names((name, ino, inodes[ino].mode, cookie)
                                    for name, ino, cookie in d.iter_after(max(start_id, 2)))
                    return
                entries = d.iter_after(max(start_id, 2))
                add_name = token.add_name
                for name, ino, cookie in entries:
                    if not add_name(name, ino, inodes[ino].mode, cookie):
                        return
                return
            for name, ino, cookie in d.iter_after(max(start_id, 2)):
                child = inodes[ino]
                if not token.add(name, self._attr(child), cookie):
                    return
                child.nlookup += 1

    def releasedir(self, fh: int) -> None:
        """Close a directory handle."""
        self.release(fh)

    # -- filesystem-wide ---------------------------------------------------------

    # -- chattr flags ---------------------------------------------------------------

    def ioctl(self, fh: int, cmd: int, arg: int, in_data: bytes, out_size: int,
              flags: int, ctx: RequestContext) -> tuple[int, bytes]:
        """``chattr``/``lsattr``: FS_IOC_GETFLAGS/SETFLAGS and FS_IOC_FSGETXATTR/FSSETXATTR.

        Honours immutable (+i), append-only (+a), no-dump (+d, kept only) and
        no-atime (+A), as tmpfs does; other flags are EOPNOTSUPP, other
        ioctls ENOTTY.  Only the owner may change flags and only root may
        change +i and +a (the kernel checks CAP_LINUX_IMMUTABLE first).
        """
        with self._lock:
            node = self._get(self._handle(fh).ino)
            have = self._iflags.get(node.ino, 0)
            if cmd in (FS_IOC_GETFLAGS, FS_IOC32_GETFLAGS):
                return 0, struct.pack("<I", have)[:out_size]
            if cmd == FS_IOC_FSGETXATTR:
                xflags = sum(x for f, x in _XFLAGS if have & f)
                return 0, _FSXATTR.pack(xflags, 0, 0, 0, 0)[:out_size]
            if cmd in (FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS):
                if len(in_data) < 4:
                    raise _err(errno.EINVAL)
                want = struct.unpack_from("<I", in_data)[0]
            elif cmd == FS_IOC_FSSETXATTR:
                if len(in_data) < _FSXATTR.size:
                    raise _err(errno.EINVAL)
                xflags, extsize, _, projid, cowextsize = _FSXATTR.unpack_from(in_data)
                if extsize or projid or cowextsize or xflags & ~sum(x for _, x in _XFLAGS):
                    raise _err(errno.EOPNOTSUPP)
                want = sum(f for f, x in _XFLAGS if xflags & x) | (have & ~SUPPORTED_FLAGS)
            else:
                raise _err(errno.ENOTTY)
            if want & ~SUPPORTED_FLAGS:
                raise _err(errno.EOPNOTSUPP)
            if ctx.uid not in (0, node.uid):
                raise _err(errno.EPERM)
            if (want ^ have) & (FS_IMMUTABLE_FL | FS_APPEND_FL) and ctx.uid != 0:
                raise _err(errno.EPERM)
            if want:
                self._iflags[node.ino] = want
            else:
                self._iflags.pop(node.ino, None)
            node.ctime = _now()
            return 0, b""

    def statfs(self, ctx: RequestContext) -> StatvfsData:
        """Capacity and usage (blocks of 4 KiB, inodes)."""
        with self._lock:
            blocks = self.max_bytes // _BLOCK
            free = max(0, blocks - (self._used + _BLOCK - 1) // _BLOCK)
            ffree = max(0, self.max_inodes - len(self._inodes))
            return StatvfsData(f_bsize=_BLOCK, f_frsize=_BLOCK, f_blocks=blocks,
                               f_bfree=free, f_bavail=free, f_files=self.max_inodes,
                               f_ffree=ffree, f_favail=ffree, f_namemax=NAME_MAX)

    # -- stable identity and hand-over ----------------------------------------

    def handle_of(self, inode: int) -> bytes | None:
        """16 bytes: inode number and this filesystem's generation."""
        with self._lock:
            if inode not in self._inodes:
                return None
            return struct.pack("<QQ", inode, self._generation)

    def inode_for_handle(self, handle: bytes) -> int:
        """Inverse of :meth:`handle_of`; ESTALE if the object is gone (no lookup counted)."""
        if len(handle) != 16:
            raise _err(errno.ESTALE)
        ino, gen = struct.unpack("<QQ", handle)
        with self._lock:
            if gen != self._generation or ino not in self._inodes:
                raise _err(errno.ESTALE)
            return int(ino)

    def lookup_inode(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """An entry for ``inode`` named by its handle: counts one lookup, like lookup."""
        with self._lock:
            return self._entry(self._get(inode))
