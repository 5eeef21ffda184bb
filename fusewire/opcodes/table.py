"""OPS: the one table that says what each opcode is.

Each row gives the request layout (fixed struct, NUL-terminated names,
trailing data), the reply (fixed struct or a variable kind), whether the
kernel waits for a reply at all, the :class:`~fusewire.Operations` handler,
the minor that introduced the opcode, whether the kernel caches ENOSYS for
it, whether executing it twice is harmless (recovery's reply journal keys on
that), and whether it belongs to a draft profile.

Dispatch, the debug trace, ``fusewire dump``, docs and the hypothesis
strategies all read this table; nothing about an opcode is declared anywhere
else.  Opcode numbers without a row are listed in :data:`UNSUPPORTED` with
the reason.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from fusewire.opcodes.flags import (
    DRAFT_FUSE_COMPOUND,
    DRAFT_FUSE_LOOKUP_HANDLE_V2,
    DRAFT_FUSE_LOOKUP_HANDLE_V3,
    DRAFT_FUSE_MKOBJ_HANDLE_V3,
    DRAFT_FUSE_REVALIDATE_FH,
    NotifyCode,
    Opcode,
)

__all__ = [
    "DRAFT_OPS",
    "NOTIFICATIONS",
    "OPS",
    "UNSUPPORTED",
    "NotifyInfo",
    "OpInfo",
    "Reply",
    "Trailing",
    "ops_for_profile",
]


class Trailing(enum.Enum):
    """What follows the fixed struct and the names in a request."""

    NONE = "none"
    DATA = "data"  # opaque bytes to the end (write data, xattr value, ioctl input)
    FORGETS = "forgets"  # batch_forget_in.count x forget_one
    MAPPINGS = "mappings"  # removemapping_in.count x removemapping_one
    HANDLE = "handle"  # DRAFT rfc-v2: the parent's fuse_file_handle as an extra in-arg


class Reply(enum.Enum):
    """The shape of a reply body."""

    NONE = "none"  # the kernel expects no reply at all
    EMPTY = "empty"  # header only
    STRUCT = "struct"  # exactly one fixed struct (``reply_struct``)
    ENTRY = "entry"  # entry_out (compat size by minor; + handle in draft profiles)
    ENTRY_OPEN = "entry_open"  # entry_out + open_out
    DATA = "data"  # opaque bytes, at most the requested size
    XATTR = "xattr"  # getxattr_out when size == 0, else data (ERANGE if too big)
    DIRENTS = "dirents"  # packed dirent records
    DIRENTSPLUS = "direntsplus"  # packed direntplus records
    IOCTL = "ioctl"  # ioctl_out + data
    INIT = "init"  # init_out, size by negotiated minor
    OPTIONAL = "optional"  # INTERRUPT: header-only reply allowed but not required


@dataclass(frozen=True)
class OpInfo:
    """One row of :data:`OPS`."""

    opcode: int
    name: str
    request: str | None  # fixed struct schema name
    names: int = 0  # NUL-terminated names after the struct
    trailing: Trailing = Trailing.NONE
    reply: Reply = Reply.EMPTY
    reply_struct: str | None = None
    handler: str | None = None  # Operations method; None: handled by the library
    since: int = 0
    ext: bool = False  # may carry request extensions (total_extlen)
    enosys_cached: bool = False  # the kernel remembers ENOSYS for this op
    idempotent: bool = True  # safe to execute twice (no reply journal needed)
    draft: str | None = None  # draft profile ("rfc-v2"/"rfc-v3"/"fusewire") or None
    doc: str = ""

    @property
    def no_reply(self) -> bool:
        """True when the kernel waits for no reply (FORGET, BATCH_FORGET, NOTIFY_REPLY)."""
        return self.reply is Reply.NONE


def _row(op: Opcode, request: str | None, **kw: object) -> OpInfo:
    return OpInfo(int(op), op.name, request, **kw)  # type: ignore[arg-type]


_E, _S, _D = Reply.ENTRY, Reply.STRUCT, Reply.DATA

OPS: dict[int, OpInfo] = {r.opcode: r for r in (
    _row(Opcode.LOOKUP, None, names=1, reply=_E, handler="lookup",
         doc="resolve a name in a directory"),
    _row(Opcode.FORGET, "forget_in", reply=Reply.NONE, handler="forget",
         doc="drop nlookup references to nodeid"),
    _row(Opcode.GETATTR, "getattr_in", reply=_S, reply_struct="attr_out", handler="getattr"),
    _row(Opcode.SETATTR, "setattr_in", reply=_S, reply_struct="attr_out", handler="setattr",
         since=1, idempotent=False),
    _row(Opcode.READLINK, None, reply=_D, handler="readlink"),
    _row(Opcode.SYMLINK, None, names=2, reply=_E, handler="symlink", since=1, ext=True,
         idempotent=False, doc="names: entry name, then link target"),
    _row(Opcode.MKNOD, "mknod_in", names=1, reply=_E, handler="mknod", since=1, ext=True,
         idempotent=False),
    _row(Opcode.MKDIR, "mkdir_in", names=1, reply=_E, handler="mkdir", since=1, ext=True,
         idempotent=False),
    _row(Opcode.UNLINK, None, names=1, handler="unlink", since=1, idempotent=False),
    _row(Opcode.RMDIR, None, names=1, handler="rmdir", since=1, idempotent=False),
    _row(Opcode.RENAME, "rename_in", names=2, handler="rename", since=1, idempotent=False),
    _row(Opcode.LINK, "link_in", names=1, reply=_E, handler="link", since=1,
         enosys_cached=True, idempotent=False, doc="header nodeid is the new parent"),
    _row(Opcode.OPEN, "open_in", reply=_S, reply_struct="open_out", handler="open", since=1,
         enosys_cached=True, idempotent=False),
    _row(Opcode.READ, "read_in", reply=_D, handler="read", since=1),
    _row(Opcode.WRITE, "write_in", trailing=Trailing.DATA, reply=_S, reply_struct="write_out",
         handler="write", since=1, idempotent=False),
    _row(Opcode.STATFS, None, reply=_S, reply_struct="statfs_out", handler="statfs"),
    _row(Opcode.RELEASE, "release_in", handler="release", since=1, idempotent=False),
    _row(Opcode.FSYNC, "fsync_in", handler="fsync", since=1, enosys_cached=True),
    _row(Opcode.SETXATTR, "setxattr_in", names=1, trailing=Trailing.DATA, handler="setxattr",
         since=1, enosys_cached=True, idempotent=False),
    _row(Opcode.GETXATTR, "getxattr_in", names=1, reply=Reply.XATTR, handler="getxattr",
         since=1, enosys_cached=True),
    _row(Opcode.LISTXATTR, "getxattr_in", reply=Reply.XATTR, handler="listxattr", since=1,
         enosys_cached=True),
    _row(Opcode.REMOVEXATTR, None, names=1, handler="removexattr", since=1,
         enosys_cached=True, idempotent=False),
    _row(Opcode.FLUSH, "flush_in", handler="flush", since=1, enosys_cached=True),
    _row(Opcode.INIT, "init_in", reply=Reply.INIT, handler="init",
         doc="negotiation; handled by the connection, then Operations.init()"),
    _row(Opcode.OPENDIR, "open_in", reply=_S, reply_struct="open_out", handler="opendir",
         since=1, enosys_cached=True, idempotent=False),
    _row(Opcode.READDIR, "read_in", reply=Reply.DIRENTS, handler="readdir", since=1),
    _row(Opcode.RELEASEDIR, "release_in", handler="releasedir", since=1, idempotent=False),
    _row(Opcode.FSYNCDIR, "fsync_in", handler="fsyncdir", since=2, enosys_cached=True),
    _row(Opcode.GETLK, "lk_in", reply=_S, reply_struct="lk_out", handler="getlk", since=7),
    _row(Opcode.SETLK, "lk_in", handler="setlk", since=7, idempotent=False,
         doc="FUSE_LK_FLOCK in lk_flags routes to Operations.flock"),
    _row(Opcode.SETLKW, "lk_in", handler="setlk", since=7, idempotent=False),
    _row(Opcode.ACCESS, "access_in", handler="access", since=3, enosys_cached=True),
    _row(Opcode.CREATE, "create_in", names=1, reply=Reply.ENTRY_OPEN, handler="create",
         since=3, ext=True, enosys_cached=True, idempotent=False),
    _row(Opcode.INTERRUPT, "interrupt_in", reply=Reply.OPTIONAL, handler=None, since=7,
         doc="handled by the library: marks the target interrupted"),
    _row(Opcode.BMAP, "bmap_in", reply=_S, reply_struct="bmap_out", handler="bmap", since=8,
         enosys_cached=True),
    _row(Opcode.DESTROY, None, handler="destroy", since=8, doc="fuseblk/virtiofs only"),
    _row(Opcode.IOCTL, "ioctl_in", trailing=Trailing.DATA, reply=Reply.IOCTL, handler="ioctl",
         since=11, idempotent=False),
    _row(Opcode.POLL, "poll_in", reply=_S, reply_struct="poll_out", handler="poll", since=11,
         enosys_cached=True),
    _row(Opcode.NOTIFY_REPLY, "notify_retrieve_in", trailing=Trailing.DATA, reply=Reply.NONE,
         handler=None, since=15, doc="answer to NOTIFY_RETRIEVE; handled by the library"),
    _row(Opcode.BATCH_FORGET, "batch_forget_in", trailing=Trailing.FORGETS, reply=Reply.NONE,
         handler="forget", since=16),
    _row(Opcode.FALLOCATE, "fallocate_in", handler="fallocate", since=19, enosys_cached=True,
         idempotent=False),
    _row(Opcode.READDIRPLUS, "read_in", reply=Reply.DIRENTSPLUS, handler="readdir", since=21),
    _row(Opcode.RENAME2, "rename2_in", names=2, handler="rename", since=23, enosys_cached=True,
         idempotent=False),
    _row(Opcode.LSEEK, "lseek_in", reply=_S, reply_struct="lseek_out", handler="lseek",
         since=24, enosys_cached=True),
    _row(Opcode.COPY_FILE_RANGE, "copy_file_range_in", reply=_S, reply_struct="write_out",
         handler="copy_file_range", since=28, enosys_cached=True, idempotent=False),
    _row(Opcode.SETUPMAPPING, "setupmapping_in", handler=None, since=31,
         doc="virtiofs DAX only; answered ENOSYS"),
    _row(Opcode.REMOVEMAPPING, "removemapping_in", trailing=Trailing.MAPPINGS, handler=None,
         since=31, doc="virtiofs DAX only; answered ENOSYS"),
    _row(Opcode.SYNCFS, "syncfs_in", handler="syncfs", since=34, enosys_cached=True),
    _row(Opcode.TMPFILE, "create_in", names=1, reply=Reply.ENTRY_OPEN, handler="tmpfile",
         since=37, ext=True, enosys_cached=True, idempotent=False, doc='name is "/"'),
    _row(Opcode.STATX, "statx_in", reply=_S, reply_struct="statx_out", handler="statx",
         since=39, enosys_cached=True),
    _row(Opcode.COPY_FILE_RANGE_64, "copy_file_range_in", reply=_S,
         reply_struct="copy_file_range_out", handler="copy_file_range", since=45,
         enosys_cached=True, idempotent=False),
    _row(Opcode.CUSE_INIT, "cuse_init_in", reply=Reply.DATA, handler=None,
         doc="/dev/cuse only; a FUSE server answers ENOSYS"),
)}

#: Opcode numbers in 1..53 without a row, and why.
UNSUPPORTED: dict[int, str] = {
    7: "GETDIR: removed from the protocol in 2005 (never sent)",
    19: "unused in every protocol version",
}

#: Draft profiles: opcode rows that exist only when a server opts in
#: (``Config(lookup_handle=...)``) and HAS_LOOKUP_HANDLE (bit 43) is in the
#: INIT reply.  ``since`` is the minor the RFCs propose (46); the rows are gated
#: by the flag, not by the minor (fusewire speaks at most 7.45).  Layouts and
#: citations: :mod:`fusewire.server.handles` and docs/draft-handles.md.
#:
#: ``rfc-v2`` and ``rfc-v3`` follow the posted LOOKUP_HANDLE patches (RFC v2
#: <20251212181254.59365-1-luis@igalia.com>, RFC v3
#: <20260225112439.27276-1-luis@igalia.com> on the FUSE_COMPOUND series v5
#: <20260210-fuse-compounds-upstream-v5-0-ea0585f62daa@ddn.com>); ``fusewire``
#: is fusewire's own extension (REVALIDATE_FH, handles on every entry reply
#: and READDIRPLUS) and is never mixed into the RFC profiles.
DRAFT_OPS: dict[str, dict[int, OpInfo]] = {
    "rfc-v2": {
        DRAFT_FUSE_LOOKUP_HANDLE_V2: OpInfo(
            DRAFT_FUSE_LOOKUP_HANDLE_V2, "LOOKUP_HANDLE", None, names=1,
            trailing=Trailing.HANDLE, reply=Reply.ENTRY, handler="lookup", since=46,
            draft="rfc-v2",
            doc="RFC v2 4/6: replaces LOOKUP; name, NUL, then the parent's fuse_file_handle "
                "(absent when the kernel holds none, e.g. the root); reply entry_out + "
                "fuse_file_handle {u32 size, u32 type} + size bytes, 1 <= size < max_handle_sz"),
    },
    "rfc-v3": {
        DRAFT_FUSE_COMPOUND: OpInfo(
            DRAFT_FUSE_COMPOUND, "COMPOUND", "compound_in", trailing=Trailing.DATA,
            reply=Reply.DATA, handler=None, since=46, idempotent=False, draft="rfc-v3",
            doc="compound series v5 1/3: fuse_compound_in + complete sub-requests; reply "
                "fuse_compound_out + one complete sub-reply per sub-request (handled by the "
                "library through this table)"),
        DRAFT_FUSE_LOOKUP_HANDLE_V3: OpInfo(
            DRAFT_FUSE_LOOKUP_HANDLE_V3, "LOOKUP_HANDLE", None, names=1, ext=True,
            reply=Reply.ENTRY, handler="lookup", since=46, draft="rfc-v3",
            doc="RFC v3 6/8: name (+ FUSE_EXT_HANDLE of the parent); reply entry2_out + "
                "fuse_file_handle {u16 size} + size bytes; sent inside a COMPOUND with a STATX"),
        DRAFT_FUSE_MKOBJ_HANDLE_V3: OpInfo(
            DRAFT_FUSE_MKOBJ_HANDLE_V3, "MKOBJ_HANDLE", "create_in", names=1, ext=True,
            reply=Reply.ENTRY, handler="create", since=46, draft="rfc-v3", idempotent=False,
            doc="RFC v3 8/8: create a regular file; reply entry2_out + fuse_file_handle; sent "
                "inside an atomic COMPOUND with STATX and OPEN"),
    },
    "fusewire": {
        DRAFT_FUSE_LOOKUP_HANDLE_V3: OpInfo(
            DRAFT_FUSE_LOOKUP_HANDLE_V3, "LOOKUP_HANDLE", None, names=1, ext=True,
            reply=Reply.ENTRY, handler="lookup", since=46, draft="fusewire",
            doc="fusewire profile: lookup returning entry2_out + file handle; parent via "
                "FUSE_EXT_HANDLE; an empty name looks up the object the extension's handle "
                "names"),
        DRAFT_FUSE_MKOBJ_HANDLE_V3: OpInfo(
            DRAFT_FUSE_MKOBJ_HANDLE_V3, "MKOBJ_HANDLE", "create_in", names=1, ext=True,
            reply=Reply.ENTRY_OPEN, handler="create", since=46, draft="fusewire",
            idempotent=False,
            doc="fusewire profile: create-and-open; reply entry2_out + handle + open_out"),
        DRAFT_FUSE_REVALIDATE_FH: OpInfo(
            DRAFT_FUSE_REVALIDATE_FH, "REVALIDATE_FH", "revalidate_fh_in",
            trailing=Trailing.DATA, reply=Reply.ENTRY, handler="inode_for_handle",
            since=46, draft="fusewire",
            doc="fusewire profile: does this handle still name the same object? "
                "(body + fuse_file_handle; reply entry_out + handle; counts no lookup)"),
    },
}


def ops_for_profile(profile: str | None) -> dict[int, OpInfo]:
    """The opcode table of a session: upstream rows plus the chosen draft profile's."""
    if profile is None:
        return OPS
    table = dict(OPS)
    if profile == "rfc-v2":
        # RFC v2 4/6 (create_new_entry, fuse_create_open): the create-type
        # requests carry the parent's fuse_file_handle as one more in-arg
        # after the names, before any extension block.
        for op in _V2_PARENT_HANDLE:
            table[op] = dataclasses.replace(OPS[op], trailing=Trailing.HANDLE, draft=profile)
    table.update(DRAFT_OPS[profile])
    return table


