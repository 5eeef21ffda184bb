"""Micro-benchmark: one request through the dispatcher, bytes in to reply buffers out.

Run: ``python bench/bench_dispatch.py [--number N] [--repeat R]``.  Prints µs per
request (best of R runs of N requests) for GETATTR, LOOKUP (an existing
name), LOOKUP of a missing name (an ENOENT error reply), READ 4 KiB and
WRITE 4 KiB against memfs, without a mount: ``Dispatcher.dispatch`` parses
with ``Connection.receive``, calls the handler and encodes the reply.  This is
the server's hot path less the ``readv``/``writev`` system calls; compare two
trees by running the script from each (it imports the tree it lives in).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusewire.connection import Config, Connection
from fusewire.examples.memfs import MemFS
from fusewire.opcodes import Opcode
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.codec import CODECS
from fusewire.types import RequestContext

_IN = CODECS["in_header"].struct


def _msg(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    return _IN.pack(40 + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    fs = MemFS()
    d = Dispatcher(fs, Connection(Config()))
    init = CODECS["init_in"].zero()._replace(major=7, minor=45, max_readahead=131072,
                                             flags=0x73FFFFFB, flags2=0x5FD)
    bufs, _ = d.dispatch(_msg(Opcode.INIT, 2, 0, CODECS["init_in"].encode(init)))
    assert bufs is not None
    ctx = RequestContext(0, 0, 0)
    fi, attr = fs.create(1, b"file", 0o100644, 0o2, ctx)
    fh = fi.fh
    fs.write(fh, 0, memoryview(bytes(4096)))
    nodeid = attr.st_ino
    read_in = CODECS["read_in"].encode(CODECS["read_in"].zero()._replace(fh=fh, size=4096))
    write_in = CODECS["write_in"].encode(CODECS["write_in"].zero()._replace(fh=fh, size=4096))
    cases = {
        "GETATTR": _msg(Opcode.GETATTR, 4, nodeid, bytes(16)),
        "LOOKUP": _msg(Opcode.LOOKUP, 4, 1, b"file\0"),
        "LOOKUP (ENOENT)": _msg(Opcode.LOOKUP, 4, 1, b"missing\0"),
        "READ 4 KiB": _msg(Opcode.READ, 4, nodeid, read_in),
        "WRITE 4 KiB": _msg(Opcode.WRITE, 4, nodeid, write_in + bytes(4096)),
    }
    dispatch = d.dispatch
    forget = d.nodes.forget
    print(f"{'request':<18} {'µs/op':>8}")
    for name, msg in cases.items():
        lookup = name == "LOOKUP"

        def run(msg: bytes = msg, lookup: bool = lookup) -> None:
            dispatch(msg)
            if lookup:
                forget(nodeid, 1)     # keep the lookup count from growing

        best = min(timeit.repeat(run, number=args.number, repeat=args.repeat))
        print(f"{name:<18} {best / args.number * 1e6:8.2f}")


if __name__ == "__main__":
    main()
