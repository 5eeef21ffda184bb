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
import mmap
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fusewire.server.dispatch import NodeTable
from fusewire.structs.codec import CODECS
from fusewire.wire import open_out_of, reply_header

__all__ = [
    "MAGIC",
    "JournalFollower",
    "JournalState",
    "JournalWriter",
    "JournaledNodeTable",
    "RecordType",
    "decode_keys",
    "encode_intent",
    "encode_keys",
    "iter_records",
    "load",
    "new_memfd",
    "read_all",
]

MAGIC = b"FWJRNL01"
#: a journal file grows in steps of this many bytes (its tail is zeros until written)
GROW_BYTES = 1 << 20
_HDR = struct.Struct("<IB")
_CRC = struct.Struct("<I")
_OUT_HDR = CODECS["out_header"].struct
_IN_HEAD = CODECS["in_header"].head(3)  # len, opcode, unique
#: REQ header: time_ns, open fh, open nodeid, open flags, release fh, has_open, has_release,
#: request length (the reply follows the request bytes)
_REQ = struct.Struct("<qQQIQBBI")
_HANDLE = struct.Struct("<QQI")
_KEY = struct.Struct("<QH")
_U64_U32 = struct.Struct("<QI")
_INTENT = _U64_U32                  # key, opcode
_INFLIGHT = _U64_U32                # unique, opcode
_BACKING = _U64_U32                 # fh, kernel backing id
_FOPEN_PASSTHROUGH = 1 << 7
_RESEND_MASK = (1 << 63) - 1
#: a record payload up to this size is joined before it is copied (append_parts)
_SMALL = 4096
#: a FORGET record's count for "the node left the table" (whatever it was)
_ALL = (1 << 63) - 1


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
    NODE_KEYS = 9      # stable handles of nodes: (u64 nodeid, u16 len, handle bytes)...
    INTENT = 10        # u64 key, u32 opcode, i64 probes: written before a handler runs
    INFLIGHT = 11      # u64 unique, u32 opcode: read, not yet answered (kernels < 7.40)
    INIT_IN = 12       # the raw INIT request, written when it is read
    HANDOVER = 13      # empty: the owner stopped gracefully after this point
    BACKING = 14       # snapshot of kernel passthrough backing ids: (u64 fh, u32 id)...


#: crc32 of each one-byte record type: the start of every record's checksum
_TYPE_CRC = [zlib.crc32(bytes((t,))) for t in range(256)]
_U64 = struct.Struct("<Q")
#: the header of an ADD record of one node
_ADD_HDR = _HDR.pack(_U64.size, RecordType.ADD)
_ADD_CRC = _TYPE_CRC[RecordType.ADD]
_REQ_CRC = _TYPE_CRC[RecordType.REQ]
#: a record header followed by a REQ payload's fixed part, packed at once
_REQ_RECORD_HEAD = struct.Struct(_HDR.format + _REQ.format.lstrip("<"))
_HDR_SIZE = _HDR.size


def encode_record(rtype: int, payload: bytes) -> bytes:
    """One record, ready to append."""
    crc = zlib.crc32(payload, _TYPE_CRC[rtype])
    return _HDR.pack(len(payload), rtype) + payload + _CRC.pack(crc)


def iter_records(data: bytes | memoryview) -> Iterator[tuple[int, memoryview, int]]:
    """Yield ``(type, payload, end offset)`` for each valid record; stop at a torn tail."""
    view = memoryview(data)
    if len(view) < len(MAGIC) or bytes(view[:len(MAGIC)]) != MAGIC:
        return
    yield from _records_from(view, len(MAGIC))


