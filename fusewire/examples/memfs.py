"""MemFS: an in-memory filesystem with the semantics users expect of tmpfs.

Everything lives in Python objects: inodes are small ``__slots__`` records
kept in one table keyed by inode number (which is also the FUSE nodeid),
directories keep their entries in insertion order with a per-entry cookie,
and file data is a sparse dict of 64 KiB chunks (a missing chunk is a hole).

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
import fcntl
import io
import os
import pickle
import stat
import struct
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from fusewire.locks import LockTable, PosixLock
from fusewire.operations import Operations
from fusewire.readdir import PackedListing, ReaddirToken
from fusewire.recovery_api import ReplayRecovery, now_ns
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

__all__ = ["CHUNK_SIZE", "MemFS"]

CHUNK_SIZE = 64 * 1024
NAME_MAX = 255
PATH_MAX = 4096
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4
OFFSET_MAX = 2**63 - 1

_ROOT = 1
_FIRST_COOKIE = 3          # 1 and 2 are "." and ".."
#: directories with at least this many entries keep their READDIR records packed
#: between listings (_Dir.listing) until they change
_LISTING_MIN = 32
#: _Dir.listing when a READDIR saw the directory and it has not changed since: the
#: next READDIR packs the listing (never on every request of a listing that changes)
_UNCHANGED = PackedListing(())
_BOGO_DIRENT_SIZE = 20     # tmpfs reports directory sizes in these units
_DAY_NS = 86400 * 10**9
_BLOCK = 4096
_STATE_VERSION = 1

# chattr(1) flags (FS_IOC_GETFLAGS/SETFLAGS) and their FS_IOC_FSGETXATTR twins
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IOC32_GETFLAGS = 0x80046601
FS_IOC32_SETFLAGS = 0x40046602
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20
FS_NODUMP_FL = 0x40
FS_NOATIME_FL = 0x80
#: the flags memfs keeps and honours (tmpfs's set): i, a, d, A
SUPPORTED_FLAGS = FS_IMMUTABLE_FL | FS_APPEND_FL | FS_NODUMP_FL | FS_NOATIME_FL
#: FS_*_FL -> FS_XFLAG_* (struct fsxattr's fsx_xflags)
_XFLAGS = ((FS_IMMUTABLE_FL, 0x8), (FS_APPEND_FL, 0x10), (FS_NOATIME_FL, 0x40),
           (FS_NODUMP_FL, 0x80))
_FSXATTR = struct.Struct("<IIIII8x")
_S_IFMT = 0o170000
_INO_MASK = (1 << 64) - 1
_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")
_XATTR_SYSTEM = (b"system.posix_acl_access", b"system.posix_acl_default")


def _err(code: int) -> FUSEError:
    return FUSEError(code)


def _now() -> int:
    # the library's clock: pinned to the recorded time when a request is replayed
    return now_ns()


class _Dir:
    """Entries of one directory, in insertion order, each with a stable cookie.

    ``entries`` maps name -> ``cookie << 64 | inode`` (one int per entry keeps
    big directories small).  ``cookies``/``names`` are parallel sequences
    sorted by cookie; a removed entry leaves a ``None`` tombstone until they
    are compacted.  Cookies never change, so a listing can always resume
    with the first live entry after a cookie.  ``listing`` caches the packed
    READDIR records of the live entries (built by a READDIR that finds the
    directory unchanged since the previous one, dropped by any change), so an
    unchanged directory is listed without per-entry work.
    """

    __slots__ = ("cookies", "dead", "entries", "listing", "names", "next_cookie", "parent")

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.entries: dict[bytes, int] = {}
        self.cookies = array("Q")
        self.names: list[bytes | None] = []
        self.dead = 0
        self.next_cookie = _FIRST_COOKIE
        self.listing: PackedListing | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: bytes) -> int | None:
        ent = self.entries.get(name)
        return None if ent is None else ent & _INO_MASK

    def add(self, name: bytes, ino: int, cookie: int | None = None) -> None:
        if cookie is None:
            cookie = self.next_cookie
        self.next_cookie = max(self.next_cookie, cookie + 1)
        self.listing = None
        self.entries[name] = cookie << 64 | ino
        self.cookies.append(cookie)
        self.names.append(name)

    def set(self, name: bytes, ino: int) -> None:
        """Point an existing ``name`` at ``ino``, keeping its cookie."""
        self.listing = None
        self.entries[name] = (self.entries[name] & ~_INO_MASK) | ino

    def remove(self, name: bytes) -> int:
        ent = self.entries.pop(name)
        self.listing = None
        self.names[bisect_left(self.cookies, ent >> 64)] = None
        self.dead += 1
        if self.dead > 64 and self.dead * 2 > len(self.names):
            live = [(c, n) for c, n in zip(self.cookies, self.names, strict=True) if n is not None]
            self.cookies = array("Q", [c for c, _ in live])
            self.names = [n for _, n in live]
            self.dead = 0
        return ent & _INO_MASK

    def iter_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        """Yield ``(name, inode, cookie)`` for live entries with a cookie > ``cookie``."""
        i = bisect_right(self.cookies, cookie)
        while i < len(self.names):
            name = self.names[i]
            if name is not None:
                yield name, self.entries[name] & _INO_MASK, self.cookies[i]
            i += 1


class _Inode:
    """One filesystem object.

    ``data`` holds the type-specific part, created lazily: the chunk dict of
    a regular file (None while it has no data), the :class:`_Dir` of a
    directory, the target of a symlink, the rdev of a device node.
    """

    __slots__ = (
        "atime", "blocks", "btime", "ctime", "data", "gid", "ino", "mode", "mtime",
        "nlink", "nlookup", "size", "uid", "xattrs",
    )

    def __init__(self, ino: int, mode: int, uid: int, gid: int, now: int) -> None:
        self.ino = ino
        self.mode = mode
        self.nlink = 1
        self.uid = uid
        self.gid = gid
        self.size = 0
        self.atime = self.mtime = self.ctime = self.btime = now
        self.nlookup = 0
        self.data: dict[int, bytearray] | _Dir | bytes | int | None = None
        self.xattrs: dict[bytes, bytes] | None = None
        #: st_blocks of the chunk map, or -1 when a write changed it since
        self.blocks = -1

    @property
    def chunks(self) -> dict[int, bytearray] | None:
        data = self.data
        return data if isinstance(data, dict) else None

    @property
    def dir(self) -> _Dir | None:
        data = self.data
        return data if isinstance(data, _Dir) else None

    @property
    def target(self) -> bytes | None:
        data = self.data
        return data if isinstance(data, bytes) else None

    @property
    def rdev(self) -> int:
        data = self.data
        return data if isinstance(data, int) else 0


class _Handle:
    """An open file or directory (one per OPEN/CREATE/OPENDIR)."""

    __slots__ = ("flags", "ino", "is_dir")

    def __init__(self, ino: int, flags: int, is_dir: bool) -> None:
        self.ino = ino
        self.flags = flags
        self.is_dir = is_dir


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Only plain builtin containers may appear in a state dump."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in MemFS state")


def _sysctl_on(path: str, default: bool) -> bool:
    try:
        with open(path) as f:
            return f.read().strip() != "0"
    except OSError:
        return default


#: The kernel's fs.protected_hardlinks, which memfs applies like the VFS does.
_PROTECTED_HARDLINKS = _sysctl_on("/proc/sys/fs/protected_hardlinks", True)


def _xattr_bytes(xattrs: dict[bytes, bytes]) -> int:
    """What a node's xattrs count against the memory cap: names and values."""
    return sum(len(k) + len(v) for k, v in xattrs.items())


