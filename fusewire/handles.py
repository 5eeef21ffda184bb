"""DRAFT stable-handle profiles (LOOKUP_HANDLE): handles, their MAC, their wire forms.

Theory of operation
-------------------
Upstream FUSE (7.45) names objects by a u64 nodeid that only means something
to the server process that handed it out.  The LOOKUP_HANDLE RFC series (Luis
Henriques on linux-fsdevel; none merged) lets entry replies also carry a *file
handle* of at most 128 bytes that the kernel stores per inode and compares
when it looks a name up again, so a restarted server that gives a nodeid to
another object is caught (the inode is made bad) instead of being trusted.

Three profiles exist, selected by the server (``Config(lookup_handle=...)``,
default off).  docs/draft-handles.md has the rule-by-rule table with the
message each rule comes from.

``rfc-v2`` (RFC v2, 12 Dec 2025, <20251212181254.59365-1-luis@igalia.com>)
    INIT reply: bit 43 and ``max_handle_sz`` S (u16 at offset 42).  LOOKUP_HANDLE
    (54) replaces LOOKUP: name, NUL, then the parent's ``fuse_file_handle {u32
    size, u32 type}`` + bytes (absent when the kernel holds none).  CREATE,
    MKNOD, MKDIR, SYMLINK, LINK, TMPFILE carry the parent's handle the same way
    after the names; their replies and LOOKUP_HANDLE's are ``fuse_entry_out`` +
    ``fuse_file_handle`` + ``size`` bytes, and the kernel accepts only
    ``1 <= size < S`` (and ``< 128``).  No READDIRPLUS (left undefined).

``rfc-v3`` (RFC v3, 25 Feb 2026, <20260225112439.27276-1-luis@igalia.com>, on
the FUSE_COMPOUND series v5 <20260210-fuse-compounds-upstream-v5-0-ea0585f62daa@ddn.com>)
    INIT reply: bit 43, no size.  FUSE_COMPOUND (54) carries LOOKUP_HANDLE (55)
    + STATX, and (atomic) MKOBJ_HANDLE (56) + STATX + OPEN.  LOOKUP_HANDLE and
    MKOBJ_HANDLE replies are ``fuse_entry2_out`` + ``fuse_file_handle {u16
    size}`` + bytes; the parent's handle travels in a ``FUSE_EXT_HANDLE``
    extension.  Every other reply keeps its upstream size.  No READDIRPLUS.

``fusewire`` (fusewire's own extension, in no RFC)
    The v3 framing plus handles after every entry reply (after
    ``fuse_entry_out``, before ``fuse_open_out``) and in READDIRPLUS records,
    MKOBJ_HANDLE folding ``fuse_open_out`` into its reply, and REVALIDATE_FH
    (57).

The opcode rows are :data:`fusewire.opcodes.table.DRAFT_OPS`; this module
holds the rest: the handle codec, the layouts, and the kernel-side encoders
and decoders the emulator uses (which follow the posted kernels' checks).

Handles are authenticated.  The bytes a kernel receives are::

    u8 format (1) | u8 n | inner[n] | tag[16]

where *inner* is :meth:`~fusewire.Operations.handle_of` and *tag* is
HMAC-SHA256 over the preceding bytes, truncated to 16 bytes, under the
session's secret.  A handle coming back from the kernel is opened (length,
format, tag compared in constant time) before the filesystem's
:meth:`~fusewire.Operations.inode_for_handle` sees it, so a forged, truncated
or foreign handle is answered ESTALE and never reaches code that could open an
object by it (passthrough's ``open_by_handle_at``).  The secret is part of the
negotiated :class:`~fusewire.connection.Session`; a recoverable mount journals
the session into the memfd the keeper holds, so a successor accepts the
handles the kernel stored, while another mount (another secret) does not.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from fusewire.connection import Session
from fusewire.opcodes import table as _table
from fusewire.opcodes.flags import (
    DRAFT_FUSE_COMPOUND,
    DRAFT_FUSE_LOOKUP_HANDLE_V2,
    DRAFT_FUSE_LOOKUP_HANDLE_V3,
    DRAFT_FUSE_MKOBJ_HANDLE_V3,
    DRAFT_FUSE_REVALIDATE_FH,
    FUSE_EXT_HANDLE,
    FUSE_MAX_HANDLE_SZ,
    FUSE_ROOT_ID,
    Opcode,
)
from fusewire.operations import Operations
from fusewire.readdir import ReaddirToken
from fusewire.structs.codec import CODECS
from fusewire.types import EntryAttributes, FUSEError
from fusewire.types import timeout_parts as _ts

__all__ = [
    "HANDLE_FORMAT",
    "HANDLE_OVERHEAD",
    "PARENT_HANDLE_OPS",
    "PROFILES",
    "COMPOUND_MAX_OPS",
    "STATX_MASK_V3",
    "TAG_SIZE",
    "V3_OUT_SIZES",
    "DirentRecord",
    "HandleDirentPlus",
    "HandleEntry",
    "HandleKey",
    "HandleReaddirToken",
    "HandleWireError",
    "Profile",
    "SessionHandles",
    "SubReply",
    "SubRequest",
    "decode_compound_reply",
    "decode_reply",
    "decode_v2_entry",
    "decode_v3_entry",
    "encode_compound",
    "encode_sub_request",
    "ext_handle",
    "ext_tail",
    "handle_capacity",
    "max_handle",
    "reply_carries_handle",
    "request_element",
    "split_compound",
    "with_extlen",
]

log = logging.getLogger(__name__)

#: First byte of every fusewire handle (its layout version).
HANDLE_FORMAT = 1
#: Bytes of HMAC-SHA256 kept as the tag.
TAG_SIZE = 16
#: Format byte + length byte + tag: what a handle adds to the filesystem's bytes.
HANDLE_OVERHEAD = 2 + TAG_SIZE
_DOMAIN = b"fusewire/file-handle/1\0"

_ENTRY_OUT = CODECS["entry_out"]
_ENTRY2_OUT = CODECS["entry2_out"]
_OPEN_OUT = CODECS["open_out"]
_DIRENT = CODECS["dirent"].struct
_V2_HDR = CODECS["file_handle_v2"].struct   # fuse_file_handle (v1/v2): size, type
_V3_HDR = CODECS["file_handle_v3"].struct   # fuse_file_handle (v3): size
_EXT_HDR = CODECS["ext_header"].struct      # fuse_ext_header: size, type
_IN_HDR = CODECS["in_header"]

#: Requests whose header nodeid is a directory the kernel may name by handle
#: as well (rfc-v2: an in-arg; fusewire: a FUSE_EXT_HANDLE extension).
PARENT_HANDLE_OPS: frozenset[int] = _table.PARENT_HANDLE_OPS
_CREATE_TYPE = _table.ops_where("create_type").union(
    *(_table.ops_where("create_type", rows) for rows in _table.DRAFT_OPS.values()))


class HandleWireError(ValueError):
    """A reply without the profile's exact layout: a kernel would fail its write (EINVAL)."""


