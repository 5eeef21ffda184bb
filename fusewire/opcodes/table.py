"""OPS: the one table that says what each opcode is.

Each row gives the request layout (fixed struct, NUL-terminated names,
trailing data), the reply (fixed struct or a variable kind), whether the
kernel waits for a reply at all, the :class:`~fusewire.Operations` handler,
the minor that introduced the opcode, whether the kernel caches ENOSYS for
it, whether executing it twice is harmless (recovery's reply journal keys on
that), whether it belongs to a draft profile, and the opcode sets other
modules need (create-type, opens, releases, background, namespace-changing,
parent-handle, sized data): those are row fields, so a set is never
re-declared as a literal elsewhere (``tests/test_opcodes.py`` fails if one is).

The connection's parser, the emulator's checks, the debug trace, ``fusewire
dump``, the hypothesis strategies, the recovery journal and takeover read this
table, and ``docs/protocol-reference.md`` is generated from it
(``python -m fusewire.opcodes.reference``).  The dispatcher binds each
opcode's server function from the row's ``serve`` field (draft profiles
included), never by building a method name from the opcode's name; the reply
body's shape is the row's ``reply``/``reply_struct``.  Opcode numbers
without a row are listed in :data:`UNSUPPORTED` with the reason.
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
    "PARENT_HANDLE_OPS",
    "ops_for_profile",
    "ops_where",
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
    #: the server's function that answers this opcode: the dispatcher binds
    #: ``Dispatcher.<serve>`` from this field (None: answered ENOSYS)
    serve: str | None = None
    since: int = 0
    ext: bool = False  # may carry request extensions (total_extlen)
    enosys_cached: bool = False  # the kernel remembers ENOSYS for this op
    idempotent: bool = True  # safe to execute twice (no reply journal needed)
    draft: str | None = None  # draft profile ("rfc-v2"/"rfc-v3"/"fusewire") or None
    #: a new name whose entry the reply returns (the kernel takes one lookup;
    #: nodeid 0 or 1 is a protocol error): MKNOD, MKDIR, SYMLINK, LINK, CREATE, TMPFILE
    create_type: bool = False
    #: the reply carries a file handle that a later RELEASE/RELEASEDIR gives back
    opens: bool = False
    #: gives back a file handle (the counterpart of ``opens``)
    releases: bool = False
    #: adds, removes or renames directory entries (recovery's intents key on it)
    namespace: bool = False
    #: the header nodeid is a directory that a draft handle profile may also
    #: name by file handle (rfc-v2: an in-arg; rfc-v3, fusewire: FUSE_EXT_HANDLE)
    parent_handle: bool = False
    #: sent without the caller's credentials (uid, gid and pid are 0): forgets,
    #: releases and interrupts are issued by the kernel on nobody's behalf
    background: bool = False
    #: the fixed struct's ``size`` field counts the trailing data exactly
    sized_data: bool = False
    #: the server function also calls ``Operations.flock`` besides ``handler``
    #: (SETLK/SETLKW with FUSE_LK_FLOCK, RELEASE with FUSE_RELEASE_FLOCK_UNLOCK)
    calls_flock: bool = False
    doc: str = ""

    @property
    def no_reply(self) -> bool:
        """True when the kernel waits for no reply (FORGET, BATCH_FORGET, NOTIFY_REPLY)."""
        return self.reply is Reply.NONE

    @property
    def needs_reply(self) -> bool:
        """True when the kernel waits for a reply (not NONE; INTERRUPT's is optional)."""
        return self.reply is not Reply.NONE and self.reply is not Reply.OPTIONAL


def _row(op: Opcode, request: str | None, **kw: object) -> OpInfo:
    return OpInfo(int(op), op.name, request, **kw)  # type: ignore[arg-type]


_E, _S, _D = Reply.ENTRY, Reply.STRUCT, Reply.DATA

OPS: dict[int, OpInfo] = {r.opcode: r for r in (
    _row(Opcode.LOOKUP, None, names=1, reply=_E, handler="lookup", serve="_op_lookup",
         parent_handle=True, doc="resolve a name in a directory"),
    _row(Opcode.FORGET, "forget_in", reply=Reply.NONE, handler="forget", serve="_op_forget",
         background=True, doc="drop nlookup references to nodeid"),
    _row(Opcode.GETATTR, "getattr_in", reply=_S, reply_struct="attr_out", handler="getattr",
         serve="_op_getattr"),
    _row(Opcode.SETATTR, "setattr_in", reply=_S, reply_struct="attr_out", handler="setattr",
         serve="_op_setattr", since=1, idempotent=False),
    _row(Opcode.READLINK, None, reply=_D, handler="readlink", serve="_op_readlink"),
    _row(Opcode.SYMLINK, None, names=2, reply=_E, handler="symlink", serve="_op_symlink", since=1,
         ext=True, idempotent=False, create_type=True, namespace=True, parent_handle=True,
         doc="names: entry name, then link target"),
    _row(Opcode.MKNOD, "mknod_in", names=1, reply=_E, handler="mknod", serve="_op_mknod", since=1,
         ext=True, idempotent=False, create_type=True, namespace=True, parent_handle=True),
    _row(Opcode.MKDIR, "mkdir_in", names=1, reply=_E, handler="mkdir", serve="_op_mkdir", since=1,
         ext=True, idempotent=False, create_type=True, namespace=True, parent_handle=True),
    _row(Opcode.UNLINK, None, names=1, handler="unlink", serve="_op_unlink", since=1,
         idempotent=False, namespace=True),
    _row(Opcode.RMDIR, None, names=1, handler="rmdir", serve="_op_rmdir", since=1, idempotent=False,
         namespace=True),
    _row(Opcode.RENAME, "rename_in", names=2, handler="rename", serve="_op_rename", since=1,
         idempotent=False, namespace=True),
    _row(Opcode.LINK, "link_in", names=1, reply=_E, handler="link", serve="_op_link", since=1,
         enosys_cached=True, idempotent=False, create_type=True, namespace=True,
         parent_handle=True, doc="header nodeid is the new parent"),
    _row(Opcode.OPEN, "open_in", reply=_S, reply_struct="open_out", handler="open",
         serve="_op_open", since=1, enosys_cached=True, idempotent=False, opens=True),
    _row(Opcode.READ, "read_in", reply=_D, handler="read", serve="_op_read", since=1),
    _row(Opcode.WRITE, "write_in", trailing=Trailing.DATA, reply=_S, reply_struct="write_out",
         handler="write", serve="_op_write", since=1, idempotent=False, sized_data=True),
    _row(Opcode.STATFS, None, reply=_S, reply_struct="statfs_out", handler="statfs",
         serve="_op_statfs"),
    _row(Opcode.RELEASE, "release_in", handler="release", serve="_op_release", since=1,
         calls_flock=True, idempotent=False, releases=True, background=True),
    _row(Opcode.FSYNC, "fsync_in", handler="fsync", serve="_op_fsync", since=1, enosys_cached=True),
    _row(Opcode.SETXATTR, "setxattr_in", names=1, trailing=Trailing.DATA, handler="setxattr",
         serve="_op_setxattr", since=1, enosys_cached=True, idempotent=False, sized_data=True),
    _row(Opcode.GETXATTR, "getxattr_in", names=1, reply=Reply.XATTR, handler="getxattr",
         serve="_op_getxattr", since=1, enosys_cached=True),
    _row(Opcode.LISTXATTR, "getxattr_in", reply=Reply.XATTR, handler="listxattr",
         serve="_op_listxattr", since=1, enosys_cached=True),
    _row(Opcode.REMOVEXATTR, None, names=1, handler="removexattr", serve="_op_removexattr", since=1,
         enosys_cached=True, idempotent=False),
    _row(Opcode.FLUSH, "flush_in", handler="flush", serve="_op_flush", since=1, enosys_cached=True,
         idempotent=False, doc="drops the closing lock owner's POSIX locks (journaled)"),
    _row(Opcode.INIT, "init_in", reply=Reply.INIT, handler="init", serve="_op_init",
         doc="negotiation; handled by the connection, then Operations.init()"),
    _row(Opcode.OPENDIR, "open_in", reply=_S, reply_struct="open_out", handler="opendir",
         serve="_op_opendir", since=1, enosys_cached=True, idempotent=False, opens=True),
    _row(Opcode.READDIR, "read_in", reply=Reply.DIRENTS, handler="readdir", serve="_op_readdir",
         since=1),
    _row(Opcode.RELEASEDIR, "release_in", handler="releasedir", serve="_op_releasedir", since=1,
         idempotent=False, releases=True, background=True),
    _row(Opcode.FSYNCDIR, "fsync_in", handler="fsyncdir", serve="_op_fsyncdir", since=2,
         enosys_cached=True),
    _row(Opcode.GETLK, "lk_in", reply=_S, reply_struct="lk_out", handler="getlk", serve="_op_getlk",
         since=7),
    _row(Opcode.SETLK, "lk_in", handler="setlk", serve="_op_setlk", since=7, idempotent=False,
         calls_flock=True, doc="FUSE_LK_FLOCK in lk_flags routes to Operations.flock"),
    _row(Opcode.SETLKW, "lk_in", handler="setlk", serve="_op_setlkw", since=7, idempotent=False,
         calls_flock=True),
    _row(Opcode.ACCESS, "access_in", handler="access", serve="_op_access", since=3,
         enosys_cached=True),
    _row(Opcode.CREATE, "create_in", names=1, reply=Reply.ENTRY_OPEN, handler="create",
         serve="_op_create", since=3, ext=True, enosys_cached=True, idempotent=False,
         create_type=True, opens=True, namespace=True, parent_handle=True),
    _row(Opcode.INTERRUPT, "interrupt_in", reply=Reply.OPTIONAL, handler=None,
         serve="_op_interrupt", since=7, background=True,
         doc="handled by the library: marks the target interrupted"),
    _row(Opcode.BMAP, "bmap_in", reply=_S, reply_struct="bmap_out", handler="bmap",
         serve="_op_bmap", since=8, enosys_cached=True),
    _row(Opcode.DESTROY, None, handler="destroy", serve="_op_destroy", since=8,
         doc="fuseblk/virtiofs only"),
    _row(Opcode.IOCTL, "ioctl_in", trailing=Trailing.DATA, reply=Reply.IOCTL, handler="ioctl",
         serve="_op_ioctl", since=11, idempotent=False),
    _row(Opcode.POLL, "poll_in", reply=_S, reply_struct="poll_out", handler="poll",
         serve="_op_poll", since=11, enosys_cached=True),
    _row(Opcode.NOTIFY_REPLY, "notify_retrieve_in", trailing=Trailing.DATA, reply=Reply.NONE,
         handler=None, serve="_op_notify_reply", since=15,
         doc="answer to NOTIFY_RETRIEVE; handled by the library"),
    _row(Opcode.BATCH_FORGET, "batch_forget_in", trailing=Trailing.FORGETS, reply=Reply.NONE,
         handler="forget", serve="_op_batch_forget", since=16, background=True),
    _row(Opcode.FALLOCATE, "fallocate_in", handler="fallocate", serve="_op_fallocate", since=19,
         enosys_cached=True, idempotent=False),
    _row(Opcode.READDIRPLUS, "read_in", reply=Reply.DIRENTSPLUS, handler="readdir",
         serve="_op_readdirplus", since=21),
    _row(Opcode.RENAME2, "rename2_in", names=2, handler="rename", serve="_op_rename2", since=23,
         enosys_cached=True, idempotent=False, namespace=True),
    _row(Opcode.LSEEK, "lseek_in", reply=_S, reply_struct="lseek_out", handler="lseek",
         serve="_op_lseek", since=24, enosys_cached=True),
    _row(Opcode.COPY_FILE_RANGE, "copy_file_range_in", reply=_S, reply_struct="write_out",
         handler="copy_file_range", serve="_op_copy_file_range", since=28, enosys_cached=True,
         idempotent=False),
    _row(Opcode.SETUPMAPPING, "setupmapping_in", handler=None, since=31,
         doc="virtiofs DAX only; answered ENOSYS"),
    _row(Opcode.REMOVEMAPPING, "removemapping_in", trailing=Trailing.MAPPINGS, handler=None,
         since=31, doc="virtiofs DAX only; answered ENOSYS"),
    _row(Opcode.SYNCFS, "syncfs_in", handler="syncfs", serve="_op_syncfs", since=34,
         enosys_cached=True),
    _row(Opcode.TMPFILE, "create_in", names=1, reply=Reply.ENTRY_OPEN, handler="tmpfile",
         serve="_op_tmpfile", since=37, ext=True, enosys_cached=True, idempotent=False,
         create_type=True, opens=True, parent_handle=True,
         doc='name is "/" (an unnamed file: no namespace change)'),
    _row(Opcode.STATX, "statx_in", reply=_S, reply_struct="statx_out", handler="statx",
         serve="_op_statx", since=39, enosys_cached=True),
    _row(Opcode.COPY_FILE_RANGE_64, "copy_file_range_in", reply=_S,
         reply_struct="copy_file_range_out", handler="copy_file_range",
         serve="_op_copy_file_range_64", since=45, enosys_cached=True, idempotent=False),
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
#: citations: :mod:`fusewire.handles` and docs/draft-handles.md.
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
            trailing=Trailing.HANDLE, reply=Reply.ENTRY, handler="lookup",
            serve="_op_lookup_handle_rfc_v2", since=46,
            draft="rfc-v2", parent_handle=True,
            doc="RFC v2 4/6: replaces LOOKUP; name, NUL, then the parent's fuse_file_handle "
                "(absent when the kernel holds none, e.g. the root); reply entry_out + "
                "fuse_file_handle {u32 size, u32 type} + size bytes, 1 <= size < max_handle_sz"),
    },
    "rfc-v3": {
        DRAFT_FUSE_COMPOUND: OpInfo(
            DRAFT_FUSE_COMPOUND, "COMPOUND", "compound_in", trailing=Trailing.DATA,
            reply=Reply.DATA, handler=None, serve="_op_compound", since=46, idempotent=False,
            draft="rfc-v3",
            doc="compound series v5 1/3: fuse_compound_in + complete sub-requests; reply "
                "fuse_compound_out + one complete sub-reply per sub-request (handled by the "
                "library through this table)"),
        DRAFT_FUSE_LOOKUP_HANDLE_V3: OpInfo(
            DRAFT_FUSE_LOOKUP_HANDLE_V3, "LOOKUP_HANDLE", None, names=1, ext=True,
            reply=Reply.ENTRY, handler="lookup", serve="_op_lookup_handle_rfc_v3", since=46,
            draft="rfc-v3", parent_handle=True,
            doc="RFC v3 6/8: name (+ FUSE_EXT_HANDLE of the parent); reply entry2_out + "
                "fuse_file_handle {u16 size} + size bytes; sent inside a COMPOUND with a STATX"),
        DRAFT_FUSE_MKOBJ_HANDLE_V3: OpInfo(
            DRAFT_FUSE_MKOBJ_HANDLE_V3, "MKOBJ_HANDLE", "create_in", names=1, ext=True,
            reply=Reply.ENTRY, handler="create", serve="_op_mkobj_handle_rfc_v3", since=46,
            draft="rfc-v3", idempotent=False,
            create_type=True, namespace=True, parent_handle=True,
            doc="RFC v3 8/8: create a regular file; reply entry2_out + fuse_file_handle; sent "
                "inside an atomic COMPOUND with STATX and OPEN"),
    },
    "fusewire": {
        DRAFT_FUSE_LOOKUP_HANDLE_V3: OpInfo(
            DRAFT_FUSE_LOOKUP_HANDLE_V3, "LOOKUP_HANDLE", None, names=1, ext=True,
            reply=Reply.ENTRY, handler="lookup", serve="_op_lookup_handle_fw", since=46,
            draft="fusewire", parent_handle=True,
            doc="fusewire profile: lookup returning entry2_out + file handle; parent via "
                "FUSE_EXT_HANDLE; an empty name looks up the object the extension's handle "
                "names"),
        DRAFT_FUSE_MKOBJ_HANDLE_V3: OpInfo(
            DRAFT_FUSE_MKOBJ_HANDLE_V3, "MKOBJ_HANDLE", "create_in", names=1, ext=True,
            reply=Reply.ENTRY_OPEN, handler="create", serve="_op_mkobj_handle_fw", since=46,
            draft="fusewire",
            idempotent=False, create_type=True, opens=True, namespace=True,
            parent_handle=True,
            doc="fusewire profile: create-and-open; reply entry2_out + handle + open_out"),
        DRAFT_FUSE_REVALIDATE_FH: OpInfo(
            DRAFT_FUSE_REVALIDATE_FH, "REVALIDATE_FH", "revalidate_fh_in",
            trailing=Trailing.DATA, reply=Reply.ENTRY, handler="inode_for_handle",
            serve="_op_revalidate_fh", since=46, draft="fusewire",
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
        # after the names, before any extension block (LOOKUP becomes
        # LOOKUP_HANDLE, which has its own row).
        for op in PARENT_HANDLE_OPS:
            if op != Opcode.LOOKUP:
                table[op] = dataclasses.replace(OPS[op], trailing=Trailing.HANDLE,
                                                draft=profile)
    elif profile == "fusewire":
        # fusewire's profile returns a handle with every READDIRPLUS entry
        table[Opcode.READDIRPLUS] = dataclasses.replace(
            OPS[Opcode.READDIRPLUS], serve="_op_readdirplus_handles")
    table.update(DRAFT_OPS[profile])
    return table


def ops_where(field: str, table: dict[int, OpInfo] | None = None) -> frozenset[int]:
    """The opcodes of ``table`` (default :data:`OPS`) whose boolean row field is true.

    ``ops_where("releases")`` is {RELEASE, RELEASEDIR}; modules that need an
    opcode set read it here instead of spelling the opcodes out.
    """
    rows = OPS if table is None else table
    return frozenset(op for op, row in rows.items() if getattr(row, field))


#: Upstream opcodes whose header nodeid a draft profile may name by handle.
PARENT_HANDLE_OPS: frozenset[int] = ops_where("parent_handle")


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
