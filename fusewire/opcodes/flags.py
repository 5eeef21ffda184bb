"""Opcode numbers, notification codes, flag families and kernel constants.

Values are from the 7.45 kernel header (linux-6.18 ``include/uapi/linux/fuse.h``).
Comments give the protocol minor that introduced each item.  Draft items
(not upstream) are marked DRAFT and are never negotiated unless a server
opts into a draft profile.
"""

from __future__ import annotations

import enum

__all__ = [
    "ATTR",
    "CUSE_UNRESTRICTED_IOCTL",
    "DRAFT_FUSE_COMPOUND",
    "DRAFT_FUSE_COMPOUND_ATOMIC",
    "DRAFT_FUSE_COMPOUND_SEPARABLE",
    "DRAFT_FUSE_LOOKUP_HANDLE_V2",
    "DRAFT_FUSE_LOOKUP_HANDLE_V3",
    "DRAFT_FUSE_MKOBJ_HANDLE_V3",
    "DRAFT_FUSE_REVALIDATE_FH",
    "FATTR",
    "FOPEN",
    "FSYNC",
    "FUSE_COMPAT_22_INIT_OUT_SIZE",
    "FUSE_COMPAT_ATTR_OUT_SIZE",
    "FUSE_COMPAT_ENTRY_OUT_SIZE",
    "FUSE_COMPAT_INIT_OUT_SIZE",
    "FUSE_COMPAT_MKNOD_IN_SIZE",
    "FUSE_COMPAT_SETXATTR_IN_SIZE",
    "FUSE_COMPAT_STATFS_SIZE",
    "FUSE_COMPAT_WRITE_IN_SIZE",
    "FUSE_EXT_GROUPS",
    "FUSE_EXT_HANDLE",
    "FUSE_INVALID_UIDGID",
    "FUSE_IOCTL_MAX_IOV",
    "FUSE_KERNEL_MINOR_VERSION",
    "FUSE_KERNEL_VERSION",
    "FUSE_MAX_HANDLE_SZ",
    "FUSE_MAX_NR_SECCTX",
    "FUSE_MIN_READ_BUFFER",
    "FUSE_ROOT_ID",
    "FUSE_UNIQUE_RESEND",
    "GETATTR",
    "INVAL_ENTRY",
    "IOCTL",
    "InitFlag",
    "LK",
    "NotifyCode",
    "OPEN_IN",
    "Opcode",
    "POLL",
    "READ",
    "RELEASE",
    "RENAME",
    "SETXATTR",
    "WRITE",
]

#: Major protocol version; a kernel with any other major is refused.
FUSE_KERNEL_VERSION = 7
#: Newest minor this library implements.
FUSE_KERNEL_MINOR_VERSION = 45
FUSE_ROOT_ID = 1
#: Minimum size of the buffer passed to read(2) on /dev/fuse.
FUSE_MIN_READ_BUFFER = 8192
#: Bit 63 of ``unique``: the kernel re-sent this request (NOTIFY_RESEND, 7.40).
FUSE_UNIQUE_RESEND = 1 << 63
FUSE_INVALID_UIDGID = 0xFFFFFFFF
FUSE_MAX_NR_SECCTX = 31
#: Request extension type carrying supplementary groups (7.38).
FUSE_EXT_GROUPS = 32
#: DRAFT (LOOKUP_HANDLE RFC v3): request extension carrying the parent's handle.
FUSE_EXT_HANDLE = 33
#: DRAFT (LOOKUP_HANDLE RFC v1/v2): largest file handle, as MAX_HANDLE_SZ.
FUSE_MAX_HANDLE_SZ = 128
FUSE_IOCTL_MAX_IOV = 256
CUSE_UNRESTRICTED_IOCTL = 1 << 0

FUSE_COMPAT_ENTRY_OUT_SIZE = 120
FUSE_COMPAT_ATTR_OUT_SIZE = 96
FUSE_COMPAT_MKNOD_IN_SIZE = 8
FUSE_COMPAT_WRITE_IN_SIZE = 24
FUSE_COMPAT_STATFS_SIZE = 48
FUSE_COMPAT_INIT_OUT_SIZE = 8
FUSE_COMPAT_22_INIT_OUT_SIZE = 24
FUSE_COMPAT_SETXATTR_IN_SIZE = 8