# -- the handle itself ------------------------------------------------------------------------


class HandleKey:
    """Seals filesystem handles for the kernel and opens them again.

    ``secret`` is the per-filesystem key (at least 16 bytes).  :meth:`seal`
    never fails for an inner handle that fits; :meth:`open` raises
    ``FUSEError(ESTALE)`` for anything it did not seal under this key.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a handle secret needs at least 16 bytes")
        self._key = bytes(secret)

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + body, hashlib.sha256).digest()[:TAG_SIZE]

    def seal(self, inner: bytes, size: int | None = None) -> bytes:
        """The handle for ``inner``; padded with zeros to exactly ``size`` bytes if given."""
        if len(inner) > 255:
            raise ValueError(f"inner handle of {len(inner)} bytes (at most 255)")
        body = bytes((HANDLE_FORMAT, len(inner))) + bytes(inner)
        if size is not None:
            pad = size - TAG_SIZE - len(body)
            if pad < 0:
                raise ValueError(f"inner handle of {len(inner)} bytes does not fit {size}")
            body += bytes(pad)
        return body + self._tag(body)

    def open(self, handle: bytes, max_size: int = FUSE_MAX_HANDLE_SZ) -> bytes:
        """The inner handle of a sealed ``handle``; ESTALE unless this key sealed it."""
        n = len(handle)
        if (n < HANDLE_OVERHEAD or n > max_size or handle[0] != HANDLE_FORMAT
                or 2 + handle[1] > n - TAG_SIZE):
            raise FUSEError(errno.ESTALE)
        body = bytes(handle[:-TAG_SIZE])
        if not hmac.compare_digest(self._tag(body), bytes(handle[-TAG_SIZE:])):
            raise FUSEError(errno.ESTALE)
        return body[2:2 + body[1]]


def handle_capacity(size: int) -> int:
    """The largest :meth:`~fusewire.Operations.handle_of` result a handle of ``size`` holds."""
    return max(0, min(255, size - HANDLE_OVERHEAD))


# -- profiles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One draft profile: its opcodes and how a handle looks on the wire.

    ``v2_header``: ``fuse_file_handle`` is ``{u32 size, u32 type}`` (RFC v1/v2)
    rather than ``{u16 size}`` (RFC v3).  ``entry2``: LOOKUP_HANDLE and
    MKOBJ_HANDLE reply ``fuse_entry2_out`` (no attributes) instead of
    ``fuse_entry_out``.  ``handle_replies``: the opcodes whose success reply
    carries a handle.  ``mkobj_open``: MKOBJ_HANDLE's reply ends with
    ``fuse_open_out`` (fusewire) or not (RFC v3: the OPEN of the compound
    answers that).  ``min_handle``: the smallest handle the kernel accepts in
    an entry reply for an object (RFC v2: 1).
    """

    name: str
    revision: str
    lookup_opcode: int
    mkobj_opcode: int | None
    revalidate_opcode: int | None
    compound_opcode: int | None
    v2_header: bool
    entry2: bool
    handle_replies: frozenset[int]
    mkobj_open: bool
    readdirplus: bool
    min_handle: int

    def reply_element(self, handle: bytes) -> bytes:
        """``fuse_file_handle`` as it follows an entry in a reply (``b""``: no handle).

        RFC v2 4/6 never reads ``type`` back (the kernel stores only size and
        bytes), so fusewire writes 0 there.
        """
        if self.v2_header:
            return _V2_HDR.pack(len(handle), 0) + handle
        return _V3_HDR.pack(len(handle)) + handle

    def request_element(self, handle: bytes) -> bytes:
        """``fuse_file_handle`` as the kernel sends it in a request (exact size)."""
        return self.reply_element(handle)

    def parse_request_element(self, data: bytes) -> bytes:
        """The handle bytes of a request's ``fuse_file_handle``; EINVAL if malformed."""
        hdr = _V2_HDR if self.v2_header else _V3_HDR
        if len(data) < hdr.size:
            raise FUSEError(errno.EINVAL)
        size = hdr.unpack_from(data)[0]
        if hdr.size + size != len(data) or size > FUSE_MAX_HANDLE_SZ:
            raise FUSEError(errno.EINVAL)
        return bytes(data[hdr.size:])

    def parse_reply_element(self, body: bytes, pos: int) -> tuple[bytes, int]:
        """Kernel side: (handle, bytes used) of the element at ``pos``; HandleWireError if bad."""
        hdr = _V2_HDR if self.v2_header else _V3_HDR
        if len(body) - pos < hdr.size:
            raise HandleWireError("missing fuse_file_handle")
        size = hdr.unpack_from(body, pos)[0]
        if size > FUSE_MAX_HANDLE_SZ:
            raise HandleWireError(f"handle of {size} bytes > FUSE_MAX_HANDLE_SZ")
        if len(body) - pos < hdr.size + size:
            raise HandleWireError(f"handle of {size} bytes overruns the reply")
        return bytes(body[pos + hdr.size:pos + hdr.size + size]), hdr.size + size


