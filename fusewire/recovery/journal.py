"""The session journal: append-only, checksummed records in a memfd.

File layout: an 8-byte magic, then records ``u32 len | u8 type | payload[len] |
u32 crc32(type + payload)``.  Loading stops at the first record that is short
or fails its checksum, so a writer SIGKILLed in the middle of an append leaves
a journal whose valid prefix is exactly the records written before (a torn
tail is ignored and truncated away by the next writer).

Compaction never rewrites a journal in place: the owner writes a snapshot
(session, filesystem state, node table, handles) into a *new* memfd and hands
it to the keeper, which swaps its reference atomically.  Until the keeper
acknowledges, the old journal stays valid and complete.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fusewire.server.dispatch import NodeTable

__all__ = [
    "MAGIC",
    "JournalState",
    "JournalWriter",
    "JournaledNodeTable",
    "RecordType",
    "iter_records",
    "load",
    "new_memfd",
    "read_all",
]

MAGIC = b"FWJRNL01"
_HDR = struct.Struct("<IB")
_CRC = struct.Struct("<I")
_OUT_HDR = struct.Struct("<IiQ")
#: REQ header: time_ns, open fh, open nodeid, open flags, release fh, has_open, has_release,
#: request length (the reply follows the request bytes)
_REQ = struct.Struct("<qQQIQBBI")
_HANDLE = struct.Struct("<QQI")
_RESEND_MASK = (1 << 63) - 1


class RecordType:
    """Record type codes."""

    SESSION = 1        # JSON of Session.to_dict()
    FS_SNAPSHOT = 2    # the filesystem's dump_state() blob
    NODES = 3          # snapshot of the node table: u64 pairs (nodeid, count)
    HANDLES = 4        # snapshot of open handles: (u64 fh, u64 nodeid, u32 flags)
    ADD = 5            # u64 nodeids, each counted once more
    FORGET = 6         # u64 pairs (nodeid, nlookup released)
    REQ = 7            # an executed non-idempotent request and its exact reply
    META = 8           # JSON: free-form facts (filesystem kind, recovery mode)


def encode_record(rtype: int, payload: bytes) -> bytes:
    """One record, ready to append."""
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _HDR.pack(len(payload), rtype) + payload + _CRC.pack(crc)


def iter_records(data: bytes | memoryview) -> Iterator[tuple[int, memoryview, int]]:
    """Yield ``(type, payload, end offset)`` for each valid record; stop at a torn tail."""
    view = memoryview(data)
    n = len(view)
    if n < len(MAGIC) or bytes(view[:len(MAGIC)]) != MAGIC:
        return
    pos = len(MAGIC)
    while pos + 9 <= n:
        length, rtype = _HDR.unpack_from(view, pos)
        end = pos + 5 + length + 4
        if end > n:
            return
        payload = view[pos + 5:pos + 5 + length]
        (crc,) = _CRC.unpack_from(view, pos + 5 + length)
        if zlib.crc32(payload, zlib.crc32(bytes((rtype,)))) != crc:
            return
        yield rtype, payload, end
        pos = end


@dataclass
class JournalState:
    """What a journal says, folded: the input of a takeover."""

    session: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    fs_snapshot: bytes | memoryview | None = None
    nodes: dict[int, int] = field(default_factory=dict)
    handles: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: executed requests since the snapshot: (time_ns, request bytes, reply bytes)
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    #: request key (unique without bit 63) -> exact reply bytes
    replies: dict[int, bytes] = field(default_factory=dict)
    #: end offset of the FS_SNAPSHOT record (identifies it, with the file's inode)
    snapshot_end: int = 0
    valid_len: int = len(MAGIC)
    records: int = 0
    since_snapshot: int = 0
    #: nodeids whose count changed after the last NODES snapshot
    touched: set[int] = field(default_factory=set)

    def apply(self, rtype: int, payload: memoryview) -> None:
        """Fold one record into the state."""
        self.records += 1
        self.since_snapshot += 1
        if rtype == RecordType.REQ:
            t, ofh, onode, oflags, rfh, has_open, has_rel, rlen = _REQ.unpack_from(payload)
            body = payload[_REQ.size:]
            req = bytes(body[:rlen])
            reply = bytes(body[rlen:])
            key = struct.unpack_from("<Q", req, 8)[0] & _RESEND_MASK
            self.replies[key] = reply
            self.requests.append((t, req, reply))
            if has_open:
                self.handles[ofh] = (onode, oflags)
            if has_rel:
                self.handles.pop(rfh, None)
        elif rtype == RecordType.ADD:
            nodes = self.nodes
            added = array("Q", bytes(payload))
            for n in added:
                nodes[n] = nodes.get(n, 0) + 1
            self.touched.update(added)
        elif rtype == RecordType.FORGET:
            a = array("Q", bytes(payload))
            nodes = self.nodes
            for i in range(0, len(a), 2):
                n, k = a[i], a[i + 1]
                self.touched.add(n)
                have = nodes.get(n, 0) - k
                if have > 0:
                    nodes[n] = have
                else:
                    nodes.pop(n, None)
        elif rtype == RecordType.SESSION:
            self.session = json.loads(bytes(payload))
        elif rtype == RecordType.META:
            self.meta.update(json.loads(bytes(payload)))
        elif rtype == RecordType.FS_SNAPSHOT:
            # A snapshot starts a new base: earlier requests are folded into it.
            self.fs_snapshot = payload      # a view: no copy unless it is loaded
            self.requests.clear()
            self.replies.clear()
            self.since_snapshot = 0
        elif rtype == RecordType.NODES:
            a = array("Q", bytes(payload))
            self.nodes = dict(zip(a[0::2], a[1::2], strict=True))
            self.touched = set()
            self.requests.clear()
            self.replies.clear()
            self.since_snapshot = 0
        elif rtype == RecordType.HANDLES:
            self.handles = {fh: (node, flags) for fh, node, flags
                            in _HANDLE.iter_unpack(payload)}


def load(data: bytes | memoryview) -> JournalState:
    """Fold a whole journal (a torn or corrupt tail is ignored)."""
    state = JournalState()
    for rtype, payload, end in iter_records(data):
        state.apply(rtype, payload)
        state.valid_len = end
        if rtype == RecordType.FS_SNAPSHOT:
            state.snapshot_end = end
    return state


def read_all(fd: int) -> bytes:
    """The current contents of a journal fd (pread: the file offset is untouched)."""
    size = os.fstat(fd).st_size
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, size - pos, pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def new_memfd(name: str = "fusewire-journal") -> int:
    """A fresh, empty journal memfd (close-on-exec)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.pwrite(fd, MAGIC, 0)
    return fd


