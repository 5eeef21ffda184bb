"""DRAFT stable-handle profiles (LOOKUP_HANDLE RFC v2 / v3): handles, their MAC, their wire forms.

Theory of operation
-------------------
Upstream FUSE (7.45) names objects by a u64 nodeid that only means something
to the server process that handed it out.  The LOOKUP_HANDLE RFC series (Luis
Henriques: v1 Nov 2025, v2 Dec 2025, v3 Feb 2026; none merged, protocol.md
§14) lets every entry reply also carry a *file handle* of at most 128 bytes
that the kernel stores per inode.  After a server restart the kernel can then
ask a successor that has no node table whether each cached inode still names
the same object (the thread's FUSE_REVALIDATE_FH), and mark the ones that do
not bad, instead of sending nodeids the successor cannot interpret.

Two profiles exist, selected by the server (``Config(lookup_handle="v2" |
"v3")``, default off) and negotiated only when the kernel's INIT offers
``InitFlag.HAS_LOOKUP_HANDLE`` (bit 43):

``v2`` (RFC v2, 12 Dec 2025)
    ``init_out.max_handle_sz`` (u16 at offset 42) announces the handle size S.
    ``fuse_entry_out`` grows a trailing ``fuse_file_handle {u32 size, u32
    type}`` followed by an S-byte slot, in every entry reply and every
    READDIRPLUS record.  LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK, LINK and
    TMPFILE carry the parent's ``fuse_file_handle`` as one more in-arg after
    the names.  LOOKUP_HANDLE (54) looks an object up by its handle.

``v3`` (RFC v3, 25 Feb 2026)
    No size in INIT; a handle is ``fuse_file_handle {u16 size}`` + bytes, at
    most FUSE_MAX_HANDLE_SZ.  The parent's handle travels in a request
    extension (``FUSE_EXT_HANDLE``).  LOOKUP_HANDLE (55) replies
    ``fuse_entry2_out`` (no attributes) + the handle; MKOBJ_HANDLE (56)
    creates and opens.  The RFC leaves the other entry replies and
    READDIRPLUS out; fusewire appends the handle to them (after
    ``fuse_entry_out``, before ``fuse_open_out``).

REVALIDATE_FH (57) is fusewire's definition for both profiles.  The exact
layouts are in docs/recovery.md ("Draft stable-handle profiles"); the opcode
rows are :data:`fusewire.opcodes.table.DRAFT_OPS` and the structs are the
``DRAFT`` schemas of :mod:`fusewire.structs.schemas`.  This module holds the
rest of the profile: the handle codec, the layouts of handle elements and of
READDIRPLUS records, and the kernel-side decoders the emulator uses.

Handles are authenticated.  The bytes a kernel receives are::

    u8 format (1) | u8 n | inner[n] | zero padding (v2: up to S) | tag[16]

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
    "TAG_SIZE",
    "V2_HANDLE_TYPE",
    "DirentRecord",
    "HandleDirentPlus",
    "HandleEntry",
    "HandleKey",
    "HandleReaddirToken",
    "HandleWireError",
    "Profile",
    "SessionHandles",
    "decode_reply",
    "ext_handle",
    "handle_capacity",
    "reply_carries_handle",
    "request_element",
]

log = logging.getLogger(__name__)

#: First byte of every fusewire handle (its layout version).
HANDLE_FORMAT = 1
#: Bytes of HMAC-SHA256 kept as the tag.
TAG_SIZE = 16
#: Format byte + length byte + tag: what a handle adds to the filesystem's bytes.
HANDLE_OVERHEAD = 2 + TAG_SIZE
#: ``fuse_file_handle.type`` fusewire writes in v2 (ignored on input: the
#: opaque bytes carry their own format byte and tag).
V2_HANDLE_TYPE = 1
_DOMAIN = b"fusewire/file-handle/1\0"

_ENTRY_OUT = CODECS["entry_out"]
_ENTRY2_OUT = CODECS["entry2_out"]
_OPEN_OUT = CODECS["open_out"]
_DIRENT = CODECS["dirent"].struct
_V2_HDR = CODECS["file_handle_v2"].struct   # fuse_file_handle (v1/v2): size, type
_V3_HDR = CODECS["file_handle_v3"].struct   # fuse_file_handle (v3): size
_EXT_HDR = CODECS["ext_header"].struct      # fuse_ext_header: size, type

#: Requests whose header nodeid is a directory the kernel may name by handle
#: as well (v2: an in-arg; v3: a FUSE_EXT_HANDLE extension).
#: (the table's parent_handle rows)
PARENT_HANDLE_OPS: frozenset[int] = _table.PARENT_HANDLE_OPS
_CREATE_TYPE = _table.ops_where("create_type") | _table.ops_where("create_type",
                                                                  _table.DRAFT_OPS["v3"])


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
    """One draft profile: its opcodes and the layout of a handle on the wire.

    ``fixed_slot``: v2 reserves ``max_handle_sz`` bytes after each
    ``fuse_file_handle`` header in replies (the header's size says how many
    are used); v3 handles are exactly ``2 + size`` bytes.
    """

    name: str
    revision: str
    lookup_opcode: int
    revalidate_opcode: int
    mkobj_opcode: int | None
    fixed_slot: bool

    def reply_element(self, handle: bytes, slot: int) -> bytes:
        """``fuse_file_handle`` as it follows an entry in a reply (``b""``: no handle)."""
        if self.fixed_slot:
            return (_V2_HDR.pack(len(handle), V2_HANDLE_TYPE if handle else 0) + handle
                    + bytes(slot - len(handle)))
        return _V3_HDR.pack(len(handle)) + handle

    def request_element(self, handle: bytes) -> bytes:
        """``fuse_file_handle`` as the kernel sends it in a request (exact size)."""
        if self.fixed_slot:
            return _V2_HDR.pack(len(handle), V2_HANDLE_TYPE if handle else 0) + handle
        return _V3_HDR.pack(len(handle)) + handle

    def parse_request_element(self, data: bytes) -> bytes:
        """The handle bytes of a request's ``fuse_file_handle``; EINVAL if malformed."""
        hdr = _V2_HDR if self.fixed_slot else _V3_HDR
        if len(data) < hdr.size:
            raise FUSEError(errno.EINVAL)
        size = hdr.unpack_from(data)[0]
        if hdr.size + size != len(data) or size > FUSE_MAX_HANDLE_SZ:
            raise FUSEError(errno.EINVAL)
        return bytes(data[hdr.size:])

    def parse_reply_element(self, body: bytes, pos: int, slot: int) -> tuple[bytes, int]:
        """Kernel side: (handle, bytes used) of the element at ``pos``; HandleWireError if bad."""
        if self.fixed_slot:
            if len(body) - pos < 8 + slot:
                raise HandleWireError(f"{len(body) - pos} bytes left, fuse_file_handle with a "
                                      f"{slot}-byte slot needs {8 + slot}")
            size, _type = _V2_HDR.unpack_from(body, pos)
            if size > slot:
                raise HandleWireError(f"handle of {size} bytes > max_handle_sz {slot}")
            end = pos + 8 + slot
            if any(body[pos + 8 + size:end]):
                raise HandleWireError("non-zero bytes after the handle in its slot")
            return bytes(body[pos + 8:pos + 8 + size]), 8 + slot
        if len(body) - pos < 2:
            raise HandleWireError("missing fuse_file_handle")
        (size,) = _V3_HDR.unpack_from(body, pos)
        if size > FUSE_MAX_HANDLE_SZ:
            raise HandleWireError(f"handle of {size} bytes > FUSE_MAX_HANDLE_SZ")
        if len(body) - pos < 2 + size:
            raise HandleWireError(f"handle of {size} bytes overruns the reply")
        return bytes(body[pos + 2:pos + 2 + size]), 2 + size