#: DRAFT opcode numbers of the LOOKUP_HANDLE RFC revisions.  They collide
#: across revisions (v3 gave 54 to FUSE_COMPOUND), so they live outside
#: :class:`Opcode` and only exist inside a negotiated draft profile.
DRAFT_FUSE_LOOKUP_HANDLE_V2 = 54
DRAFT_FUSE_LOOKUP_HANDLE_V3 = 55
DRAFT_FUSE_MKOBJ_HANDLE_V3 = 56
#: fusewire's own number for REVALIDATE_FH (the RFCs only sketch it).
DRAFT_FUSE_REVALIDATE_FH = 57
#: DRAFT (FUSE_COMPOUND, Horst Birthelmer, "[PATCH v5 1/3]",
#: <20260210-fuse-compounds-upstream-v5-1-ea0585f62daa@ddn.com>, which the
#: LOOKUP_HANDLE RFC v3 is based on): a request made of several requests.
DRAFT_FUSE_COMPOUND = 54
#: fuse_compound_in.flags (v5 values): the requests need no result of another.
DRAFT_FUSE_COMPOUND_SEPARABLE = 1 << 0
#: fuse_compound_in.flags (v5 values): the server must execute the whole as one.
DRAFT_FUSE_COMPOUND_ATOMIC = 1 << 1


class Opcode(enum.IntEnum):
    """Request opcodes (``fuse_in_header.opcode``)."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    COPY_FILE_RANGE_64 = 53
    CUSE_INIT = 4096


class NotifyCode(enum.IntEnum):
    """Notification codes (``fuse_out_header.error`` with ``unique == 0``)."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7  # 7.40
    INC_EPOCH = 8  # 7.44
    PRUNE = 9  # 7.45


class InitFlag(enum.IntFlag):
    """The 64-bit INIT flag set: ``flags | flags2 << 32`` (flags2 needs INIT_EXT)."""

    ASYNC_READ = 1 << 0  # 7.6
    POSIX_LOCKS = 1 << 1  # 7.7
    FILE_OPS = 1 << 2  # never used
    ATOMIC_O_TRUNC = 1 << 3  # 7.9
    EXPORT_SUPPORT = 1 << 4  # 7.10
    BIG_WRITES = 1 << 5  # 7.9
    DONT_MASK = 1 << 6  # 7.12
    SPLICE_WRITE = 1 << 7  # 7.14
    SPLICE_MOVE = 1 << 8  # 7.14
    SPLICE_READ = 1 << 9  # 7.14
    FLOCK_LOCKS = 1 << 10  # 7.17
    HAS_IOCTL_DIR = 1 << 11  # 7.18
    AUTO_INVAL_DATA = 1 << 12  # 7.20
    DO_READDIRPLUS = 1 << 13  # 7.21
    READDIRPLUS_AUTO = 1 << 14  # 7.21
    ASYNC_DIO = 1 << 15  # 7.22
    WRITEBACK_CACHE = 1 << 16  # 7.23
    NO_OPEN_SUPPORT = 1 << 17  # 7.23
    PARALLEL_DIROPS = 1 << 18  # 7.25
    HANDLE_KILLPRIV = 1 << 19  # 7.26
    POSIX_ACL = 1 << 20  # 7.26
    ABORT_ERROR = 1 << 21  # 7.27
    MAX_PAGES = 1 << 22  # 7.28
    CACHE_SYMLINKS = 1 << 23  # 7.28
    NO_OPENDIR_SUPPORT = 1 << 24  # 7.29
    EXPLICIT_INVAL_DATA = 1 << 25  # 7.30
    MAP_ALIGNMENT = 1 << 26  # 7.31
    SUBMOUNTS = 1 << 27  # 7.32
    HANDLE_KILLPRIV_V2 = 1 << 28  # 7.33
    SETXATTR_EXT = 1 << 29  # 7.33
    INIT_EXT = 1 << 30  # 7.36
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32  # 7.36
    HAS_INODE_DAX = 1 << 33  # 7.36
    CREATE_SUPP_GROUP = 1 << 34  # 7.38
    HAS_EXPIRE_ONLY = 1 << 35  # 7.38
    DIRECT_IO_ALLOW_MMAP = 1 << 36  # 7.39
    PASSTHROUGH = 1 << 37  # 7.40
    NO_EXPORT_SUPPORT = 1 << 38  # 7.40
    HAS_RESEND = 1 << 39  # 7.40
    ALLOW_IDMAP = 1 << 40  # 7.41
    OVER_IO_URING = 1 << 41  # 7.42
    REQUEST_TIMEOUT = 1 << 42  # 7.43
    # DRAFT: LOOKUP_HANDLE RFC (bit 43 is claimed by several unmerged proposals).
    HAS_LOOKUP_HANDLE = 1 << 43


