"""Kernel passthrough (FUSE_PASSTHROUGH, 7.40) on a real mount.

With ``kernel_passthrough`` the passthrough example registers each opened
file as a backing file and the kernel does its reads and writes itself: no
READ or WRITE request may reach the server, and the data must still be
right in both directions.  Without it every read and write is a request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import conftest
import pytest

from fusewire.connection import Request
from fusewire.examples.passthrough import Passthrough
from fusewire.opcodes import InitFlag, Opcode
from fusewire.server import mount as fm
from fusewire.server.loop import Server, serve_in_thread

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="backing files (FUSE_DEV_IOC_BACKING_OPEN) need root")


@pytest.fixture
def serve(tmp_path: Path, tmpfs_dir: Path) -> Iterator[Callable[[bool], tuple[Server, Path,
                                                                               list[int]]]]:
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    started: list[tuple[Server, threading.Thread, threading.Timer]] = []

    def start(kernel: bool) -> tuple[Server, Path, list[int]]:
        mnt = tmp_path / f"mnt{len(started)}"
        mnt.mkdir()
        server = Server(Passthrough(str(tmpfs_dir), kernel_passthrough=kernel), str(mnt))
        seen: list[int] = []

        def observe(req: Request) -> None:
            seen.append(req.opcode)

        server.dispatcher.observer = observe
        thread = serve_in_thread(server)
        dog = threading.Timer(conftest.WATCHDOG, lambda: fm.abort_connection(str(mnt)))
        dog.daemon = True
        dog.start()
        started.append((server, thread, dog))
        return server, mnt, seen

    yield start
    for server, thread, dog in reversed(started):
        dog.cancel()
        server.stop()
        thread.join(10)
        server.close()


@pytest.mark.parametrize("kernel", [True, False], ids=["backing", "served"])
def test_reads_and_writes(serve: Callable[[bool], tuple[Server, Path, list[int]]],
                          tmpfs_dir: Path, kernel: bool) -> None:
    data = os.urandom(3 << 20)
    (tmpfs_dir / "src.bin").write_bytes(data)
    server, mnt, seen = serve(kernel)
    assert bool(server.session_flags & InitFlag.PASSTHROUGH) == kernel
    assert not server.session_flags & InitFlag.WRITEBACK_CACHE
    assert server.conn.session is not None
    assert server.conn.session.max_stack_depth == (1 if kernel else 0)

    assert (mnt / "src.bin").read_bytes() == data              # read through the mount
    new = os.urandom(1 << 20)
    with open(mnt / "dst.bin", "wb") as f:                     # create + write
        f.write(new)
    with open(mnt / "src.bin", "r+b") as f:                    # open + overwrite
        f.seek(4096)
        f.write(b"patched")
    assert (tmpfs_dir / "dst.bin").read_bytes() == new         # landed on the backing file
    assert (tmpfs_dir / "src.bin").read_bytes()[4096:4103] == b"patched"

    data_ops = {Opcode.READ, Opcode.WRITE} & set(seen)
    if kernel:
        assert not data_ops, "READ/WRITE reached the server under kernel passthrough"
        assert Opcode.OPEN in seen and Opcode.CREATE in seen
    else:
        assert data_ops == {Opcode.READ, Opcode.WRITE}


@pytest.mark.parametrize("kernel", [True, False], ids=["backing", "served"])
def test_second_open_of_an_open_file(serve: Callable[[bool], tuple[Server, Path, list[int]]],
                                     tmpfs_dir: Path, kernel: bool) -> None:
    """A file opened twice (and again after one close) shares one backing id: every
    descriptor reads and writes the same data, as on the source (was EIO, issue 13)."""
    data = os.urandom(256 << 10)
    (tmpfs_dir / "f.bin").write_bytes(data)
    server, mnt, seen = serve(kernel)
    first = os.open(mnt / "f.bin", os.O_RDWR)
    try:
        second = os.open(mnt / "f.bin", os.O_RDONLY)
        try:
            assert os.pread(second, len(data), 0) == data
            assert os.pwrite(first, b"one", 10) == 3
            assert os.pread(second, 3, 10) == b"one"
            third = os.open(mnt / "f.bin", os.O_WRONLY | os.O_APPEND)
            try:
                assert os.write(third, b"tail") == 4
            finally:
                os.close(third)
            assert os.pread(second, 4, len(data)) == b"tail"
        finally:
            os.close(second)
        assert os.pwrite(first, b"two", 20) == 3               # still works after a close
    finally:
        os.close(first)
    again = os.open(mnt / "f.bin", os.O_RDONLY)                # all closed, then reopened
    try:
        assert os.pread(again, 3, 20) == b"two"
    finally:
        os.close(again)
    want = bytearray(data)
    want[10:13], want[20:23] = b"one", b"two"
    assert (tmpfs_dir / "f.bin").read_bytes() == bytes(want) + b"tail"
    assert bool({Opcode.READ, Opcode.WRITE} & set(seen)) != kernel
