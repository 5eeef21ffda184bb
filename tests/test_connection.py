"""The sans-IO connection: INIT negotiation, framing rules, uniques, extensions, export."""

from __future__ import annotations

import errno
import struct

import pytest

from fusewire.connection import DEFAULT_WANT, Config, Connection, Session, parse_request
from fusewire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from fusewire.opcodes import FUSE_UNIQUE_RESEND, InitFlag, Opcode
from fusewire.structs.codec import CODECS

KERNEL_FLAGS = 0x73FFFFFB | (0x5FD << 32)  # what 6.18 offers (protocol.md §3)


def msg(opcode: int, unique: int, nodeid: int = 1, body: bytes = b"", extlen: int = 0) -> bytes:
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, nodeid, 0, 0, 1,
                       extlen, 0) + body


def init_msg(minor: int = 45, flags: int = KERNEL_FLAGS, unique: int = 2) -> bytes:
    if minor >= 36:
        body = struct.pack("<IIII", 7, minor, 131072, flags & 0xFFFFFFFF) + \
            struct.pack("<I", flags >> 32) + bytes(44)
    else:
        body = struct.pack("<IIII", 7, minor, 131072, flags & 0xFFFFFFFF)
    return msg(Opcode.INIT, unique, 0, body)


def ready(minor: int = 45, config: Config | None = None) -> Connection:
    conn = Connection(config)
    conn.initialize(conn.receive(init_msg(minor)))
    return conn


@pytest.mark.parametrize("minor", [19, 23, 31, 36, 38, 40, 45])
def test_init_negotiates_min_minor_and_reply_size(minor: int) -> None:
    conn = Connection()
    req = conn.receive(init_msg(minor))
    (reply,) = conn.initialize(req)
    size, err, unique = struct.unpack_from("<IiQ", reply)
    assert (err, unique) == (0, 2)
    assert size - 16 == (64 if minor >= 23 else 24)
    out = CODECS["init_out"].decode(reply[16:] + bytes(64 - (size - 16)))
    assert (out.major, out.minor) == (7, minor)
    assert conn.session is not None and conn.session.minor == minor
    if minor < 36:
        assert out.flags2 == 0 and conn.session.flags >> 32 == 0


def test_we_advertise_only_offered_flags_and_never_request_timeout() -> None:
    conn = ready()
    s = conn.session
    assert s is not None
    assert s.flags & ~KERNEL_FLAGS == 0
    assert not s.flags & InitFlag.REQUEST_TIMEOUT
    assert s.request_timeout == 0
    assert s.flags & InitFlag.INIT_EXT
    assert s.max_write == 1 << 20 and s.max_pages == 256


def test_max_write_capped_without_max_pages() -> None:
    conn = Connection(Config(want=InitFlag.BIG_WRITES))
    conn.initialize(conn.receive(init_msg(45)))
    assert conn.session is not None and conn.session.max_write == 128 * 1024


def test_major_mismatch_gets_error_reply() -> None:
    conn = Connection()
    body = struct.pack("<IIII", 8, 0, 0, 0)
    req = conn.receive(msg(Opcode.INIT, 2, 0, body))
    (reply,) = conn.initialize(req)
    assert struct.unpack_from("<IiQ", reply) == (16, -errno.EPROTO, 2)
    assert conn.session is None


def test_request_before_init_and_second_init_are_protocol_errors() -> None:
    conn = Connection()
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(msg(Opcode.GETATTR, 4, 1, bytes(16)))
    assert e.value.unique == 4 and e.value.errno_hint == errno.EIO
    conn.initialize(conn.receive(init_msg()))
    with pytest.raises(RemoteProtocolError) as e2:
        conn.receive(init_msg(unique=6))
    assert e2.value.unique == 6 and e2.value.errno_hint == errno.EPROTO


def test_length_and_size_validation() -> None:
    conn = ready()
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(msg(Opcode.GETATTR, 4, 1, bytes(16))[:-1])
    assert e.value.unique == 4
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(msg(Opcode.GETATTR, 6, 1, bytes(8)))
    assert e.value.errno_hint == errno.EINVAL
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(msg(Opcode.LOOKUP, 8, 1, b"no-nul"))
    assert e.value.errno_hint == errno.EINVAL
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(msg(Opcode.FORGET, 10, 2, bytes(4)))
    assert not e.value.needs_reply
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(b"\x01\x02")
    assert e.value.unique is None and not e.value.needs_reply
    with pytest.raises(RemoteProtocolError) as e:
        conn.receive(msg(999, 12))
    assert e.value.errno_hint == errno.ENOSYS


def test_write_data_is_a_view_and_size_checked() -> None:
    conn = ready()
    wi = CODECS["write_in"].encode(CODECS["write_in"].record(7, 0, 5, 0, 0, 0, 0))
    req = conn.receive(msg(Opcode.WRITE, 4, 2, wi + b"hello"))
    assert isinstance(req.data, memoryview) and bytes(req.data) == b"hello"
    with pytest.raises(RemoteProtocolError):
        conn.receive(msg(Opcode.WRITE, 6, 2, wi + b"hell"))


def test_minor_dependent_request_layout() -> None:
    conn = ready(19, Config(want=DEFAULT_WANT & ~InitFlag.SETXATTR_EXT))
    assert conn.session is not None
    # SETXATTR without SETXATTR_EXT negotiated: 8-byte setxattr_in
    body = struct.pack("<II", 3, 0) + b"user.a\0" + b"abc"
    req = conn.receive(msg(Opcode.SETXATTR, 4, 2, body))
    assert req.names == (b"user.a",) and bytes(req.data) == b"abc"