#: upstream opcodes whose reply is an entry (LOOKUP and the create-type ones)
_ENTRY_REPLIES = frozenset(op for op, row in _table.OPS.items()
                           if row.reply in (_table.Reply.ENTRY, _table.Reply.ENTRY_OPEN))
#: RFC v2 4/6: LOOKUP_HANDLE and the create-type replies carry a handle
_V2_REPLIES = _table.ops_where("create_type") | {DRAFT_FUSE_LOOKUP_HANDLE_V2}

PROFILES: dict[str, Profile] = {
    "rfc-v2": Profile(
        "rfc-v2", "LOOKUP_HANDLE RFC v2 (Luis Henriques, 12 Dec 2025, "
        "<20251212181254.59365-1-luis@igalia.com>, patches 3/6 and 4/6)",
        DRAFT_FUSE_LOOKUP_HANDLE_V2, None, None, None, v2_header=True, entry2=False,
        handle_replies=_V2_REPLIES, mkobj_open=False, readdirplus=False, min_handle=1),
    "rfc-v3": Profile(
        "rfc-v3", "LOOKUP_HANDLE RFC v3 (Luis Henriques, 25 Feb 2026, "
        "<20260225112439.27276-1-luis@igalia.com>, patches 6/8 and 8/8) on FUSE_COMPOUND v5 "
        "(Horst Birthelmer, <20260210-fuse-compounds-upstream-v5-0-ea0585f62daa@ddn.com>)",
        DRAFT_FUSE_LOOKUP_HANDLE_V3, DRAFT_FUSE_MKOBJ_HANDLE_V3, None, DRAFT_FUSE_COMPOUND,
        v2_header=False, entry2=True,
        handle_replies=frozenset({DRAFT_FUSE_LOOKUP_HANDLE_V3, DRAFT_FUSE_MKOBJ_HANDLE_V3}),
        mkobj_open=False, readdirplus=False, min_handle=0),
    "fusewire": Profile(
        "fusewire", "fusewire's own extension (not in any RFC): RFC v3 framing, handles on "
        "every entry reply and READDIRPLUS, REVALIDATE_FH",
        DRAFT_FUSE_LOOKUP_HANDLE_V3, DRAFT_FUSE_MKOBJ_HANDLE_V3, DRAFT_FUSE_REVALIDATE_FH, None,
        v2_header=False, entry2=True,
        handle_replies=_ENTRY_REPLIES | {Opcode.READDIRPLUS, DRAFT_FUSE_LOOKUP_HANDLE_V3,
                                         DRAFT_FUSE_MKOBJ_HANDLE_V3, DRAFT_FUSE_REVALIDATE_FH},
        mkobj_open=True, readdirplus=True, min_handle=0),
}


