"""Record every message crossing ``/dev/fuse`` to a crash-safe file, and read it back.

The format is documented in ``docs/capture-format.md``.  In short: a 40-byte
file header (magic ``b"FWCAP"``, version, wall-clock creation time, the
monotonic clock at creation, pid, header CRC), then records, each framed as::

    u32 length      whole record, this field and the trailing CRC included
    u8  kind        REQUEST=1, REPLY=2, NOTIFY=3, END=4
    u8  flags       0 (reserved for future use)
    u16 reserved    0
    u64 time_ns     time.monotonic_ns() when the record was written
    u32 tid         native id of the writing thread
    ... payload     the message exactly as read from / written to /dev/fuse
    u32 crc32       zlib.crc32 of every byte of the record before it

:class:`CaptureWriter` writes each record with one ``os.write`` on an
``O_APPEND`` descriptor and buffers nothing, so a server killed with SIGKILL
leaves every complete record on disk.  :class:`CaptureReader` stops at the
first record that is truncated or fails its CRC and reports how many bytes it
dropped.  The INIT exchange is simply the first request/reply pair;
:meth:`CaptureReader.session` rebuilds the negotiated
:class:`~fusewire.connection.Session` from it.
"""

from __future__ import annotations

import enum
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fusewire.connection import Session, parse_request
from fusewire.opcodes.flags import FUSE_KERNEL_VERSION, InitFlag, Opcode
from fusewire.structs.codec import CODECS
from fusewire.structs.layout import decode_sized

__all__ = [
    "FILE_HEADER",
    "MAGIC",
    "RECORD_HEADER",
    "VERSION",
    "CaptureError",
    "CaptureHeader",
    "CaptureReader",
    "CaptureWriter",
    "Kind",
    "Record",
    "session_from_init",
]

MAGIC = b"FWCAP"
VERSION = 1
#: magic, pad, version, header_len, flags, created_ns (wall), base_ns (monotonic), pid,
#: reserved, crc32 of the preceding 36 bytes
FILE_HEADER = struct.Struct("<5sBHHHQQII")
_FILE_CRC = struct.Struct("<I")
#: fuse_in_header's len, opcode, unique and fuse_out_header, from the schemas
_IN_HEAD = CODECS["in_header"].head(3)
_OUT_HEADER = CODECS["out_header"].struct
FILE_HEADER_SIZE = FILE_HEADER.size + _FILE_CRC.size  # 40
#: length, kind, flags, reserved, time_ns, tid
RECORD_HEADER = struct.Struct("<IBBHQI")
_CRC = struct.Struct("<I")
#: bytes a record adds around its payload
RECORD_OVERHEAD = RECORD_HEADER.size + _CRC.size  # 24
#: the largest record a reader accepts (a FUSE message is at most ~1 MiB + headers)
MAX_RECORD = 64 << 20


class Kind(enum.IntEnum):
    """What a record holds."""

    REQUEST = 1  # a message read from /dev/fuse (kernel -> server)
    REPLY = 2  # a reply written to /dev/fuse (server -> kernel), unique != 0
    NOTIFY = 3  # a notification written to /dev/fuse (unique == 0)
    END = 4  # written by CaptureWriter.close(): the capture ended cleanly


class CaptureError(ValueError):
    """The file is not a capture (bad magic, unknown version, corrupt header)."""


@dataclass(frozen=True)
class CaptureHeader:
    """The file header."""

    version: int
    created_ns: int  # time.time_ns() when the writer opened the file
    base_ns: int  # time.monotonic_ns() at the same moment
    pid: int  # the writing process
    flags: int = 0