PROFILES: dict[str, Profile] = {
    "v2": Profile("v2", "LOOKUP_HANDLE RFC v2 (Luis Henriques, 12 Dec 2025, "
                  "'[RFC PATCH v2 0/6]')", DRAFT_FUSE_LOOKUP_HANDLE_V2,
                  DRAFT_FUSE_REVALIDATE_FH, None, True),
    "v3": Profile("v3", "LOOKUP_HANDLE RFC v3 (Luis Henriques, 25 Feb 2026, "
                  "'[RFC PATCH v3 0/8]')", DRAFT_FUSE_LOOKUP_HANDLE_V3,
                  DRAFT_FUSE_REVALIDATE_FH, DRAFT_FUSE_MKOBJ_HANDLE_V3, False),
}


def _slot(session: Session) -> int:
    profile = PROFILES[session.lookup_handle or ""]
    if profile.fixed_slot:
        return session.max_handle_sz
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
        #: v2: the negotiated max_handle_sz (every handle fills it); v3: the cap
        self.max_size = _slot(session)
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
        return self.key.seal(inner, self.max_size if self.profile.fixed_slot else None)

    def element_for(self, inode: int) -> bytes:
        """The ``fuse_file_handle`` element that follows the entry of ``inode`` in a reply."""
        return self.profile.reply_element(self.handle_of(inode) if inode else b"",
                                          self.max_size)

    def resolve(self, handle: bytes) -> int:
        """The inode a handle names: tag checked first, then ``inode_for_handle``; ESTALE."""
        inner = self.key.open(handle, self.max_size)
        return int(self.ops.inode_for_handle(inner))

    def check_parent(self, nodeid: int, handle: bytes) -> None:
        """ESTALE unless ``handle`` resolves to ``nodeid`` (the kernel's view of the parent)."""
        if self.resolve(handle) != nodeid:
            raise FUSEError(errno.ESTALE)

    def entry2_bytes(self, attr: EntryAttributes) -> bytes:
        """v3: ``fuse_entry2_out`` + the handle element (LOOKUP_HANDLE, MKOBJ_HANDLE)."""
        ev, evn = _ts(attr.entry_timeout)
        return (_ENTRY2_OUT.struct.pack(attr.st_ino, attr.generation, ev, evn, 0, 0)
                + self.element_for(attr.st_ino))

    def readdir_token(self, size: int,
                      entry_bytes: Callable[[EntryAttributes], bytes]) -> HandleReaddirToken:
        """A READDIRPLUS token whose records carry handles (see :class:`HandleReaddirToken`)."""
        return HandleReaddirToken(size, self, entry_bytes)