def max_handle(session: Session) -> int:
    """The largest handle the kernel of ``session`` accepts (rfc-v2: ``max_handle_sz - 1``)."""
    if session.lookup_handle == "rfc-v2":
        return min(session.max_handle_sz, FUSE_MAX_HANDLE_SZ) - 1
    return FUSE_MAX_HANDLE_SZ


# -- the server's side ------------------------------------------------------------------------


class SessionHandles:
    """The server's half of a session's profile: issue, resolve and lay out handles.

    Built by the dispatcher once a session with a profile exists.  ``ops``
    supplies the handle contract (``handle_of`` / ``inode_for_handle``); the
    session supplies the profile, the size limit and the secret.
    """

    def __init__(self, ops: Operations, session: Session) -> None:
        profile = PROFILES.get(session.lookup_handle or "")
        if profile is None:
            raise ValueError(f"no stable-handle profile {session.lookup_handle!r}")
        self.ops = ops
        self.profile = profile
        #: the largest handle the kernel accepts (rfc-v2: max_handle_sz - 1)
        self.max_size = max_handle(session)
        secret = bytes.fromhex(session.handle_secret) if session.handle_secret else b""
        if not secret:
            log.warning("session without a handle secret: handles will not survive a restart")
            secret = os.urandom(32)
        self.key = HandleKey(secret)
        self._too_big = False

    def handle_of(self, inode: int) -> bytes:
        """The sealed handle of ``inode`` (``b""`` when the filesystem has none that fits)."""
        inner = self.ops.handle_of(inode)
        if inner is None:
            return b""
        if len(inner) > handle_capacity(self.max_size):
            if not self._too_big:
                self._too_big = True
                log.warning("handle_of(%d) gave %d bytes; a %d-byte handle holds %d: "
                            "such objects get no handle", inode, len(inner), self.max_size,
                            handle_capacity(self.max_size))
            return b""
        return self.key.seal(inner)

    def element_for(self, inode: int) -> bytes:
        """The ``fuse_file_handle`` element that follows the entry of ``inode`` in a reply.

        In rfc-v2 the kernel refuses an object's entry without a handle (size
        0), so that is answered EIO here, with a log line, instead.
        """
        handle = self.handle_of(inode) if inode else b""
        if inode and len(handle) < self.profile.min_handle:
            log.error("%s: inode %d has no handle of 1..%d bytes; the kernel would refuse "
                      "the entry, answering EIO", self.profile.name, inode, self.max_size)
            raise FUSEError(errno.EIO)
        return self.profile.reply_element(handle)

    def resolve(self, handle: bytes) -> int:
        """The inode a handle names: tag checked first, then ``inode_for_handle``; ESTALE."""
        inner = self.key.open(handle, FUSE_MAX_HANDLE_SZ)
        return int(self.ops.inode_for_handle(inner))

    def check_parent(self, nodeid: int, handle: bytes) -> None:
        """ESTALE unless ``handle`` resolves to ``nodeid`` (the kernel's view of the parent)."""
        if self.resolve(handle) != nodeid:
            raise FUSEError(errno.ESTALE)

    def entry2_bytes(self, attr: EntryAttributes) -> bytes:
        """``fuse_entry2_out`` + the handle element (LOOKUP_HANDLE, MKOBJ_HANDLE)."""
        ev, evn = _ts(attr.entry_timeout)
        return (_ENTRY2_OUT.struct.pack(attr.st_ino, attr.generation, ev, evn, 0, 0)
                + self.element_for(attr.st_ino))

    def readdir_token(self, size: int,
                      entry_bytes: Callable[[EntryAttributes], bytes]) -> HandleReaddirToken:
        """A READDIRPLUS token whose records carry handles (see :class:`HandleReaddirToken`)."""
        return HandleReaddirToken(size, self, entry_bytes)


