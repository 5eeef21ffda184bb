"""The dispatcher shared by worker threads keeps each request's lookups apart."""

from __future__ import annotations

import struct
import sys
import threading

from fusewire.connection import Connection
from fusewire.examples.memfs import MemFS
from fusewire.opcodes import Opcode
from fusewire.server.dispatch import Dispatcher
from fusewire.types import RequestContext


def _msg(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, nodeid, 0, 0, 1, 0,
                       0) + body


def test_concurrent_lookups_count_exactly() -> None:
    fs = MemFS()
    d = Dispatcher(fs, Connection())
    init = struct.pack("<IIIII", 7, 45, 131072, 0, 0) + bytes(44)
    d.dispatch(_msg(Opcode.INIT, 2, 0, init))
    names = [f"n{i}".encode() for i in range(4)]
    inos = [fs.mknod(1, n, 0o100644, 0, RequestContext()).st_ino for n in names]
    fs.forget([(ino, 1) for ino in inos])       # mknod counted one lookup each
    per_thread = 3000
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                  # switch threads as often as possible
    try:
        def worker(t: int) -> None:
            for i in range(per_thread):
                unique = (t * per_thread + i + 2) * 2
                bufs, lookups = d.dispatch(_msg(Opcode.LOOKUP, unique, 1, names[t] + b"\0"))
                assert bufs is not None and lookups == [inos[t]]
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert {ino: d.nodes.counts.get(ino) for ino in inos} == {ino: per_thread for ino in inos}