def _records_from(view: memoryview, pos: int) -> Iterator[tuple[int, memoryview, int]]:
    n = len(view)
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
    #: records after the last snapshot, whoever wrote them (compaction accounting)
    since_snapshot: int = 0
    #: where the log after the last snapshot starts (its size: the snapshot's bytes)
    log_start: int = len(MAGIC)
    #: nodeids whose count changed after the last NODES snapshot
    touched: set[int] = field(default_factory=set)
    #: nodeid -> stable handle (``handle_of``), for nodes with a count ("handles" mode)
    keys: dict[int, bytes] = field(default_factory=dict)
    #: request key -> (opcode, probes) of requests whose handler may have run
    intents: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    #: (unique, opcode) of the last request read (only journaled on kernels < 7.40)
    inflight: tuple[int, int] | None = None
    #: the raw INIT request, if one was read
    init_in: bytes | None = None
    #: the last record is HANDOVER: the previous owner stopped gracefully
    graceful: bool = False
    #: fh -> kernel passthrough backing id of open files (what a successor reuses)
    backing: dict[int, int] = field(default_factory=dict)
    #: keep only what status needs (no request log, no recorded replies)
    light: bool = False

    def apply(self, rtype: int, payload: memoryview) -> None:
        """Fold one record into the state."""
        self.records += 1
        self.since_snapshot += 1
        self.graceful = rtype == RecordType.HANDOVER
        if rtype == RecordType.REQ:
            t, ofh, onode, oflags, rfh, has_open, has_rel, rlen = _REQ.unpack_from(payload)
            if not self.light:
                body = payload[_REQ.size:]
                req = bytes(body[:rlen])
                reply = bytes(body[rlen:])
                key = _IN_HEAD.unpack_from(req)[2] & _RESEND_MASK
                self.replies[key] = reply
                self.requests.append((t, req, reply))
            if has_open:
                self.handles[ofh] = (onode, oflags)
                bid = open_backing(payload[_REQ.size + rlen:])
                if bid:
                    self.backing[ofh] = bid
            if has_rel:
                self.handles.pop(rfh, None)
                self.backing.pop(rfh, None)
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
                    self.keys.pop(n, None)
        elif rtype == RecordType.SESSION:
            self.session = json.loads(bytes(payload))
        elif rtype == RecordType.META:
            self.meta.update(json.loads(bytes(payload)))
        elif rtype == RecordType.FS_SNAPSHOT:
            # A snapshot starts a new base: earlier requests are folded into it.
            self.fs_snapshot = payload      # a view: no copy unless it is loaded
            self.requests.clear()
            self.replies.clear()
            self.intents.clear()
            self.since_snapshot = 0
        elif rtype == RecordType.BACKING:
            self.backing = dict(_BACKING.iter_unpack(payload))
        elif rtype == RecordType.NODES:
            a = array("Q", bytes(payload))
            self.nodes = dict(zip(a[0::2], a[1::2], strict=True))
            self.backing = {}
            self.touched = set()
            self.keys = {}
            self.requests.clear()
            self.replies.clear()
            self.intents.clear()
            self.since_snapshot = 0
        elif rtype == RecordType.HANDLES:
            # only snapshots write HANDLES, as their last record
            self.handles = {fh: (node, flags) for fh, node, flags
                            in _HANDLE.iter_unpack(payload)}
            self.since_snapshot = 0
        elif rtype == RecordType.NODE_KEYS:
            self.keys.update(decode_keys(payload))
        elif rtype == RecordType.INTENT:
            if self.light:
                return
            key, opcode = _INTENT.unpack_from(payload)
            probes = tuple(array("q", bytes(payload[_INTENT.size:])))
            self.intents[key & _RESEND_MASK] = (opcode, probes)
        elif rtype == RecordType.INFLIGHT:
            self.inflight = _INFLIGHT.unpack_from(payload)
        elif rtype == RecordType.INIT_IN:
            self.init_in = bytes(payload)


def load(data: bytes | memoryview, *, light: bool = False) -> JournalState:
    """Fold a whole journal (a torn or corrupt tail is ignored); ``light``: without
    the request log and recorded replies (enough for a snapshot and the node table)."""
    state = JournalState(light=light)
    for rtype, payload, end in iter_records(data):
        state.apply(rtype, payload)
        state.valid_len = end
        if rtype == RecordType.FS_SNAPSHOT:
            state.snapshot_end = end
        if state.since_snapshot == 0:
            state.log_start = end
    # Only a node's first lookup is journaled (JournaledNodeTable): a successor
    # counts every node the kernel holds as looked up once, and the kernel's
    # final FORGET of it (whatever its count) releases it.
    nodes = state.nodes
    for n in nodes:
        nodes[n] = 1
    return state