@dataclass(frozen=True)
class Record:
    """One framed record.  ``time_ns`` is monotonic; ``offset_ns`` is relative to the header."""

    kind: int
    flags: int
    time_ns: int
    tid: int
    payload: bytes
    offset_ns: int = 0
    index: int = 0  # position in the file, 0-based
    file_offset: int = 0

    @property
    def unique(self) -> int:
        """The request's or reply's unique (0 for notifications and END)."""
        if self.kind == Kind.REQUEST and len(self.payload) >= 40:
            return int(_IN_HEAD.unpack_from(self.payload)[2])
        if self.kind in (Kind.REPLY, Kind.NOTIFY) and len(self.payload) >= 16:
            return int(_OUT_HEADER.unpack_from(self.payload)[2])
        return 0

    @property
    def opcode(self) -> int | None:
        """The opcode of a request record, else None."""
        if self.kind == Kind.REQUEST and len(self.payload) >= 40:
            return int(_IN_HEAD.unpack_from(self.payload)[1])
        return None

    @property
    def error(self) -> int:
        """``out_header.error`` of a reply (negative errno) or notification (the code)."""
        if self.kind in (Kind.REPLY, Kind.NOTIFY) and len(self.payload) >= 16:
            return int(_OUT_HEADER.unpack_from(self.payload)[1])
        return 0


