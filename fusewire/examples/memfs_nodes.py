"""MemFS's records: inodes, directories, open handles, limits and name rules.

One job: the in-memory objects :class:`fusewire.examples.memfs.MemFS` is made
of and the constants and small checks its operations share.  No operation
lives here.
"""

from __future__ import annotations

import errno
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fusewire.readdir import PackedListing
from fusewire.recovery_api import now_ns
from fusewire.types import FUSEError

if TYPE_CHECKING:
    from fusewire.types import RequestContext



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
        #: chunk index -> bytearray (heap) or int (block store: memfs_blocks)
        self.data: dict[int, Any] | _Dir | bytes | int | None = None
        self.xattrs: dict[bytes, bytes] | None = None
        #: st_blocks of the chunk map, or -1 when a write changed it since
        self.blocks = -1

    @property
    def chunks(self) -> dict[int, Any] | None:
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


_SLASH = ord("/")


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG)
    # int needles: a memchr each (``b"/" in name`` takes the substring search, ~6x slower)
    if not name or _SLASH in name or 0 in name:
        raise _err(errno.EINVAL)


def _check_new_name(name: bytes) -> None:
    _check_name(name)
    if name in (b".", b".."):
        raise _err(errno.EEXIST)