_V2_PARENT_HANDLE = (Opcode.CREATE, Opcode.MKNOD, Opcode.MKDIR, Opcode.SYMLINK,
                     Opcode.LINK, Opcode.TMPFILE)


@dataclass(frozen=True)
class NotifyInfo:
    """One notification: its payload struct, whether a name or data follows, since minor."""

    code: NotifyCode
    payload: str | None
    trailing: str  # "none", "name" (NUL-terminated), "data", "nodeids"
    since: int
    method: str  # Server method that sends it


NOTIFICATIONS: dict[int, NotifyInfo] = {n.code: n for n in (
    NotifyInfo(NotifyCode.POLL, "notify_poll_wakeup_out", "none", 11, "notify_poll"),
    NotifyInfo(NotifyCode.INVAL_INODE, "notify_inval_inode_out", "none", 12,
               "notify_inval_inode"),
    NotifyInfo(NotifyCode.INVAL_ENTRY, "notify_inval_entry_out", "name", 12,
               "notify_inval_entry"),
    NotifyInfo(NotifyCode.STORE, "notify_store_out", "data", 15, "notify_store"),
    NotifyInfo(NotifyCode.RETRIEVE, "notify_retrieve_out", "none", 15, "notify_retrieve"),
    NotifyInfo(NotifyCode.DELETE, "notify_delete_out", "name", 18, "notify_delete"),
    NotifyInfo(NotifyCode.RESEND, None, "none", 40, "notify_resend"),
    NotifyInfo(NotifyCode.INC_EPOCH, None, "none", 44, "notify_inc_epoch"),
    NotifyInfo(NotifyCode.PRUNE, "notify_prune_out", "nodeids", 45, "notify_prune"),
)}
