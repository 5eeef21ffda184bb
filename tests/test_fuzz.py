"""Fuzzing the receive path and the dispatcher (MemFS behind it).

The example count is set by FUSEWIRE_FUZZ_EXAMPLES (default 100000): that
many cheap mutated messages go through Connection.receive and the
Dispatcher in a plain loop, and hypothesis adds structured malformed ones.
``test_fuzz_loop_long`` (marked slow: ``pytest -m slow``) runs twenty times
as many from four other seeds.
"""

from __future__ import annotations

import logging
import os
import random
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from fusewire.connection import Connection, Request
from fusewire.errors import RemoteProtocolError
from fusewire.examples.memfs import MemFS
from fusewire.opcodes.table import OPS, Reply
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.codec import CODECS
from fusewire.testing import strategies as fst
from fusewire.testing.emulator import KernelEmulator
from fusewire.wire import KERNEL_FLAGS, encode_request, make_session

EXAMPLES = int(os.environ.get("FUSEWIRE_FUZZ_EXAMPLES", "100000"))
HYP = max(50, EXAMPLES // 100)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    log = logging.getLogger("fusewire")
    old = log.level
    log.setLevel(logging.CRITICAL)
    yield
    log.setLevel(old)


def _check_receive(conn: Connection, msg: bytes) -> None:
    try:
        req = conn.receive(msg)
    except RemoteProtocolError as exc:
        if len(msg) >= 40:
            assert exc.unique == struct.unpack_from("<Q", msg, 8)[0]
            assert 1 <= exc.errno_hint <= 511
        else:
            assert exc.unique is None
        return
    assert isinstance(req, Request)


def _check_dispatch(d: Dispatcher, msg: bytes) -> None:
    bufs, _ = d.dispatch(msg)
    if len(msg) < 40:
        assert bufs is None
        return
    opcode, unique = struct.unpack_from("<IQ", msg, 4)
    row = d.conn.session.table.get(opcode) if d.conn.session else OPS.get(opcode)
    if bufs is None:
        # only no-reply opcodes (and INTERRUPT, whose reply is optional) may go unanswered
        assert row is not None and row.reply in (Reply.NONE, Reply.OPTIONAL), (opcode, msg)
        return
    raw = b"".join(bytes(b) for b in bufs)
    length, error, got = struct.unpack_from("<IiQ", raw)
    assert length == len(raw)
    assert got == unique
    assert -511 <= error <= 0
    if error:
        assert length == 16


@settings(max_examples=HYP, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=fst.malformed_messages())
def test_receive_malformed(case: tuple[int, int, bytes]) -> None:
    minor, flags, msg = case
    conn = Connection()
    conn.session = make_session(minor, flags)
    _check_receive(conn, msg)
    _check_receive(Connection(), msg)


@settings(max_examples=HYP, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=fst.requests())
def test_receive_valid_never_errors(case: tuple[int, int, bytes]) -> None:
    minor, flags, msg = case
    conn = Connection()
    conn.session = make_session(minor, flags)
    assert isinstance(conn.receive(msg), Request)


def _corpus(emu: KernelEmulator, rng: random.Random) -> list[bytes]:
    """Valid-looking messages aimed at live nodeids and handles of a small tree."""
    out = []
    assert emu.session is not None
    minor = emu.minor
    for code, row in OPS.items():
        if row.since > minor or code == 26:
            continue
        for _ in range(4):
            arg = None
            if row.request is not None:
                arg = CODECS[row.request].zero()
                for f in arg._fields:
                    v = getattr(arg, f)
                    if isinstance(v, int):
                        arg = arg._replace(**{f: rng.choice([0, 1, 2, 3, 4, 5, 4096])})
            names = tuple(rng.choice([b"a", b"b", b"d", b"x", b"", b"user.x"])
                          for _ in range(row.names))
            data = b"xyz" * rng.randint(0, 3)
            if code in (16, 21) and arg is not None:
                arg = arg._replace(size=len(data))
            if code in (42, 49) and arg is not None:
                data = b""
                arg = arg._replace(count=0)
            msg = encode_request(emu.session, code, 2 * rng.randint(100, 10**6),
                                     rng.choice([1, 2, 3, 4, 0, 99]), arg=arg, names=names,
                                     data=data)
            out.append(msg)
    return out


def _mutate(rng: random.Random, msg: bytes) -> bytes:
    b = bytearray(msg)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(6)
        if how == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif how == 1:
            del b[rng.randrange(len(b) + 1):]
        elif how == 2:
            b += os.urandom(rng.randint(1, 16))
        elif how == 3 and len(b) >= 40:
            struct.pack_into("<I", b, 0, len(b))  # fix the length (deeper parsing)
        elif how == 4 and len(b) >= 40:
            struct.pack_into("<H", b, 36, rng.choice([0, 1, 2, 0xFFFF]))
        elif how == 5 and len(b) >= 40:
            struct.pack_into("<I", b, 4, rng.randrange(60))
    if rng.random() < 0.7 and len(b) >= 40:
        struct.pack_into("<I", b, 0, len(b))
    return bytes(b)


def test_fuzz_loop() -> None:
    """EXAMPLES mutated messages through receive() and a MemFS dispatcher per minor."""
    _fuzz_loop(EXAMPLES, int(os.environ.get("FUSEWIRE_FUZZ_SEED", "1")))


@pytest.mark.slow
def test_fuzz_loop_long() -> None:
    """Twenty times the default run's messages, from other seeds (``-m slow``)."""
    for seed in range(2, 6):
        _fuzz_loop(5 * EXAMPLES, seed)


def _fuzz_loop(examples: int, seed: int) -> None:
    rng = random.Random(seed)
    per = max(1, examples // 5)
    for minor in (19, 31, 38, 40, 45):
        fs = MemFS(max_bytes=1 << 22, max_inodes=2000, lock_wait_timeout=0.0)
        emu = KernelEmulator(fs, minor=minor, flags=KERNEL_FLAGS)
        emu.mkdir("/d")
        h = emu.create("/d/a")
        emu.write(h, b"hello")
        emu.close(h)
        corpus = _corpus(emu, rng)
        bare = Connection()
        for _ in range(per):
            msg = _mutate(rng, rng.choice(corpus)) if rng.random() < 0.95 else os.urandom(
                rng.randint(0, 120))
            _check_receive(bare, msg)
            _check_dispatch(emu.dispatcher, msg)