def _in_group(ctx: RequestContext, gid: int) -> bool:
    return gid == ctx.gid or gid in ctx.groups


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise _err(errno.EINVAL)


def _check_new_name(name: bytes) -> None:
    _check_name(name)
    if name in (b".", b".."):
        raise _err(errno.EEXIST)


class MemFS(ReplayRecovery, Operations):
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
    (``checks_permissions``).  POSIX ACLs are not supported.
    """

    checks_permissions = True

    def __init__(self, *, entry_timeout: float = 1.0, attr_timeout: float = 1.0,
                 negative_timeout: float = 0.0, max_bytes: int | None = None,
                 max_inodes: int | None = None, root_mode: int = 0o755,
                 root_uid: int | None = None, root_gid: int | None = None,
                 lock_wait_timeout: float | None = None) -> None:
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
            blocks = 0
            if isinstance(data, dict):
                blocks = sum((len(c) + _BLOCK - 1) // _BLOCK for c in data.values()) * 8
            node.blocks = blocks
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
        if node.chunks:
            self._used -= sum(len(c) for c in node.chunks.values())
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

    # -- file data -------------------------------------------------------------

    def _chunks(self, node: _Inode) -> dict[int, bytearray]:
        chunks = node.chunks
        if chunks is None:
            chunks = node.data = {}
        return chunks

    def _read_data(self, node: _Inode, off: int, size: int) -> bytes | bytearray:
        """``size`` bytes at ``off`` (short at EOF), holes as zeros, copied once."""
        if off >= node.size or size <= 0:
            return b""
        size = min(size, node.size - off)
        chunks = node.chunks
        if not chunks:
            return bytes(size)
        idx, coff = divmod(off, CHUNK_SIZE)
        chunk = chunks.get(idx)
        if chunk is not None and coff + size <= len(chunk):
            return chunk[coff:coff + size]  # within one chunk: one copy
        pieces: list[bytes | memoryview] = []  # views of the chunks, zeros for holes
        pos = 0
        while pos < size:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, size - pos)
            chunk = chunks.get(idx)
            got = 0
            if chunk is not None and coff < len(chunk):
                piece = memoryview(chunk)[coff:coff + n]
                got = len(piece)
                pieces.append(piece)
            if got < n:
                pieces.append(bytes(n - got))
            pos += n
        return b"".join(pieces)  # the one copy (the views die with ``pieces``)

    def _write_data(self, node: _Inode, off: int, data: bytes | bytearray | memoryview) -> None:
        total = len(data)
        if not total:
            return
        chunks = self._chunks(node)
        growth = 0
        pos = 0
        while pos < total:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, total - pos)
            chunk = chunks.get(idx)
            growth += max(0, coff + n - (0 if chunk is None else len(chunk)))
            pos += n
        if self._used + growth > self.max_bytes:
            raise _err(errno.ENOSPC)
        node.blocks = -1
        pos = 0
        while pos < total:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, total - pos)
            chunk = chunks.get(idx)
            if chunk is None:
                chunk = chunks[idx] = bytearray()
            if len(chunk) < coff:
                chunk.extend(bytes(coff - len(chunk)))
            chunk[coff:coff + n] = data[pos:pos + n]
            pos += n
        self._used += growth
        node.size = max(node.size, off + total)

    def _zero_range(self, node: _Inode, off: int, end: int) -> None:
        """Make [off, end) read as zeros; whole chunks become holes."""
        chunks = node.chunks
        if not chunks or end <= off:
            return
        node.blocks = -1
        for idx in [i for i in chunks if off < (i + 1) * CHUNK_SIZE and i * CHUNK_SIZE < end]:
            chunk = chunks[idx]
            base = idx * CHUNK_SIZE
            a = max(off - base, 0)
            b = min(end - base, len(chunk))
            if a == 0 and b >= len(chunk):
                self._used -= len(chunk)
                del chunks[idx]
                continue
            if a < b:
                chunk[a:b] = bytes(b - a)
            if chunk.count(0) == len(chunk):
                self._used -= len(chunk)
                del chunks[idx]
            elif b == len(chunk) and a < b:
                # trailing zeros need not be stored
                stripped = len(chunk.rstrip(b"\0"))
                self._used -= len(chunk) - stripped
                del chunk[stripped:]

    def _set_size(self, node: _Inode, size: int) -> None:
        if size < node.size and node.chunks:
            self._zero_range(node, size, node.size)
        node.size = size

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
            self._immutable(parent)
            self._immutable(node)
            if node.dir is not None:
                raise _err(errno.EISDIR)
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
                self._immutable(parent, append_ok=True)
                self._need(parent, os.W_OK, ctx)
                node = self._new_inode(parent, stat.S_IFREG | (mode & 0o7777), ctx)
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
            node.nlink = 0
            if not flags & os.O_EXCL:
                self._linkable.add(node.ino)
            fh = self._open_handle(node, flags, False)
            return FileInfo(fh=fh, keep_cache=True), self._entry(node)

    def read(self, fh: int, off: int, size: int) -> bytes | bytearray:
        """Read up to ``size`` bytes (holes read as zeros)."""
        with self._lock:
            h, node = self._file_handle(fh, write=False)
            if off < 0:
                raise _err(errno.EINVAL)
            data = self._read_data(node, off, size)
            if not h.flags & os.O_NOATIME:
                self._touch_atime(node)
            return data

    def write(self, fh: int, off: int, buf: memoryview) -> int:
        """Write at ``off`` (at end of file for O_APPEND handles)."""
        with self._lock:
            h, node = self._file_handle(fh, write=True)
            self._immutable(node, append_ok=bool(h.flags & os.O_APPEND))
            if h.flags & os.O_APPEND:
                off = node.size
            if off < 0:
                raise _err(errno.EINVAL)
            if off + len(buf) > OFFSET_MAX:
                raise _err(errno.EFBIG)
            self._write_data(node, off, buf)
            node.mtime = node.ctime = _now()
            return len(buf)

    def write_kill_suidgid(self, fh: int, ctx: RequestContext) -> None:
        """An unprivileged write is coming: clear the set-ID bits as write(2) does."""
        with self._lock:
            _, node = self._file_handle(fh, write=True)
            if node.mode & (stat.S_ISUID | stat.S_ISGID):
                self._kill_suid(node, ctx)
                node.ctime = _now()

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

    def fallocate(self, fh: int, mode: int, offset: int, length: int,
                  ctx: RequestContext) -> None:
        """Modes: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE[|KEEP_SIZE]."""
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise _err(errno.EOPNOTSUPP)
        if mode & FALLOC_FL_PUNCH_HOLE and (not mode & FALLOC_FL_KEEP_SIZE
                                            or mode & FALLOC_FL_ZERO_RANGE):
            raise _err(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise _err(errno.EINVAL)
        with self._lock:
            _, node = self._file_handle(fh, write=True)
            if not stat.S_ISREG(node.mode):
                raise _err(errno.ENODEV)
            self._immutable(node, append_ok=mode & ~FALLOC_FL_KEEP_SIZE == 0)
            end = offset + length
            if end > OFFSET_MAX:
                raise _err(errno.EFBIG)
            now = _now()
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                self._zero_range(node, offset, min(end, node.size))
                node.mtime = node.ctime = now
            elif end - node.size > self.max_bytes - self._used:
                raise _err(errno.ENOSPC)
            if not mode & FALLOC_FL_KEEP_SIZE and end > node.size:
                node.size = end
                node.mtime = now
            node.ctime = now

    def lseek(self, fh: int, offset: int, whence: int, ctx: RequestContext) -> int:
        """SEEK_DATA / SEEK_HOLE over the chunk map (ENXIO at or past EOF)."""
        with self._lock:
            h = self._handle(fh)
            node = self._get(h.ino)
            size = node.size
            if whence == os.SEEK_SET:
                return offset
            if whence == os.SEEK_END:
                return size + offset
            if whence not in (SEEK_DATA, SEEK_HOLE):
                raise _err(errno.EINVAL)
            if offset < 0 or offset >= size:
                raise _err(errno.ENXIO)
            chunks = node.chunks or {}
            idx = offset // CHUNK_SIZE
            if whence == SEEK_DATA:
                if idx in chunks:
                    return offset
                later = [i for i in chunks if i > idx]
                if not later:
                    raise _err(errno.ENXIO)
                pos = min(later) * CHUNK_SIZE
                if pos >= size:
                    raise _err(errno.ENXIO)
                return pos
            while idx in chunks:
                idx += 1
            return min(max(offset, idx * CHUNK_SIZE), size)

    def copy_file_range(self, fh_in: int, off_in: int, inode_out: int, fh_out: int,
                        off_out: int, length: int, flags: int,
                        ctx: RequestContext) -> int:
        """Copy between two open files, keeping holes; bounded by the source EOF."""
        if flags:
            raise _err(errno.EINVAL)
        if off_in < 0 or off_out < 0 or length < 0:
            raise _err(errno.EINVAL)
        with self._lock:
            _, src = self._file_handle(fh_in, write=False)
            hout, dst = self._file_handle(fh_out, write=True)
            if hout.flags & os.O_APPEND:
                raise _err(errno.EBADF)
            self._immutable(dst)
            if not stat.S_ISREG(src.mode) or not stat.S_ISREG(dst.mode):
                raise _err(errno.EINVAL)
            n = max(0, min(length, src.size - off_in))
            if src is dst and off_in < off_out + n and off_out < off_in + n:
                raise _err(errno.EINVAL)
            if not n:
                return 0
            if off_out + n > OFFSET_MAX:
                raise _err(errno.EFBIG)
            chunks = src.chunks or {}
            pos = 0
            while pos < n:
                idx, coff = divmod(off_in + pos, CHUNK_SIZE)
                step = min(CHUNK_SIZE - coff, n - pos)
                if idx in chunks:
                    self._write_data(dst, off_out + pos,
                                     self._read_data(src, off_in + pos, step))
                else:
                    self._zero_range(dst, off_out + pos, min(off_out + pos + step, dst.size))
                pos += step
            dst.size = max(dst.size, off_out + n)
            dst.mtime = dst.ctime = _now()
            self._touch_atime(src)
            return n

    # -- POSIX record locks and flock (fusewire.locks) ---------------------------------

    @property
    def _plocks(self) -> dict[int, list[PosixLock]]:
        """POSIX locks by inode (the lock table's)."""
        return self.locks.posix

    @property
    def _flocks(self) -> dict[int, dict[int, tuple[int, int]]]:
        """flock locks by inode: owner -> (op, fh) (the lock table's)."""
        return self.locks.flocks

    def getlk(self, fh: int, owner: int, lock: Lock, ctx: RequestContext) -> Lock:
        """Return the first conflicting lock of another owner, or an F_UNLCK lock."""
        with self._lock:
            ino = self._handle(fh).ino
        return self.locks.getlk(ino, owner, lock)

    def setlk(self, fh: int, owner: int, lock: Lock, sleep: bool,
              ctx: RequestContext) -> None:
        """Set, change or release a byte-range lock; EAGAIN on conflict unless ``sleep``,
        then a wait that does not hold the serving thread (see :mod:`fusewire.locks`)."""
        with self._lock:
            h = self._handle(fh)
            if lock.type != fcntl.F_UNLCK:
                acc = h.flags & os.O_ACCMODE
                need = os.O_WRONLY if lock.type == fcntl.F_WRLCK else os.O_RDONLY
                if acc != os.O_RDWR and acc != need:
                    raise _err(errno.EBADF)
        self.locks.setlk(h.ino, owner, lock, sleep, ctx, fh=fh, timeout=self.lock_wait_timeout)

    def flock(self, fh: int, owner: int, op: int, sleep: bool, ctx: RequestContext) -> None:
        """BSD flock: shared/exclusive whole-file locks per open file."""
        with self._lock:
            ino = self._handle(fh).ino
        self.locks.flock(ino, owner, op, sleep, ctx, fh=fh, timeout=self.lock_wait_timeout)

    def flush(self, fh: int, lock_owner: int = 0) -> None:
        """close(2) of a descriptor: the closing owner's POSIX locks on the file go."""
        with self._lock:
            h = self._handles.get(fh)
            if h is None or h.is_dir:
                return
            ino = h.ino
        self.locks.unlock_owner(ino, lock_owner)

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

    # -- extended attributes ------------------------------------------------------

    def _check_xattr(self, node: _Inode, name: bytes, ctx: RequestContext,
                     write: bool) -> None:
        if not name or len(name) > XATTR_NAME_MAX:
            raise _err(errno.ERANGE)
        if name.startswith(b"system."):
            # POSIX ACLs are not evaluated by memfs: refusing them makes tools
            # (cp -a, setfacl) fall back to chmod instead of storing an ACL
            # that silently fails to change the mode.
            raise _err(errno.EOPNOTSUPP)
        if not name.startswith(_XATTR_PREFIXES):
            raise _err(errno.EOPNOTSUPP)
        if name.startswith(b"trusted.") and ctx.uid != 0:
            raise _err(errno.EPERM if write else errno.ENODATA)
        if name.startswith(b"security.") and write and ctx.uid != 0:
            raise _err(errno.EPERM)       # e.g. security.capability needs CAP_SETFCAP
        if name.startswith(b"user."):
            if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
                raise _err(errno.EPERM if write else errno.ENODATA)
            if stat.S_ISDIR(node.mode) and node.mode & stat.S_ISVTX and write \
                    and ctx.uid not in (0, node.uid):
                raise _err(errno.EPERM)
            self._need(node, os.W_OK if write else os.R_OK, ctx)

    def setxattr(self, inode: int, name: bytes, value: bytes, flags: int,
                 ctx: RequestContext) -> None:
        """Set an xattr (XATTR_CREATE: EEXIST if present, XATTR_REPLACE: ENODATA if not)."""
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise _err(errno.EINVAL)
        if len(value) > XATTR_SIZE_MAX:
            raise _err(errno.E2BIG)
        with self._lock:
            node = self._get(inode)
            self._check_xattr(node, name, ctx, True)
            self._immutable(node)
            present = node.xattrs is not None and name in node.xattrs
            if flags & XATTR_CREATE and present:
                raise _err(errno.EEXIST)
            if flags & XATTR_REPLACE and not present:
                raise _err(errno.ENODATA)
            old = len(name) + len(node.xattrs[name]) if node.xattrs and present else 0
            growth = len(name) + len(value) - old
            if growth > 0 and self._used + growth > self.max_bytes:
                raise _err(errno.ENOSPC)
            if node.xattrs is None:
                node.xattrs = {}
            node.xattrs[bytes(name)] = bytes(value)
            self._used += growth
            node.ctime = _now()

    def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        """Return an xattr's value or raise ENODATA."""
        with self._lock:
            node = self._get(inode)
            self._check_xattr(node, name, ctx, False)
            if node.xattrs is None or name not in node.xattrs:
                raise _err(errno.ENODATA)
            return node.xattrs[name]

    def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        """List xattr names (trusted.* only for root)."""
        with self._lock:
            node = self._get(inode)
            if not node.xattrs:
                return []
            return [n for n in node.xattrs
                    if ctx.uid == 0 or not n.startswith(b"trusted.")]

    def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove an xattr or raise ENODATA."""
        with self._lock:
            node = self._get(inode)
            self._check_xattr(node, name, ctx, True)
            self._immutable(node)
            if node.xattrs is None or name not in node.xattrs:
                raise _err(errno.ENODATA)
            self._used -= len(name) + len(node.xattrs.pop(name))
            if not node.xattrs:
                node.xattrs = None
            node.ctime = _now()

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

    def dump_state(self) -> bytes:
        """Serialize the whole filesystem: tree, data, counts, open handles and locks."""
        with self._lock:
            inodes = []
            for n in self._inodes.values():
                # the bytearrays themselves: pickled at once, under the lock (no copy)
                chunks = None if n.chunks is None else dict(n.chunks)
                dirstate = None
                if n.dir is not None:
                    dirstate = (n.dir.parent, n.dir.next_cookie,
                                [(name, ino, cookie)
                                 for name, ino, cookie in n.dir.iter_after(0)])
                inodes.append((n.ino, n.mode, n.nlink, n.uid, n.gid, n.rdev, n.size,
                               n.atime, n.mtime, n.ctime, n.btime, n.nlookup,
                               chunks, dirstate, n.target,
                               None if n.xattrs is None else dict(n.xattrs)))
            state = {
                "version": _STATE_VERSION,
                "generation": self._generation,
                "next_ino": self._next_ino,
                "next_fh": self._next_fh,
                "max_bytes": self.max_bytes,
                "max_inodes": self.max_inodes,
                "inodes": inodes,
                "handles": [(fh, h.ino, h.flags, h.is_dir) for fh, h in self._handles.items()],
                "linkable": sorted(self._linkable),
                **self.locks.export(),
                "iflags": dict(self._iflags),
            }
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def replay_started(self) -> None:
        """Keep unlinked inodes until :meth:`replay_finished` (the log has no FORGETs)."""
        with self._lock:
            self._replaying = True

    def replay_finished(self, lookups: Mapping[int, int],
                        changed: Collection[int] | None = None) -> None:
        """Take the kernel's lookup counts; free unlinked inodes nothing holds."""
        with self._lock:
            self._replaying = False
            inodes = self._inodes
            if changed is None:
                for ino, node in inodes.items():
                    node.nlookup = lookups.get(ino, 0)
            else:
                for ino in changed:
                    found = inodes.get(ino)
                    if found is not None:
                        found.nlookup = lookups.get(ino, 0)
            for node in [n for n in inodes.values() if n.nlink == 0]:
                self._maybe_free(node)

    def load_state(self, data: bytes) -> None:
        """Replace this filesystem's contents with a :meth:`dump_state` blob."""
        state = _NoGlobalsUnpickler(io.BytesIO(data)).load()
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("not a MemFS state of a supported version")
        inodes: dict[int, _Inode] = {}
        used = 0
        for (ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime,
             nlookup, chunks, dirstate, target, xattrs) in state["inodes"]:
            n = _Inode(ino, mode, uid, gid, 0)
            n.nlink, n.size = nlink, size
            n.atime, n.mtime, n.ctime, n.btime = atime, mtime, ctime, btime
            n.nlookup, n.xattrs = nlookup, xattrs
            if xattrs:
                used += _xattr_bytes(xattrs)
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                n.data = rdev
            elif target is not None:
                n.data = target
            if chunks is not None:
                # chunks are pickled bytearrays: take them as they are (no copy)
                n.data = {i: c if isinstance(c, bytearray) else bytearray(c)
                          for i, c in chunks.items()}
                used += sum(len(c) for c in chunks.values())
            if dirstate is not None:
                parent, next_cookie, entries = dirstate
                d = _Dir(parent)
                for name, child, cookie in entries:
                    d.add(name, child, cookie)
                d.next_cookie = next_cookie
                n.data = d
            inodes[ino] = n
        with self._lock:
            self._generation = state["generation"]
            self._next_ino = state["next_ino"]
            self._next_fh = state["next_fh"]
            self.max_bytes = state["max_bytes"]
            self.max_inodes = state["max_inodes"]
            self._inodes = inodes
            self._used = used
            self._handles = {fh: _Handle(ino, flags, is_dir)
                             for fh, ino, flags, is_dir in state["handles"]}
            self._nopen = {}
            for h in self._handles.values():
                self._nopen[h.ino] = self._nopen.get(h.ino, 0) + 1
            self._linkable = set(state["linkable"])
            self._iflags = dict(state.get("iflags") or {})
            self.locks.load(state["plocks"], state["flocks"])