class JournalWriter:
    """Appends records to a journal fd at an explicit offset (pwrite)."""

    def __init__(self, fd: int, offset: int | None = None) -> None:
        self.fd = fd
        if offset is None:
            offset = os.fstat(fd).st_size
        if offset < len(MAGIC):
            os.pwrite(fd, MAGIC, 0)
            offset = len(MAGIC)
        # drop a torn tail so later records are not hidden behind it
        if os.fstat(fd).st_size != offset:
            os.ftruncate(fd, offset)
        self.offset = offset
        self.records = 0

    def append(self, rtype: int, payload: bytes) -> None:
        """Append one record; durable (in the memfd) when this returns."""
        self.append_raw(encode_record(rtype, payload))

    def append_raw(self, blob: bytes) -> None:
        """Append already-encoded records in one write."""
        view = memoryview(blob)
        off = self.offset
        while view:
            n = os.pwrite(self.fd, view, off)
            off += n
            view = view[n:]
        self.offset = off
        self.records += 1


def encode_req(time_ns: int, raw: bytes, reply: bytes, opened: tuple[int, int, int] | None,
               released: int | None) -> bytes:
    """The payload of a REQ record."""
    ofh, onode, oflags = opened if opened is not None else (0, 0, 0)
    head = _REQ.pack(time_ns, ofh, onode, oflags & 0xFFFFFFFF, released or 0,
                     opened is not None, released is not None, len(raw))
    return head + raw + reply


def encode_nodes(counts: dict[int, int]) -> bytes:
    """NODES payload."""
    a = array("Q")
    for n, c in counts.items():
        a.append(n)
        a.append(c)
    return a.tobytes()


def encode_handles(handles: dict[int, tuple[int, int]]) -> bytes:
    """HANDLES payload."""
    return b"".join(_HANDLE.pack(fh, node, flags & 0xFFFFFFFF)
                    for fh, (node, flags) in handles.items())


def encode_snapshot(session: dict[str, Any] | None, meta: dict[str, Any],
                    fs_blob: bytes | None, nodes: dict[int, int],
                    handles: dict[int, tuple[int, int]]) -> bytes:
    """MAGIC + a complete snapshot: the body of a compacted journal."""
    parts = [MAGIC, encode_record(RecordType.META, json.dumps(meta).encode())]
    if session is not None:
        parts.append(encode_record(RecordType.SESSION, json.dumps(session).encode()))
    if fs_blob is not None:
        parts.append(encode_record(RecordType.FS_SNAPSHOT, fs_blob))
    parts.append(encode_record(RecordType.NODES, encode_nodes(nodes)))
    parts.append(encode_record(RecordType.HANDLES, encode_handles(handles)))
    return b"".join(parts)


class JournaledNodeTable(NodeTable):
    """A NodeTable whose changes reach the journal before any reply reveals them.

    ``add`` only buffers (the caller flushes the buffer together with the
    request record, or alone for idempotent replies such as LOOKUP, before the
    reply is written); ``forget`` is journaled at once.
    """

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        super().__init__()
        if counts:
            self.counts = counts        # taken over, not copied
        self.writer: JournalWriter | None = None
        self.pending: list[int] = []

    def add(self, nodeids: Iterable[int]) -> None:
        ids = list(nodeids)
        super().add(ids)
        self.pending.extend(ids)

    def take_pending(self) -> bytes:
        """Encoded ADD record for the buffered lookups (empty if none)."""
        if not self.pending:
            return b""
        blob = encode_record(RecordType.ADD, array("Q", self.pending).tobytes())
        self.pending.clear()
        return blob

    def forget(self, nodeid: int, nlookup: int) -> int:
        taken = super().forget(nodeid, nlookup)
        if taken and self.writer is not None:
            self.writer.append(RecordType.FORGET, struct.pack("<QQ", nodeid, taken))
        return taken

    def snapshot(self) -> dict[int, int]:
        """A copy of the counts."""
        with self.lock:
            return dict(self.counts)


def reply_with_unique(reply: bytes, unique: int) -> list[bytes]:
    """A recorded reply re-addressed to ``unique`` (a resent request echoes bit 63)."""
    length, err, _ = _OUT_HDR.unpack_from(reply)
    return [_OUT_HDR.pack(length, err, unique) + reply[16:]]


def reply_error(reply: bytes) -> int:
    """The (negative) error of a recorded reply, 0 for success."""
    return int(_OUT_HDR.unpack_from(reply)[1])
