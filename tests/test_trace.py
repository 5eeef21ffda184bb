"""The ``-d`` debug trace: one line per request and per reply, flags by name."""

from __future__ import annotations

import logging
import os

import pytest

from fusewire.examples.memfs import MemFS
from fusewire.testing.emulator import KernelEmulator

Traced = tuple[KernelEmulator, pytest.LogCaptureFixture]


@pytest.fixture
def trace(caplog: pytest.LogCaptureFixture) -> Traced:
    emu = KernelEmulator(MemFS())
    emu.dispatcher.debug = True
    caplog.set_level(logging.DEBUG, logger="fusewire.server.dispatch")
    return emu, caplog


def test_open_flags_and_open_reply(trace: Traced) -> None:
    emu, log = trace
    h = emu.create("/f", 0o640)
    emu.close(h)
    log.clear()
    h = emu.open("/f", os.O_WRONLY | os.O_APPEND | 0o100000)
    emu.close(h)
    lines = log.messages
    req = next(line for line in lines if " OPEN " in line)
    assert "flags=O_WRONLY|O_APPEND|O_LARGEFILE" in req
    reply = lines[lines.index(req) + 1]
    assert reply.strip().startswith("unique=") and "-> OK 16 bytes {fh=" in reply


def test_entry_reply_names_the_node(trace: Traced) -> None:
    emu, log = trace
    nodeid = emu.mkdir("/d", 0o750)
    lines = log.messages
    reply = next(line for line in lines if "-> OK" in line and "nodeid=" in line)
    assert f"{{nodeid={nodeid} generation=" in reply and "mode=0o40750" in reply


def test_create_reply_shows_entry_and_open(trace: Traced) -> None:
    emu, log = trace
    emu.close(emu.create("/g", 0o600))
    lines = log.messages
    req = next(line for line in lines if " CREATE " in line)
    assert "O_CREAT" in req and "mode=0o100600" in req
    reply = lines[lines.index(req) + 1]
    assert "mode=0o100600" in reply and "fh=" in reply


def test_errors_by_name(trace: Traced) -> None:
    emu, log = trace
    with pytest.raises(OSError):
        emu.stat("/missing")
    lines = log.messages
    assert any(line.strip().endswith("-> ENOENT") for line in lines)


def test_lookup_reply_packed_as_one_buffer(trace: Traced) -> None:
    emu, log = trace
    nodeid = emu.mkdir("/e", 0o700)
    emu.evict_all()          # the next stat must LOOKUP again: header + entry_out in one pack
    log.clear()
    emu.stat("/e")
    lines = log.messages
    req = next(line for line in lines if " LOOKUP " in line)
    reply = lines[lines.index(req) + 1]
    assert f"-> OK 128 bytes {{nodeid={nodeid} generation=" in reply