class JournalFollower:
    """Folds a journal fd incrementally: :meth:`update` applies only what was appended
    since the last call (the keeper's status, which would otherwise re-read it all)."""

    def __init__(self, fd: int, *, light: bool = True) -> None:
        self.fd = fd
        self.light = light
        self.state = JournalState(light=light)
        self.offset = 0
        self.ino = os.fstat(fd).st_ino

    def update(self, fd: int | None = None) -> JournalState:
        """The state now; another file (a compacted journal) starts over.

        The file is told apart by its inode, not its descriptor number: a
        keeper that closes the old journal after receiving the new one gets
        the same numbers back every other compaction.
        """
        if fd is not None:
            self.fd = fd
        info = os.fstat(self.fd)
        if info.st_ino != self.ino:
            self.ino = info.st_ino
            self.state = JournalState(light=self.light)
            self.offset = 0
        size = info.st_size
        if size < self.offset:          # cannot happen with our writers: start over
            self.state = JournalState(light=self.light)
            self.offset = 0
        start = self.offset
        data = os.pread(self.fd, size - start, start) if size > start else b""
        view = memoryview(data)
        pos = 0
        if start == 0:
            if len(view) < len(MAGIC) or bytes(view[:len(MAGIC)]) != MAGIC:
                return self.state
            pos = len(MAGIC)
        st = self.state
        for rtype, payload, end in _records_from(view, pos):
            st.apply(rtype, payload)
            st.valid_len = start + end
            if rtype == RecordType.FS_SNAPSHOT:
                st.snapshot_end = start + end
                st.fs_snapshot = None       # do not pin the buffer
            if st.since_snapshot == 0:
                st.log_start = start + end
        self.offset = max(st.valid_len, len(MAGIC)) if st.valid_len else 0
        return st