class CaptureWriter:
    """Append records to ``path``; safe to call from several threads.

    The server loop calls :meth:`request` after each read, :meth:`reply`
    before each reply write and :meth:`notify` for notifications.  Each
    record is one ``os.write`` on an ``O_APPEND`` descriptor (a short write is
    completed under the same lock), so records never interleave and a
    SIGKILLed writer leaves every record it finished.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                           | os.O_CLOEXEC, 0o644)
        self.base_ns = time.monotonic_ns()
        self.header = CaptureHeader(VERSION, time.time_ns(), self.base_ns, os.getpid())
        head = FILE_HEADER.pack(MAGIC, 0, VERSION, FILE_HEADER_SIZE, 0, self.header.created_ns,
                                self.base_ns, self.header.pid, 0)
        self._write_all(head + _FILE_CRC.pack(zlib.crc32(head)))
        self.records = 0

    # -- the capture protocol used by fusewire.server.loop ----------------------------

    def request(self, msg: bytes | bytearray | memoryview) -> None:
        """Record a message read from /dev/fuse."""
        self.write(Kind.REQUEST, (msg,))

    def reply(self, bufs: Sequence[bytes | bytearray | memoryview]) -> None:
        """Record a reply about to be written (the buffers of one writev)."""
        self.write(Kind.REPLY, bufs)

    def notify(self, bufs: Sequence[bytes | bytearray | memoryview]) -> None:
        """Record a notification about to be written."""
        self.write(Kind.NOTIFY, bufs)

    # -- generic ------------------------------------------------------------------

    def write(self, kind: int, parts: Sequence[bytes | bytearray | memoryview],
              flags: int = 0) -> None:
        """Frame ``parts`` (concatenated) as one record of ``kind`` and append it."""
        payload = b"".join(parts)
        tid = threading.get_native_id() & 0xFFFFFFFF
        length = RECORD_OVERHEAD + len(payload)
        with self._lock:
            if self._fd < 0:
                return
            head = RECORD_HEADER.pack(length, kind, flags, 0, time.monotonic_ns(), tid)
            crc = zlib.crc32(payload, zlib.crc32(head))
            self._write_all(b"".join((head, payload, _CRC.pack(crc))))
            self.records += 1

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        """Write the END record and close the file (later calls are ignored)."""
        if self._fd < 0:
            return
        self.write(Kind.END, ())
        with self._lock:
            fd, self._fd = self._fd, -1
        os.close(fd)

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CaptureReader:
    """Read a capture file.  Complete, CRC-valid records only; the rest is counted.

    ``records`` holds every good record in file order; ``dropped_bytes`` how
    many bytes at the end were ignored (a torn or corrupt record and anything
    after it); ``clean`` whether the writer closed the file (END record).
    """

    path: str
    header: CaptureHeader
    records: list[Record]
    dropped_bytes: int
    drop_reason: str
    clean: bool

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            data = f.read()
        self._parse(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> CaptureReader:
        """Parse a capture held in memory."""
        self = cls.__new__(cls)
        self.path = "<bytes>"
        self._parse(data)
        return self

    def _parse(self, data: bytes) -> None:
        if len(data) < FILE_HEADER_SIZE:
            raise CaptureError(f"{self.path}: {len(data)} bytes, shorter than the header")
        magic, _pad, version, hlen, flags, created, base, pid, _res = FILE_HEADER.unpack_from(
            data)
        if magic != MAGIC:
            raise CaptureError(f"{self.path}: bad magic {magic!r}")
        if version != VERSION:
            raise CaptureError(f"{self.path}: capture version {version}, this reader knows "
                               f"{VERSION}")
        (crc,) = _FILE_CRC.unpack_from(data, FILE_HEADER.size)
        if crc != zlib.crc32(data[:FILE_HEADER.size]) or hlen < FILE_HEADER_SIZE:
            raise CaptureError(f"{self.path}: corrupt file header")
        self.header = CaptureHeader(version, created, base, pid, flags)
        self.records = []
        self.clean = False
        self.drop_reason = ""
        self.dropped_bytes = 0
        pos, end = hlen, len(data)
        index = 0
        while pos < end:
            reason = ""
            if end - pos < RECORD_HEADER.size:
                reason = "truncated record header"
            else:
                length, kind, rflags, _r, t, tid = RECORD_HEADER.unpack_from(data, pos)
                if length < RECORD_OVERHEAD or length > MAX_RECORD:
                    reason = f"bad record length {length}"
                elif pos + length > end:
                    reason = f"torn record: {length} bytes announced, {end - pos} present"
                else:
                    body_end = pos + length - _CRC.size
                    (crc,) = _CRC.unpack_from(data, body_end)
                    if crc != zlib.crc32(data[pos:body_end]):
                        reason = "record CRC mismatch"
            if reason:
                self.dropped_bytes = end - pos
                self.drop_reason = reason
                break
            payload = data[pos + RECORD_HEADER.size:pos + length - _CRC.size]
            if kind == Kind.END:
                self.clean = True
            else:
                self.records.append(Record(kind, rflags, t, tid, payload, t - base, index, pos))
            index += 1
            pos += length

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def requests(self) -> Iterator[Record]:
        """The REQUEST records, in order."""
        return (r for r in self.records if r.kind == Kind.REQUEST)

    def init_pair(self) -> tuple[Record, Record] | None:
        """The INIT request and its reply, if the capture starts with one."""
        init: Record | None = None
        for rec in self.records:
            if init is None:
                if rec.kind == Kind.REQUEST:
                    if rec.opcode != Opcode.INIT:
                        return None
                    init = rec
            elif rec.kind == Kind.REPLY and rec.unique == init.unique:
                return init, rec
        return None

    def session(self) -> Session:
        """The session the capture negotiated, rebuilt from its INIT exchange."""
        pair = self.init_pair()
        if pair is None:
            raise CaptureError(f"{self.path}: no INIT request/reply pair at the start")
        return session_from_init(pair[0].payload, pair[1].payload)


def session_from_init(request: bytes, reply: bytes) -> Session:
    """Rebuild a :class:`Session` from the bytes of an INIT request and its reply."""
    req = parse_request(request, None)
    arg: Any = req.arg
    offered = arg.flags
    if arg.minor >= 36 and arg.flags & InitFlag.INIT_EXT:
        offered |= arg.flags2 << 32
    length, err, _unique = _OUT_HEADER.unpack_from(reply)
    if err:
        raise CaptureError(f"INIT was answered with error {-err}")
    body = reply[16:length]
    if len(body) < 8:
        raise CaptureError(f"INIT reply body of {len(body)} bytes")
    out: Any = decode_sized(CODECS["init_out"], body, 0, min(len(body), 64))
    flags = out.flags
    if out.minor >= 36:
        flags |= out.flags2 << 32
    profile = None
    max_handle_sz = 0
    if flags & InitFlag.HAS_LOOKUP_HANDLE:
        v2: Any = decode_sized(CODECS["init_out_v2"], body, 0, min(len(body), 64))
        profile = "v2" if v2.max_handle_sz else "v3"
        max_handle_sz = v2.max_handle_sz
    return Session(
        major=out.major or FUSE_KERNEL_VERSION, minor=out.minor, flags=flags,
        kernel_flags=offered, max_readahead=out.max_readahead, max_write=out.max_write,
        max_pages=out.max_pages or 32, time_gran=out.time_gran,
        max_background=out.max_background, congestion_threshold=out.congestion_threshold,
        max_stack_depth=out.max_stack_depth, request_timeout=out.request_timeout,
        lookup_handle=profile, max_handle_sz=max_handle_sz)
