"""Micro-benchmark: decode + encode of hot requests and replies, construct vs derived codecs.

Run: ``python bench/bench_codecs.py`` (prints a table; ``--markdown`` for docs).
The "construct" column parses/builds with the reference schemas; "fast" is the
path the server uses (Connection.receive / the dispatcher's derived encoders).
"""

from __future__ import annotations

import argparse
import struct
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusewire.connection import Connection
from fusewire.opcodes import Opcode
from fusewire.server.dispatch import attr_out_bytes, entry_bytes
from fusewire.structs.codec import CODECS
from fusewire.structs.schemas import FIXED
from fusewire.types import EntryAttributes


def _msg(opcode: int, unique: int, body: bytes) -> bytes:
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, 2, 0, 0, 1, 0, 0) + body


def _ready() -> Connection:
    conn = Connection()
    body = struct.pack("<IIIII", 7, 45, 131072, 0x73FFFFFB, 0x5FD) + bytes(44)
    conn.initialize(conn.receive(_msg(Opcode.INIT, 2, body)))
    return conn


def _per_call(fn: Callable[[], object], number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return best / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    conn = _ready()
    n = args.number
    read_in = CODECS["read_in"].encode(CODECS["read_in"].record(7, 0, 4096, 0, 0, 0, 0))
    write_in = CODECS["write_in"].encode(CODECS["write_in"].record(7, 0, 4096, 0, 0, 0, 0))
    requests = {
        "GETATTR": _msg(Opcode.GETATTR, 4, bytes(16)),
        "LOOKUP": _msg(Opcode.LOOKUP, 4, b"some-file-name.txt\0"),
        "READ 4 KiB": _msg(Opcode.READ, 4, read_in),
        "WRITE 4 KiB": _msg(Opcode.WRITE, 4, write_in + bytes(4096)),
    }
    schema_of = {"GETATTR": "getattr_in", "LOOKUP": None, "READ 4 KiB": "read_in",
                 "WRITE 4 KiB": "write_in"}
    hdr = FIXED["in_header"]
    rows = []
    for name, m in requests.items():
        sname = schema_of[name]

        def construct_decode(m: bytes = m, sname: str | None = sname) -> object:
            h = hdr.parse(m)
            body = FIXED[sname].parse(m[40:]) if sname else m[40:].split(b"\0")[0]
            return h, body

        fast = _per_call(lambda m=m: conn.receive(m), n)
        slow = _per_call(construct_decode, max(n // 20, 200))
        rows.append((f"decode {name} request", slow, fast))
    attr = EntryAttributes(2, st_mode=0o100644, st_size=4096, st_nlink=1,
                           st_atime_ns=1_700_000_000_123_456_789)
    out_hdr = FIXED["out_header"]
    entry_dict = dict(nodeid=2, generation=0, entry_valid=1, attr_valid=1, entry_valid_nsec=0,
                      attr_valid_nsec=0, attr=dict(
                          ino=2, size=4096, blocks=8, atime=1, mtime=1, ctime=1, atimensec=0,
                          mtimensec=0, ctimensec=0, mode=0o100644, nlink=1, uid=0, gid=0,
                          rdev=0, blksize=4096, flags=0))
    attr_dict = dict(attr_valid=1, attr_valid_nsec=0, dummy=0, attr=entry_dict["attr"])
    pack_hdr = CODECS["out_header"].struct.pack
    data = bytes(4096)
    replies: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "GETATTR": (lambda: out_hdr.build(dict(len=120, error=0, unique=4))
                    + FIXED["attr_out"].build(attr_dict),
                    lambda: [pack_hdr(120, 0, 4), attr_out_bytes(attr)]),
        "LOOKUP": (lambda: out_hdr.build(dict(len=144, error=0, unique=4))
                   + FIXED["entry_out"].build(entry_dict),
                   lambda: [pack_hdr(144, 0, 4), entry_bytes(attr)]),
        "READ 4 KiB": (lambda: out_hdr.build(dict(len=4112, error=0, unique=4)) + data,
                       lambda: [pack_hdr(4112, 0, 4), data]),
        "WRITE 4 KiB": (lambda: out_hdr.build(dict(len=24, error=0, unique=4))
                        + FIXED["write_out"].build(dict(size=4096, padding=0)),
                        lambda: [pack_hdr(24, 0, 4), CODECS["write_out"].struct.pack(4096, 0)]),
    }
    for name, (slow_fn, fast_fn) in replies.items():
        rows.append((f"encode {name} reply", _per_call(slow_fn, max(n // 20, 200)),
                     _per_call(fast_fn, n)))
    if args.markdown:
        print("| operation | construct (µs) | fast path (µs) | speed-up |")
        print("|---|---|---|---|")
        for label, slow, fast in rows:
            print(f"| {label} | {slow:.1f} | {fast:.2f} | {slow / fast:.0f}x |")
    else:
        print(f"{'operation':32} {'construct µs':>14} {'fast µs':>10} {'x':>6}")
        for label, slow, fast in rows:
            print(f"{label:32} {slow:14.1f} {fast:10.2f} {slow / fast:6.0f}")


if __name__ == "__main__":
    main()