def load_snapshot(fd: int) -> tuple[JournalState, bytes | None]:
    """The light state of a journal fd and its filesystem snapshot, read through a
    mapping: no copy of the log (a warm spare's pre-load)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return JournalState(light=True), None
    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
        view = memoryview(m)
        try:
            state = load(view, light=True)
            blob = bytes(state.fs_snapshot) if state.fs_snapshot is not None else None
            state.fs_snapshot = None
        finally:
            view.release()
    return state, blob


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
    """Appends records to a journal memfd through a shared mapping.

    A record is durable (in the memfd, which the keeper holds) as soon as its
    bytes are stored in the mapping: no system call per record.  The file is
    grown in steps of :data:`GROW_BYTES`; the unused tail reads as zeros, which
    end the journal like a torn tail does (a zero length and type fail the
    checksum).  ``offset`` is where the valid records end: callers pass the
    ``valid_len`` of what they loaded, or the length of a snapshot they wrote.
    """

    def __init__(self, fd: int, offset: int | None = None) -> None:
        self.fd = fd
        if offset is None:
            offset = load(read_all(fd)).valid_len
        if offset < len(MAGIC):
            os.pwrite(fd, MAGIC, 0)
            offset = len(MAGIC)
        # Drop a torn tail and anything after it, so that later records are
        # never followed by the remains of older ones.
        os.ftruncate(fd, offset)
        #: where this writer started (after the snapshot it was given, if any)
        self.start = offset
        self.offset = offset
        self.records = 0
        #: where the log after the last snapshot starts, and how many records that log
        #: had before this writer: compaction counts what every server appended since
        #: the snapshot, not only this one (else servers that die often never compact)
        self.log_start = offset
        self.prior_records = 0
        self._map: mmap.mmap | None = None
        self._cap = 0
        self._grow(offset)

    def _grow(self, need: int) -> None:
        cap = (need // GROW_BYTES + 1) * GROW_BYTES
        os.ftruncate(self.fd, cap)          # the new bytes are zeros: the end marker
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self.fd, cap)
        self._cap = cap

    def append(self, rtype: int, payload: bytes) -> None:
        """Append one record; durable (in the memfd) when this returns."""
        self.append_raw(encode_record(rtype, payload))

    def append_parts(self, prefix: bytes, rtype: int,
                     parts: tuple[bytes | bytearray | memoryview, ...]) -> None:
        """Append ``prefix`` (encoded records, may be empty) and one record whose payload
        is the concatenation of ``parts``, copying each part once into the mapping
        (a WRITE's data is not concatenated first)."""
        size = 0
        for p in parts:
            size += len(p)
        if size <= _SMALL:
            # small (most records): one buffer, one checksum, one copy into the mapping
            crc = _TYPE_CRC[rtype]
            for p in parts:
                crc = zlib.crc32(p, crc)
            self.append_records(
                b"".join((prefix, _HDR.pack(size, rtype), *parts, _CRC.pack(crc))),
                1 + (_count(prefix) if prefix else 0))
            return
        off = self.offset
        end = off + len(prefix) + _HDR.size + size + _CRC.size
        if end > self._cap:
            self._grow(end)
        m = self._map
        assert m is not None
        pos = off + len(prefix)
        m[off:pos] = prefix
        m[pos:pos + _HDR.size] = _HDR.pack(size, rtype)
        pos += _HDR.size
        crc = _TYPE_CRC[rtype]
        for p in parts:
            n = len(p)
            m[pos:pos + n] = p
            crc = zlib.crc32(p, crc)
            pos += n
        m[pos:end] = _CRC.pack(crc)
        self.offset = end
        self.records += 1 + (_count(prefix) if prefix else 0)

    def append_raw(self, blob: bytes) -> None:
        """Append already-encoded records with one copy into the mapping."""
        self.append_records(blob, _count(blob))

    def append_records(self, blob: bytes, count: int) -> None:
        """Append already-encoded records, ``count`` of them, with one copy into the
        mapping; durable (in the memfd) when this returns."""
        off = self.offset
        end = off + len(blob)
        if end > self._cap:
            self._grow(end)
        self._map[off:end] = blob       # type: ignore[index]
        self.offset = end
        self.records += count

    @property
    def appended(self) -> int:
        """Bytes this writer appended."""
        return self.offset - self.start

    def inherit(self, state: JournalState) -> None:
        """Count the log ``state`` folded (written by earlier servers) as this one's."""
        self.log_start = max(len(MAGIC), min(state.log_start, self.offset))
        self.prior_records = state.since_snapshot

    @property
    def log_bytes(self) -> int:
        """Bytes of log since the last snapshot (what a compaction would fold away)."""
        return self.offset - self.log_start

    @property
    def log_records(self) -> int:
        """Records since the last snapshot, by this writer and those before it."""
        return self.prior_records + self.records

    def close(self) -> None:
        """Unmap (the fd stays open: it belongs to the caller)."""
        if self._map is not None:
            self._map.close()
            self._map = None


def _count(blob: bytes) -> int:
    """How many encoded records ``blob`` holds (the compaction trigger counts records)."""
    n = pos = 0
    size = len(blob)
    while pos + _HDR.size <= size:
        pos += _HDR.size + _HDR.unpack_from(blob, pos)[0] + _CRC.size
        n += 1
    return n


def open_records(time_ns: int, raw: bytes | bytearray | memoryview,
                 reply: bytes | bytearray | memoryview, fh: int, nodeid: int, flags: int,
                 add: bool) -> bytes:
    """The encoded records of an answered open (a CREATE): the ADD of its node when
    ``add`` (a node entering the table), then the REQ record; the bytes
    :meth:`JournaledNodeTable.take_pending` and :meth:`JournalWriter.append_parts`
    write for the same request, built with one pack for the header and the fixed
    fields (the recording fast paths; tests/test_fastpath.py compares them)."""
    nraw = len(raw)
    head = _REQ_RECORD_HEAD.pack(_REQ.size + nraw + len(reply), RecordType.REQ, time_ns, fh,
                                 nodeid, flags & 0xFFFFFFFF, 0, True, False, nraw)
    crc = _CRC.pack(zlib.crc32(reply, zlib.crc32(raw, zlib.crc32(head[_HDR_SIZE:],
                                                                 _REQ_CRC))))
    if add:
        payload = _U64.pack(nodeid)
        return b"".join((_ADD_HDR, payload, _CRC.pack(zlib.crc32(payload, _ADD_CRC)),
                         head, raw, reply, crc))
    return b"".join((head, raw, reply, crc))


def release_record(time_ns: int, raw: bytes | bytearray | memoryview,
                   reply: bytes | bytearray | memoryview, fh: int) -> bytes:
    """The encoded REQ record of an answered release of ``fh`` (see :func:`open_records`)."""
    nraw = len(raw)
    head = _REQ_RECORD_HEAD.pack(_REQ.size + nraw + len(reply), RecordType.REQ, time_ns, 0, 0,
                                 0, fh, False, True, nraw)
    crc = zlib.crc32(reply, zlib.crc32(raw, zlib.crc32(head[_HDR_SIZE:], _REQ_CRC)))
    return b"".join((head, raw, reply, _CRC.pack(crc)))


def encode_req(time_ns: int, raw: bytes, reply: bytes, opened: tuple[int, int, int] | None,
               released: int | None) -> bytes:
    """The payload of a REQ record."""
    return req_head(time_ns, len(raw), opened, released) + raw + reply


def req_head(time_ns: int, raw_len: int, opened: tuple[int, int, int] | None,
             released: int | None) -> bytes:
    """The fixed part of a REQ payload (the request and reply bytes follow)."""
    ofh, onode, oflags = opened if opened is not None else (0, 0, 0)
    return _REQ.pack(time_ns, ofh, onode, oflags & 0xFFFFFFFF, released or 0,
                     opened is not None, released is not None, raw_len)


def open_backing(reply: bytes | memoryview) -> int:
    """The kernel passthrough backing id an OPEN/CREATE reply hands out (0: none)."""
    out = open_out_of(reply)
    if out is None:
        return 0
    return int(out.backing_id) if out.open_flags & _FOPEN_PASSTHROUGH and out.backing_id > 0 \
        else 0


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


def encode_keys(entries: Iterable[tuple[int, bytes]]) -> bytes:
    """NODE_KEYS payload: (nodeid, stable handle) pairs."""
    return b"".join(_KEY.pack(n, len(k)) + k for n, k in entries)


def decode_keys(payload: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """Inverse of :func:`encode_keys`."""
    view = memoryview(payload)
    pos = 0
    while pos + _KEY.size <= len(view):
        n, size = _KEY.unpack_from(view, pos)
        pos += _KEY.size
        yield n, bytes(view[pos:pos + size])
        pos += size


def encode_intent(key: int, opcode: int, probes: Iterable[int]) -> bytes:
    """INTENT payload."""
    return _INTENT.pack(key & _RESEND_MASK, opcode) + array("q", probes).tobytes()


def encode_inflight(unique: int, opcode: int) -> bytes:
    """INFLIGHT payload."""
    return _INFLIGHT.pack(unique, opcode)


def encode_snapshot(session: dict[str, Any] | None, meta: dict[str, Any],
                    fs_blob: bytes | None, nodes: dict[int, int],
                    handles: dict[int, tuple[int, int]],
                    keys: dict[int, bytes] | None = None,
                    backing: dict[int, int] | None = None) -> bytes:
    """MAGIC + a complete snapshot: the body of a compacted journal."""
    return b"".join(snapshot_parts(session, meta, fs_blob, nodes, handles, keys, backing))


def snapshot_parts(session: dict[str, Any] | None, meta: dict[str, Any],
                   fs_blob: bytes | None, nodes: dict[int, int],
                   handles: dict[int, tuple[int, int]],
                   keys: dict[int, bytes] | None = None,
                   backing: dict[int, int] | None = None) -> list[bytes]:
    """:func:`encode_snapshot` as a list of buffers to write in turn: the filesystem
    blob is one of them, not copied into a record first."""
    parts = [MAGIC, encode_record(RecordType.META, json.dumps(meta).encode())]
    if session is not None:
        parts.append(encode_record(RecordType.SESSION, json.dumps(session).encode()))
    if fs_blob is not None:
        crc = zlib.crc32(fs_blob, _TYPE_CRC[RecordType.FS_SNAPSHOT])
        parts += [_HDR.pack(len(fs_blob), RecordType.FS_SNAPSHOT), fs_blob, _CRC.pack(crc)]
    parts.append(encode_record(RecordType.NODES, encode_nodes(nodes)))
    if keys:
        parts.append(encode_record(RecordType.NODE_KEYS, encode_keys(keys.items())))
    if backing:
        parts.append(encode_record(RecordType.BACKING, b"".join(
            _BACKING.pack(fh, bid) for fh, bid in backing.items())))
    parts.append(encode_record(RecordType.HANDLES, encode_handles(handles)))
    return parts


class JournaledNodeTable(NodeTable):
    """A NodeTable whose changes reach the journal before any reply reveals them.

    ``add`` only buffers (the caller flushes the buffer together with the
    request record, or alone for idempotent replies such as LOOKUP, before the
    reply is written); ``forget`` is journaled at once.

    With ``key_of`` (the filesystem's ``handle_of``; "handles" mode) a nodeid
    that enters the table gets its stable handle journaled in the same write
    as its first ADD, and loses it when its count drops to zero.
    """

    def __init__(self, counts: dict[int, int] | None = None,
                 keys: dict[int, bytes] | None = None,
                 key_of: Callable[[int], bytes | None] | None = None) -> None:
        super().__init__()
        if counts:
            self.counts = counts        # taken over, not copied
        self.writer: JournalWriter | None = None
        self.pending: list[int] = []
        #: (nodeid, count) pairs forgotten and not journaled yet
        self.forgotten = array("Q")
        self.keys: dict[int, bytes] = keys if keys is not None else {}
        self.key_of = key_of

    def add(self, nodeids: Iterable[int]) -> None:
        """Count the lookups; buffer an ADD only for nodes entering the table.

        The journal records presence, not exact counts: a successor starts every
        node the kernel holds at one lookup (see :meth:`forget` and
        docs/recovery.md, "Lookup counts").  Repeated lookups of a known node
        therefore cost no journal write.
        """
        counts = self.counts
        pending = self.pending
        with self.lock:
            for n in nodeids:
                have = counts.get(n, 0)
                counts[n] = have + 1
                if not have:
                    pending.append(n)

    def take_pending(self) -> bytes:
        """Encoded ADD record for the buffered lookups (empty if none)."""
        pending = self.pending
        if not pending:
            return b""
        if len(pending) == 1:           # the common case (a CREATE's new node)
            payload = _U64.pack(pending[0])
            blob = b"".join((_ADD_HDR, payload, _CRC.pack(zlib.crc32(payload, _ADD_CRC))))
        else:
            blob = encode_record(RecordType.ADD, array("Q", pending).tobytes())
        if self.key_of is not None:
            keys = self.keys
            new = [n for n in self.pending if n not in keys]
            if new:
                blob = self._new_keys(new) + blob
        self.pending.clear()
        return blob

    def _new_keys(self, nodeids: list[int]) -> bytes:
        assert self.key_of is not None
        found = []
        for n in dict.fromkeys(nodeids):
            try:
                key = self.key_of(n)
            except Exception:       # a node the filesystem cannot name: not recoverable
                key = None
            if key:
                self.keys[n] = key
                found.append((n, key))
        return encode_record(RecordType.NODE_KEYS, encode_keys(found)) if found else b""

    def rekey(self, nodeids: Iterable[int], keys: Mapping[int, bytes] | None = None) -> None:
        """Journal, at once, the handles of nodes whose handle changed or is about
        to (a path filesystem's rename): ``keys[n]`` if given, else ``key_of(n)``."""
        if self.key_of is None:
            return
        found = []
        for n in nodeids:
            if n not in self.counts and n not in self.pending:
                continue
            try:
                key = keys[n] if keys is not None and n in keys else self.key_of(n)
            except Exception:
                key = None
            if key and self.keys.get(n) != key:
                self.keys[n] = key
                found.append((n, key))
        if found and self.writer is not None:
            self.writer.append(RecordType.NODE_KEYS, encode_keys(found))

    def forget(self, nodeid: int, nlookup: int) -> int:
        """Release ``nlookup``; journal only a node leaving the table (count 0).

        Counts read back from the journal are "at least one" (only a node's
        first lookup is journaled), so a partial forget is not journaled and a
        final one is journaled as releasing everything.
        """
        taken = super().forget(nodeid, nlookup)
        if taken and nodeid not in self.counts:
            # buffered: one FORGET record per request (a BATCH_FORGET names many nodes)
            self.forgotten.extend((nodeid, _ALL))
            self.keys.pop(nodeid, None)
        return taken

    def flush_forgets(self) -> None:
        """Journal the forgets buffered since the last call as one FORGET record."""
        if self.forgotten and self.writer is not None:
            self.writer.append(RecordType.FORGET, self.forgotten.tobytes())
        del self.forgotten[:]

    def key_snapshot(self) -> dict[int, bytes]:
        """Keys of the nodes in the table."""
        keys = self.keys
        with self.lock:
            return {n: keys[n] for n in self.counts if n in keys}

    def snapshot(self) -> dict[int, int]:
        """A copy of the counts."""
        with self.lock:
            return dict(self.counts)


def reply_with_unique(reply: bytes, unique: int) -> list[bytes]:
    """A recorded reply re-addressed to ``unique`` (a resent request echoes bit 63)."""
    length, err, _ = reply_header(reply)
    return [_OUT_HDR.pack(length, err, unique) + reply[16:]]


def reply_error(reply: bytes) -> int:
    """The (negative) error of a recorded reply, 0 for success."""
    return reply_header(reply)[1]