class HandleReaddirToken(ReaddirToken):
    """READDIRPLUS records of a draft profile: entry, handle element, dirent, name.

    Record: ``fuse_entry_out`` (128), the profile's ``fuse_file_handle``
    element (v2: 8 + max_handle_sz; v3: 2 + size), ``fuse_dirent`` (24), the
    name, zero padding to 8.  "." / ".." and entries without a nodeid have a
    zero entry and an empty handle, and count no lookup.
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
            element = handles.profile.reply_element(b"", handles.max_size)
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
    """One READDIRPLUS record of a draft profile."""

    entry: Any
    handle: bytes
    dirent: DirentRecord


def reply_carries_handle(session: Session, opcode: int) -> bool:
    """Whether the success reply to ``opcode`` has a handle in ``session``'s profile."""
    profile = PROFILES.get(session.lookup_handle or "")
    if profile is None:
        return False
    return (opcode in _ENTRY_REPLIES or opcode == Opcode.READDIRPLUS
            or opcode in (profile.lookup_opcode, profile.revalidate_opcode, profile.mkobj_opcode))


_ENTRY_REPLIES = frozenset(op for op, row in _table.OPS.items()
                           if row.reply in (_table.Reply.ENTRY, _table.Reply.ENTRY_OPEN))


def _entry_part(body: bytes, pos: int, profile: Profile, slot: int,
                entry2: bool) -> tuple[Any, bytes, int]:
    codec = _ENTRY2_OUT if entry2 else _ENTRY_OUT
    if len(body) - pos < codec.size:
        raise HandleWireError(f"{len(body) - pos} bytes, {codec.name} needs {codec.size}")
    rec = codec.decode(body, pos)
    handle, used = profile.parse_reply_element(body, pos + codec.size, slot)
    return rec, handle, pos + codec.size + used


def decode_reply(session: Session, opcode: int, body: bytes,
                 size_limit: int | None = None) -> Any:
    """Kernel side: check and decode a handle-carrying success reply exactly.

    Returns a :class:`HandleEntry`, ``(HandleEntry, OpenOut)`` for
    create-and-open replies, or a list of :class:`HandleDirentPlus`.  Raises
    :class:`HandleWireError` where the size or layout is not the profile's.
    """
    profile = PROFILES[session.lookup_handle or ""]
    slot = _slot(session)
    body = bytes(body)
    if opcode == Opcode.READDIRPLUS:
        if size_limit is not None and len(body) > size_limit:
            raise HandleWireError(f"READDIRPLUS: {len(body)} bytes for a buffer of {size_limit}")
        return _decode_direntplus(body, profile, slot)
    entry2 = not profile.fixed_slot and opcode in (profile.lookup_opcode, profile.mkobj_opcode)
    rec, handle, end = _entry_part(body, 0, profile, slot, entry2)
    if opcode in _CREATE_TYPE and rec.nodeid in (0, FUSE_ROOT_ID):
        raise HandleWireError(f"opcode {opcode} returned nodeid {rec.nodeid}")
    if opcode in (Opcode.CREATE, Opcode.TMPFILE, profile.mkobj_opcode):
        if len(body) != end + _OPEN_OUT.size:
            raise HandleWireError(f"opcode {opcode}: {len(body)} bytes, layout says "
                                  f"{end + _OPEN_OUT.size}")
        return HandleEntry(rec, handle), _OPEN_OUT.decode(body, end)
    if len(body) != end:
        raise HandleWireError(f"opcode {opcode}: {len(body)} bytes, layout says {end}")
    return HandleEntry(rec, handle)


def _decode_direntplus(body: bytes, profile: Profile, slot: int) -> list[HandleDirentPlus]:
    out: list[HandleDirentPlus] = []
    pos, n = 0, len(body)
    while pos < n:
        rec, handle, dpos = _entry_part(body, pos, profile, slot, False)
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
    """Kernel side (v3): a FUSE_EXT_HANDLE request extension element, padded to 8."""
    body = _V3_HDR.pack(len(handle)) + handle
    size = 8 + ((len(body) + 7) & ~7)
    return _EXT_HDR.pack(size, FUSE_EXT_HANDLE) + body + bytes(size - 8 - len(body))