def test_resend_bit_and_interrupts() -> None:
    conn = ready()
    req = conn.receive(msg(Opcode.GETATTR, FUSE_UNIQUE_RESEND | 8, 1, bytes(16)))
    assert req.resent and req.key == 8 and req.unique == FUSE_UNIQUE_RESEND | 8
    assert 8 in conn.inflight
    conn.receive(msg(Opcode.INTERRUPT, FUSE_UNIQUE_RESEND | 9, 0,
                     struct.pack("<Q", FUSE_UNIQUE_RESEND | 8)))
    assert conn.is_interrupted(8) and conn.is_interrupted(FUSE_UNIQUE_RESEND | 8)
    bufs = conn.reply(req.unique)
    assert struct.unpack_from("<IiQ", bufs[0])[2] == FUSE_UNIQUE_RESEND | 8
    assert 8 not in conn.inflight and not conn.is_interrupted(8)


def test_extensions_supp_groups_and_secctx() -> None:
    conn = ready()
    groups = struct.pack("<IIII", 16, 32, 1, 1234)
    secctx = struct.pack("<II", 8, 0)  # nr_secctx = 0 (no LSM), seen live
    body = struct.pack("<II", 0o755, 0o022) + b"sub\0" + secctx + groups
    req = conn.receive(msg(Opcode.MKDIR, 4, 1, body, extlen=3))
    assert req.names == (b"sub",)
    assert req.ext is not None and req.ext.groups == (1234,)
    with pytest.raises(RemoteProtocolError):
        conn.receive(msg(Opcode.MKDIR, 6, 1, body[:-8] + struct.pack("<II", 7, 32),
                         extlen=3))


def test_export_and_restore_start_initialised() -> None:
    conn = ready(40)
    state = conn.export_state()
    succ = Connection.restore(state)
    assert succ.session == conn.session
    req = succ.receive(msg(Opcode.GETATTR, FUSE_UNIQUE_RESEND | 10, 1, bytes(16)))
    assert req.opcode == Opcode.GETATTR
    assert Session.from_dict(conn.session.to_dict()) == conn.session  # type: ignore[union-attr]


def test_error_taxonomy() -> None:
    with pytest.raises(TypeError):
        ProtocolError("x")
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.reply_error(2, 600)


def test_parse_is_pure() -> None:
    conn = ready()
    m = msg(Opcode.LOOKUP, 4, 1, b"abc\0")
    assert parse_request(m, conn.session) == parse_request(m, conn.session)


# --- notifications are encoded by the core from the NOTIFICATIONS rows -----------------


def test_encode_notification_matches_the_kernel_layouts() -> None:
    from fusewire.connection import encode_notification, unpack_u64s
    from fusewire.opcodes import NotifyCode

    def joined(code: int, *fields: int, tail: object = b"") -> bytes:
        return b"".join(encode_notification(code, *fields, tail=tail))  # type: ignore[arg-type]

    def hdr(code: int, body: bytes) -> bytes:
        return struct.pack("<IiQ", 16 + len(body), code, 0) + body

    # the layouts of include/uapi/linux/fuse.h, spelled out here as the specification
    assert joined(NotifyCode.POLL, 7) == hdr(1, struct.pack("<Q", 7))
    assert joined(NotifyCode.INVAL_INODE, 5, -1, 0) == hdr(2, struct.pack("<Qqq", 5, -1, 0))
    assert joined(NotifyCode.INVAL_ENTRY, 1, 3, 1, tail=b"abc") == hdr(
        3, struct.pack("<QII", 1, 3, 1) + b"abc\0")
    assert joined(NotifyCode.STORE, 9, 4096, 2, 0, tail=b"hi") == hdr(
        4, struct.pack("<QQII", 9, 4096, 2, 0) + b"hi")
    assert joined(NotifyCode.RETRIEVE, 1, 9, 0, 10, 0) == hdr(
        5, struct.pack("<QQQII", 1, 9, 0, 10, 0))
    assert joined(NotifyCode.DELETE, 1, 9, 1, 0, tail=b"x") == hdr(
        6, struct.pack("<QQII", 1, 9, 1, 0) + b"x\0")
    assert joined(NotifyCode.PRUNE, 2, 0, 0, tail=[5, 6]) == hdr(
        int(NotifyCode.PRUNE), struct.pack("<IIQQQ", 2, 0, 0, 5, 6))
    assert unpack_u64s(struct.pack("<QQ", 5, 6), 2) == (5, 6)
    assert joined(NotifyCode.RESEND) == hdr(int(NotifyCode.RESEND), b"")
    with pytest.raises(LocalProtocolError):
        encode_notification(NotifyCode.RESEND, 1)
    with pytest.raises(LocalProtocolError):
        encode_notification(NotifyCode.POLL, 1, tail=b"junk")


def test_notification_checks_the_session_minor() -> None:
    from fusewire.opcodes import NotifyCode

    conn = ready(39)
    with pytest.raises(LocalProtocolError):
        conn.notification(NotifyCode.PRUNE, 0, 0, 0, tail=[])
    assert conn.notification(NotifyCode.POLL, 3)[1] == (3).to_bytes(8, "little")
