"""The one reply decoder (fusewire.wire.decode_reply) and the modules that use it.

Every opcode's reply round-trips through it (hypothesis draws a reply the
kernel accepts, the decoder turns it into typed values, and those values
encode back to the same bytes); the trace and ``fusewire dump`` render the
decoded values; and the modules that read replies (trace, dump, replay, the
emulator and its VFS facade, recovery's journal and takeover) carry no decoder
of their own: no switch on reply kinds, no reply struct decoded by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusewire
from fusewire.connection import Request
from fusewire.opcodes.flags import Opcode
from fusewire.opcodes.table import OPS, Reply
from fusewire.server.trace import format_reply, reply_text
from fusewire.structs.codec import CODECS
from fusewire.structs.layout import encode_sized
from fusewire.structs.records import EntryOut, GetxattrOut, IoctlOut, OpenOut
from fusewire.testing import strategies as fst
from fusewire.testing.dump import render_reply
from fusewire.wire import (
    Dirent,
    DirentPlus,
    ReplyRuleError,
    ReplySizeError,
    decode_reply,
    make_session,
    open_out_of,
    reply_header,
)

PKG = Path(fusewire.__file__).parent
_DIRENT = CODECS["dirent"].struct

#: every upstream opcode whose reply the strategies can draw (INIT and CUSE_INIT
#: are answered by the connection, not drawn)
REPLY_OPS = sorted(op for op, row in OPS.items()
                   if row.reply is not Reply.NONE and op in fst._ASK_REPLY_OPS)


def _pack_dirent(d: Dirent, head: int) -> bytes:
    rec = bytearray((head + len(d.name) + 7) & ~7)
    _DIRENT.pack_into(rec, head - 24, d.ino, d.off, len(d.name), d.type)
    rec[head:head + len(d.name)] = d.name
    return bytes(rec)


def encode_decoded(session: Any, opcode: int, decoded: Any) -> bytes:
    """The reply body for a decoded value (the inverse the round trip checks)."""
    sizes = session.sizes
    if decoded is None:
        return b""
    if isinstance(decoded, bytes):
        return decoded
    if isinstance(decoded, list):
        out = b""
        for d in decoded:
            if isinstance(d, DirentPlus):
                out += CODECS["entry_out"].encode(d.entry)[:128] + _pack_dirent(d.dirent, 152)[
                    128:]
            else:
                out += _pack_dirent(d, 24)
        return out
    if isinstance(decoded, tuple) and isinstance(decoded[0], IoctlOut):
        return bytes(CODECS["ioctl_out"].encode(decoded[0])) + decoded[1]
    if isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[1], OpenOut):
        return (encode_sized(CODECS["entry_out"], decoded[0], sizes["entry_out"])
                + CODECS["open_out"].encode(decoded[1]))
    if isinstance(decoded, EntryOut):
        return encode_sized(CODECS["entry_out"], decoded, sizes["entry_out"])
    if isinstance(decoded, GetxattrOut):
        return bytes(CODECS["getxattr_out"].encode(decoded))
    name = OPS[opcode].reply_struct
    assert name is not None, (opcode, decoded)
    return encode_sized(CODECS[name], decoded, sizes[name])


@pytest.mark.parametrize("opcode", REPLY_OPS, ids=[OPS[op].name for op in REPLY_OPS])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_reply_round_trips(opcode: int, data: st.DataObject) -> None:
    session, op, arg, body = data.draw(fst.replies(opcode=opcode))
    decoded = decode_reply(session, op, arg, body)
    assert encode_decoded(session, op, decoded) == body
    # the same value, decoded without the kernel's limits, is the same
    assert decode_reply(session, op, arg, body, check=False) == decoded
    # the trace and dump render the decoded value (and never raise on it)
    req = Request(op, 2, 1, 0, 0, 0, arg, (), b"", None, OPS[op])
    reply_text(decoded)
    render_reply(req, decoded)
    line = format_reply(req, [b"".join([CODECS["out_header"].struct.pack(
        16 + len(body), 0, 2), body])], session)
    assert f"OK {len(body)} bytes" in line


def test_every_reply_kind_is_covered() -> None:
    kinds = {OPS[op].reply for op in REPLY_OPS}
    assert kinds >= {Reply.EMPTY, Reply.STRUCT, Reply.ENTRY, Reply.ENTRY_OPEN, Reply.DATA,
                     Reply.XATTR, Reply.DIRENTS, Reply.DIRENTSPLUS, Reply.IOCTL,
                     Reply.OPTIONAL}


def test_check_false_keeps_layout_drops_limits() -> None:
    session = make_session(45)
    read_in = CODECS["read_in"].zero()._replace(size=8)
    with pytest.raises(ReplySizeError):
        decode_reply(session, Opcode.READ, read_in, b"x" * 9)
    assert decode_reply(session, Opcode.READ, read_in, b"x" * 9, check=False) \
        == b"x" * 9
    entry = CODECS["entry_out"].encode(CODECS["entry_out"].zero()._replace(nodeid=1))
    with pytest.raises(ReplyRuleError):   # MKDIR may not return the root
        decode_reply(session, Opcode.MKDIR, None, entry)
    assert decode_reply(session, Opcode.MKDIR, None, entry, check=False).nodeid == 1
    with pytest.raises(ReplySizeError):   # a wrong size is wrong either way
        decode_reply(session, Opcode.GETATTR, None, bytes(7), check=False)


def test_open_out_of_and_reply_header() -> None:
    oo = CODECS["open_out"].zero()._replace(fh=7, open_flags=2)
    reply = CODECS["out_header"].struct.pack(32, 0, 4) + CODECS["open_out"].encode(oo)
    assert open_out_of(reply) == oo
    assert reply_header(reply) == (32, 0, 4)
    assert open_out_of(CODECS["out_header"].struct.pack(16, -2, 4)) is None


# -- nobody else decodes replies ----------------------------------------------------------

#: the modules that read replies; each must go through fusewire.wire
READERS = ["server/trace.py", "testing/dump.py", "testing/replay.py", "testing/emulator.py",
           "testing/vfs.py", "testing/procserver.py", "recovery/journal.py",
           "recovery/takeover.py", "recovery/recording.py", "recovery/keeper.py",
           "recovery/intent.py", "recovery/shared_intent.py"]
#: of those, the ones that only render: they may not even name a reply kind
RENDERERS = ["server/trace.py", "testing/dump.py", "testing/replay.py"]
#: structs that only ever appear in replies (out_header is also packed by servers)
REPLY_STRUCTS = ({row.reply_struct for row in OPS.values() if row.reply_struct}
                 | {"entry_out", "entry2_out", "open_out", "dirent", "direntplus",
                    "getxattr_out", "ioctl_out", "init_out", "init_out_v2", "compound_out"})
_DECODING = {"decode", "unpack_from", "iter_unpack", "unpack", "head"}


def _reply_codec(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
               and n.slice.value in REPLY_STRUCTS for n in ast.walk(node))


def hand_decoders(source: str) -> list[str]:
    """Places in ``source`` that decode a reply struct without the core decoder."""
    tree = ast.parse(source)
    bound = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and _reply_codec(node.value) for t in node.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "decode_sized":
            found.append(f"line {node.lineno}: decode_sized")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in _DECODING):
            obj = node.func.value
            if _reply_codec(obj) or any(isinstance(n, ast.Name) and n.id in bound
                                        for n in ast.walk(obj)):
                found.append(f"line {node.lineno}: {ast.unparse(node.func)}")
    return found


def test_the_scanner_finds_a_hand_decoder() -> None:
    assert hand_decoders('x = CODECS["attr_out"].decode(body)\n')
    assert hand_decoders('_O = CODECS["open_out"].struct\nfh = _O.unpack_from(b)[0]\n')
    assert hand_decoders("rec = decode_sized(c, b, 0, 8)\n")
    assert not hand_decoders('_W = CODECS["write_out"].struct\nb = _W.pack(1, 0)\n')


@pytest.mark.parametrize("rel", READERS)
def test_readers_carry_no_decoder_of_their_own(rel: str) -> None:
    source = (PKG / rel).read_text()
    assert hand_decoders(source) == [], f"{rel} decodes replies itself"


@pytest.mark.parametrize("rel", RENDERERS)
def test_renderers_do_not_switch_on_reply_kinds(rel: str) -> None:
    tree = ast.parse((PKG / rel).read_text())
    kinds = [f"line {n.lineno}: Reply.{n.attr}" for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
             and n.value.id == "Reply"]
    assert kinds == [], f"{rel} switches on reply kinds: {kinds}"


@pytest.mark.parametrize("rel", ["server/trace.py", "testing/dump.py", "testing/emulator.py",
                                 "recovery/journal.py", "recovery/recording.py"])
def test_readers_import_the_core_decoder(rel: str) -> None:
    tree = ast.parse((PKG / rel).read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "fusewire.wire"
               for n in ast.walk(tree)), f"{rel} does not use fusewire.wire"