class HandleReaddirToken(ReaddirToken):
    """READDIRPLUS records of the ``fusewire`` profile: entry, handle element, dirent, name.

    Record: ``fuse_entry_out`` (128), ``fuse_file_handle {u16 size}`` + bytes,
    ``fuse_dirent`` (24), the name, zero padding to 8.  "." / ".." and entries
    without a nodeid have a zero entry and an empty handle, and count no lookup.
    """

    __slots__ = ("_entry_fn", "_handles", "_n")

    def __init__(self, size: int, handles: SessionHandles,
                 entry_bytes: Callable[[EntryAttributes], bytes]) -> None:
        super().__init__(size, True, entry_bytes)
        self._handles = handles
        self._entry_fn = entry_bytes
        self._n = 0

    def add(self, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
        """Append an entry; return False (and drop it) when it does not fit."""
        namelen = len(name)
        if not name or namelen > 1024 or b"/" in name:
            raise ValueError(f"invalid directory entry name {name!r}")
        ino = attr.st_ino
        counted = bool(ino) and name != b"." and name != b".."
        handles = self._handles
        if counted:
            element = handles.element_for(ino)
        else:
            element = handles.profile.reply_element(b"")
        head = 128 + len(element) + 24 + namelen
        reclen = (head + 7) & ~7
        if len(self.buf) + reclen > self.size:
            return False
        self.buf += self._entry_fn(attr) if counted else bytes(128)
        self.buf += element
        self.buf += _DIRENT.pack(ino, next_id, namelen, (attr.st_mode & 0o170000) >> 12)
        self.buf += name
        self.buf += bytes(reclen - head)
        if counted:
            self.counted.append(ino)
        self._n += 1
        return True

    def __len__(self) -> int:
        return self._n


# -- FUSE_COMPOUND (rfc-v3) --------------------------------------------------------------------


class SubRequest(NamedTuple):
    """One request inside a FUSE_COMPOUND: its raw message (header included)."""

    opcode: int
    unique: int
    nodeid: int
    raw: bytes


def split_compound(data: bytes) -> list[SubRequest]:
    """The sub-requests after ``fuse_compound_in``; EINVAL (FUSEError) if they do not tile it.

    Each sub-request is a complete message: ``fuse_in_header`` (its ``len``
    covers the header) + the request's in-args.  The compound series v5
    (``fuse_compound_build_one_op``) zeroes the header and sets only len,
    opcode, nodeid, uid, gid and pid, so ``unique`` and ``total_extlen`` are
    0; an extension block (LOOKUP_HANDLE's FUSE_EXT_HANDLE) then simply
    follows the name.  This returns the messages with ``total_extlen`` set
    from those trailing bytes, so the ordinary parser reads them.
    """
    out: list[SubRequest] = []
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 40:
            raise FUSEError(errno.EINVAL)
        length, opcode, unique, nodeid = _IN_HDR_HEAD.unpack_from(data, pos)
        if length < 40 or pos + length > n:
            raise FUSEError(errno.EINVAL)
        out.append(SubRequest(opcode, unique, nodeid, bytes(data[pos:pos + length])))
        pos += length
        if len(out) > COMPOUND_MAX_OPS:
            raise FUSEError(errno.EINVAL)
    return out


def with_extlen(raw: bytes, ext_bytes: int) -> bytes:
    """``raw`` with ``fuse_in_header.total_extlen`` set to ``ext_bytes / 8``."""
    hdr = _IN_HDR.decode(raw, 0)._replace(total_extlen=ext_bytes // 8)
    return _IN_HDR.struct.pack(*hdr) + raw[40:]


def ext_tail(body: bytes, names_end: int) -> int:
    """Bytes of a well-formed extension block starting at ``names_end`` of ``body`` (else 0)."""
    rest = len(body) - names_end
    if rest <= 0 or rest % 8:
        return 0
    pos = names_end
    while pos < len(body):
        if len(body) - pos < 8:
            return 0
        size = _EXT_HDR.unpack_from(body, pos)[0]
        if size < 8 or size % 8 or pos + size > len(body):
            return 0
        pos += size
    return rest


#: Sub-requests per compound fusewire accepts (the v5 series' FUSE_MAX_COMPOUND_OPS).
COMPOUND_MAX_OPS = 16
_IN_HDR_HEAD = _IN_HDR.head(4)   # len, opcode, unique, nodeid
_COMPOUND_IN = CODECS["compound_in"]
_COMPOUND_OUT = CODECS["compound_out"]
_OUT_HDR = CODECS["out_header"].struct


# -- the kernel's side (the emulator, decoders of captures) ---------------------------------------


class HandleEntry(NamedTuple):
    """An entry reply of a draft profile: the entry record and the handle (``b""``: none).

    ``entry`` is an ``EntryOut``, or an ``Entry2Out`` (nodeid, generation,
    no attributes) for v3's LOOKUP_HANDLE and MKOBJ_HANDLE.
    """

    entry: Any
    handle: bytes


class DirentRecord(NamedTuple):
    """The dirent part of a READDIRPLUS record."""

    ino: int
    off: int
    type: int
    name: bytes


class HandleDirentPlus(NamedTuple):
    """One READDIRPLUS record of the ``fusewire`` profile."""

    entry: Any
    handle: bytes
    dirent: DirentRecord


def reply_carries_handle(session: Session, opcode: int) -> bool:
    """Whether the success reply to ``opcode`` has a handle in ``session``'s profile."""
    profile = PROFILES.get(session.lookup_handle or "")
    return profile is not None and opcode in profile.handle_replies


def _entry_part(body: bytes, pos: int, profile: Profile,
                entry2: bool) -> tuple[Any, bytes, int]:
    codec = _ENTRY2_OUT if entry2 else _ENTRY_OUT
    if len(body) - pos < codec.size:
        raise HandleWireError(f"{len(body) - pos} bytes, {codec.name} needs {codec.size}")
    rec = codec.decode(body, pos)
    handle, used = profile.parse_reply_element(body, pos + codec.size)
    return rec, handle, pos + codec.size + used


def decode_reply(session: Session, opcode: int, body: bytes,
                 size_limit: int | None = None) -> Any:
    """Kernel side: check and decode a handle-carrying success reply.

    Returns a :class:`HandleEntry`, ``(HandleEntry, OpenOut)`` for
    create-and-open replies, or a list of :class:`HandleDirentPlus`.  Raises
    :class:`HandleWireError` where the reply breaks the profile.  rfc-v2
    applies the posted kernel's checks (:func:`decode_v2_entry`).
    """
    profile = PROFILES[session.lookup_handle or ""]
    body = bytes(body)
    if profile.name == "rfc-v2":
        return decode_v2_entry(session, opcode, body)
    if opcode == Opcode.READDIRPLUS:
        if size_limit is not None and len(body) > size_limit:
            raise HandleWireError(f"READDIRPLUS: {len(body)} bytes for a buffer of {size_limit}")
        return _decode_direntplus(body, profile)
    entry2 = profile.entry2 and opcode in (profile.lookup_opcode, profile.mkobj_opcode)
    rec, handle, end = _entry_part(body, 0, profile, entry2)
    if opcode in _CREATE_TYPE and rec.nodeid in (0, FUSE_ROOT_ID):
        raise HandleWireError(f"opcode {opcode} returned nodeid {rec.nodeid}")
    with_open = opcode in (Opcode.CREATE, Opcode.TMPFILE) or (
        opcode == profile.mkobj_opcode and profile.mkobj_open)
    if with_open:
        if len(body) != end + _OPEN_OUT.size:
            raise HandleWireError(f"opcode {opcode}: {len(body)} bytes, layout says "
                                  f"{end + _OPEN_OUT.size}")
        return HandleEntry(rec, handle), _OPEN_OUT.decode(body, end)
    if len(body) != end:
        raise HandleWireError(f"opcode {opcode}: {len(body)} bytes, layout says {end}")
    return HandleEntry(rec, handle)


def decode_v2_entry(session: Session, opcode: int, body: bytes) -> Any:
    """Kernel side of RFC v2 4/6: what the posted kernel makes of an entry reply.

    The kernel allocates ``fuse_entry_out`` (now 136 bytes: the 8-byte
    ``fuse_file_handle`` header is its last member) + S bytes with
    ``fh.size = S`` preset, and reads the reply as a variable-size argument
    (``out_argvar``): a longer reply fails the write with EINVAL, a shorter one
    leaves the preset values in place.  CREATE and TMPFILE end with
    ``fuse_open_out`` (the variable argument is the first).  For an entry with
    a nodeid, ``fuse_invalid_file_handle`` refuses ``size == 0`` and ``size >=
    128`` (EIO) and ``fuse_iget`` refuses ``size >= max_handle_sz``.  A
    negative LOOKUP_HANDLE entry (nodeid 0) is not checked.
    """
    slot = session.max_handle_sz
    with_open = opcode in (Opcode.CREATE, Opcode.TMPFILE)
    limit = 136 + slot + (16 if with_open else 0)
    if len(body) > limit:
        raise HandleWireError(f"opcode {opcode}: reply of {len(body)} bytes > {limit} "
                              "(the write fails with EINVAL)")
    part = body[:len(body) - 16] if with_open else body
    if with_open and len(body) < 16:
        raise HandleWireError(f"opcode {opcode}: {len(body)} bytes")
    # what the kernel's buffer holds after the copy: the preset fh.size = S
    # wherever the reply did not reach
    buf = bytearray(136 + slot)
    _V2_HDR.pack_into(buf, 128, slot, 0)
    buf[:len(part)] = part
    rec = _ENTRY_OUT.decode(bytes(buf), 0)
    size = _V2_HDR.unpack_from(buf, 128)[0]
    if rec.nodeid:
        if size == 0 or size >= FUSE_MAX_HANDLE_SZ:
            raise HandleWireError(f"opcode {opcode}: handle size {size} "
                                  "(fuse_invalid_file_handle: EIO)")
        if size >= slot:
            raise HandleWireError(f"opcode {opcode}: handle size {size} >= max_handle_sz "
                                  f"{slot} (fuse_iget fails)")
    handle = bytes(buf[136:136 + min(size, slot)])
    if opcode in _CREATE_TYPE and rec.nodeid in (0, FUSE_ROOT_ID):
        raise HandleWireError(f"opcode {opcode} returned nodeid {rec.nodeid}")
    entry = HandleEntry(rec, handle)
    if with_open:
        return entry, _OPEN_OUT.decode(body, len(body) - 16)
    return entry


def _decode_direntplus(body: bytes, profile: Profile) -> list[HandleDirentPlus]:
    out: list[HandleDirentPlus] = []
    pos, n = 0, len(body)
    while pos < n:
        rec, handle, dpos = _entry_part(body, pos, profile, False)
        if n - dpos < 24:
            raise HandleWireError("READDIRPLUS: truncated dirent")
        ino, off, namelen, dtype = _DIRENT.unpack_from(body, dpos)
        head = dpos + 24 + namelen - pos
        reclen = (head + 7) & ~7
        if namelen == 0 or namelen > 1024 or pos + reclen > n:
            raise HandleWireError(f"READDIRPLUS: bad record (namelen {namelen})")
        name = bytes(body[dpos + 24:dpos + 24 + namelen])
        if b"/" in name or b"\0" in name or off == 0:
            raise HandleWireError(f"READDIRPLUS: bad entry {name!r} (off {off})")
        if any(body[pos + head:pos + reclen]):
            raise HandleWireError(f"READDIRPLUS: non-zero padding after {name!r}")
        if name not in (b".", b"..") and rec.nodeid == FUSE_ROOT_ID:
            raise HandleWireError(f"READDIRPLUS: entry {name!r} returned nodeid 1")
        out.append(HandleDirentPlus(rec, handle, DirentRecord(ino, off, dtype, name)))
        pos += reclen
    return out


def request_element(session: Session, handle: bytes) -> bytes:
    """Kernel side: the ``fuse_file_handle`` a request carries (v2 in-arg, REVALIDATE_FH)."""
    return PROFILES[session.lookup_handle or ""].request_element(handle)


def ext_handle(handle: bytes) -> bytes:
    """Kernel side (v3): a FUSE_EXT_HANDLE request extension element, padded to 8.

    RFC v3 6/8 ``create_ext_handle``: ``fuse_ext_header {size, 33}`` where
    size is the 8-aligned total, then ``{u16 size}`` + the handle, zeros.
    """
    body = _V3_HDR.pack(len(handle)) + handle
    size = 8 + ((len(body) + 7) & ~7)
    return _EXT_HDR.pack(size, FUSE_EXT_HANDLE) + body + bytes(size - 8 - len(body))


#: STATX_BASIC_STATS | STATX_BTIME: the mask RFC v3 5/8's fuse_statx_init asks for.
STATX_MASK_V3 = 0x7FF | 0x800
#: What each sub-request of the posted v3 compounds reserves for its reply
#: (fuse_compound_send adds up out_args sizes into result_size).
V3_OUT_SIZES = {DRAFT_FUSE_LOOKUP_HANDLE_V3: 40 + 2 + FUSE_MAX_HANDLE_SZ,
                DRAFT_FUSE_MKOBJ_HANDLE_V3: 40 + 2 + FUSE_MAX_HANDLE_SZ,
                Opcode.STATX: 256, Opcode.OPEN: 16}


def encode_sub_request(opcode: int, nodeid: int, body: bytes, *, uid: int = 0, gid: int = 0,
                       pid: int = 0) -> bytes:
    """Kernel side (compound v5 ``fuse_compound_build_one_op``): one sub-request.

    ``fuse_in_header`` with len, opcode, nodeid, uid, gid, pid and everything
    else 0 (unique, total_extlen), then the in-args as given.
    """
    return _IN_HDR.struct.pack(40 + len(body), opcode, 0, nodeid, uid, gid, pid, 0, 0) + body


def encode_compound(unique: int, subs: list[bytes], out_sizes: list[int], flags: int, *,
                    uid: int = 0, gid: int = 0, pid: int = 0) -> bytes:
    """Kernel side (compound v5 ``fuse_compound_send``): a whole FUSE_COMPOUND message.

    ``fuse_in_header`` (opcode 54, nodeid 0), ``fuse_compound_in {count,
    flags, result_size = sum of the sub-requests' reply sizes, reserved 0}``,
    then the sub-requests back to back.
    """
    head = _COMPOUND_IN.struct.pack(len(subs), flags, sum(out_sizes), 0, 0)
    body = head + b"".join(subs)
    return _IN_HDR.struct.pack(40 + len(body), DRAFT_FUSE_COMPOUND, unique, 0, uid, gid, pid,
                               0, 0) + body


class SubReply(NamedTuple):
    """One sub-reply of a FUSE_COMPOUND as the v5 kernel reads it."""

    error: int
    unique: int
    body: bytes


def decode_compound_reply(body: bytes, count: int, out_sizes: list[int]) -> list[SubReply]:
    """Kernel side (compound v5 ``fuse_compound_parse_resp``): the sub-replies of a reply.

    ``body`` follows the outer ``fuse_out_header``.  The kernel reads
    ``fuse_compound_out``, then min(count sent, count replied) sub-replies:
    each ``fuse_out_header`` must have ``len >= 16`` and stay inside the
    reply, else the whole compound is EIO.  A reply longer than the space the
    kernel reserved (16 + result_size + 16 per sub-request) fails the write
    with EINVAL.  Sub-replies past the count are ignored.
    """
    limit = 16 + sum(out_sizes) + 16 * len(out_sizes)
    if len(body) > limit:
        raise HandleWireError(f"COMPOUND reply of {len(body)} bytes > {limit} (EINVAL)")
    if len(body) < 16:
        raise HandleWireError(f"COMPOUND reply of {len(body)} bytes, fuse_compound_out needs 16")
    out_count = _COMPOUND_OUT.decode(body, 0).count
    pos, end = 16, len(body)
    subs: list[SubReply] = []
    for _ in range(min(count, out_count)):
        if end - pos < 16:
            raise HandleWireError("COMPOUND: truncated sub-reply header (EIO)")
        length, error, unique = _OUT_HDR.unpack_from(body, pos)
        if length < 16 or pos + length > end:
            raise HandleWireError(f"COMPOUND: sub-reply len {length} (EIO)")
        subs.append(SubReply(error, unique, bytes(body[pos + 16:pos + length])))
        pos += length
    return subs


def decode_v3_entry(sub: bytes) -> HandleEntry:
    """Kernel side (RFC v3 6/8 and 8/8): LOOKUP_HANDLE / MKOBJ_HANDLE sub-reply payload.

    Inside a compound the v5 kernel copies the declared sizes (40 + 130)
    from the sub-reply whatever its length; the handle is ``{u16 size}`` +
    size bytes.  A size above 128 would make the posted code copy past its
    130-byte buffer, so it is refused here.
    """
    buf = sub + bytes(max(0, 42 + FUSE_MAX_HANDLE_SZ - len(sub)))
    rec = _ENTRY2_OUT.decode(buf, 0)
    size = _V3_HDR.unpack_from(buf, 40)[0]
    if size > FUSE_MAX_HANDLE_SZ:
        raise HandleWireError(f"v3 handle of {size} bytes > FUSE_MAX_HANDLE_SZ")
    if len(sub) < 42 + size:
        raise HandleWireError(f"v3 handle of {size} bytes in a {len(sub)}-byte sub-reply")
    return HandleEntry(rec, bytes(buf[42:42 + size]))