class FATTR(enum.IntFlag):
    """``fuse_setattr_in.valid``: which attributes SETATTR changes."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6  # 7.3
    ATIME_NOW = 1 << 7  # 7.9
    MTIME_NOW = 1 << 8  # 7.9
    LOCKOWNER = 1 << 9  # 7.9
    CTIME = 1 << 10  # 7.23
    KILL_SUIDGID = 1 << 11  # 7.33


class FOPEN(enum.IntFlag):
    """``fuse_open_out.open_flags``."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2  # 7.10
    CACHE_DIR = 1 << 3  # 7.28
    STREAM = 1 << 4  # 7.31
    NOFLUSH = 1 << 5  # 7.35
    PARALLEL_DIRECT_WRITES = 1 << 6  # 7.38
    PASSTHROUGH = 1 << 7  # 7.40


class OPEN_IN(enum.IntFlag):  # noqa: N801 - kernel family name
    """``fuse_open_in.open_flags`` / ``fuse_create_in.open_flags`` (7.33)."""

    KILL_SUIDGID = 1 << 0


class RELEASE(enum.IntFlag):
    """``fuse_release_in.release_flags``."""

    FLUSH = 1 << 0
    FLOCK_UNLOCK = 1 << 1  # 7.17


class GETATTR(enum.IntFlag):
    """``fuse_getattr_in.getattr_flags``."""

    FH = 1 << 0


class LK(enum.IntFlag):
    """``fuse_lk_in.lk_flags``."""

    FLOCK = 1 << 0


class WRITE(enum.IntFlag):
    """``fuse_write_in.write_flags``."""

    CACHE = 1 << 0
    LOCKOWNER = 1 << 1
    KILL_SUIDGID = 1 << 2


class READ(enum.IntFlag):
    """``fuse_read_in.read_flags``."""

    LOCKOWNER = 1 << 1


class IOCTL(enum.IntFlag):
    """``fuse_ioctl_in.flags`` / ``fuse_ioctl_out.flags``."""

    COMPAT = 1 << 0
    UNRESTRICTED = 1 << 1
    RETRY = 1 << 2
    BIT32 = 1 << 3  # FUSE_IOCTL_32BIT, 7.16
    DIR = 1 << 4  # 7.18
    COMPAT_X32 = 1 << 5  # 7.30


class POLL(enum.IntFlag):
    """``fuse_poll_in.flags``."""

    SCHEDULE_NOTIFY = 1 << 0


class FSYNC(enum.IntFlag):
    """``fuse_fsync_in.fsync_flags``."""

    FDATASYNC = 1 << 0


class SETXATTR(enum.IntFlag):
    """``fuse_setxattr_in.setxattr_flags`` (7.33)."""

    ACL_KILL_SGID = 1 << 0


class RENAME(enum.IntFlag):
    """``fuse_rename2_in.flags``."""

    NOREPLACE = 1 << 0
    EXCHANGE = 1 << 1
    WHITEOUT = 1 << 2


class ATTR(enum.IntFlag):
    """``fuse_attr.flags`` (7.32)."""

    SUBMOUNT = 1 << 0
    DAX = 1 << 1  # 7.36


class INVAL_ENTRY(enum.IntFlag):  # noqa: N801 - kernel family name
    """``fuse_notify_inval_entry_out.flags`` (7.38)."""

    EXPIRE_ONLY = 1 << 0
