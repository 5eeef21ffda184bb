"""The RFC profiles, byte for byte: fusewire against the posted LOOKUP_HANDLE patches.

Every request below is written out field by field from the posted patches
(the message-id of each rule is next to it), fed to the real Connection +
Dispatcher, and the reply is checked byte for byte.  The emulated kernel
(``KernelEmulator(lookup_handle="rfc-v2" | "rfc-v3")``) must build the same
bytes and refuse what the posted kernels refuse.

* RFC v2 3/6 <20251212181254.59365-4-luis@igalia.com>: bit 43,
  ``fuse_init_out.max_handle_sz`` (u16 at offset 42), FUSE_MAX_HANDLE_SZ 128,
  LOOKUP_HANDLE = 54; ``fuse_new_init`` ORs the opcode into the offer;
  ``process_init_reply`` enables the feature for ``0 < max_handle_sz <= 128``.
* RFC v2 4/6 <20251212181254.59365-5-luis@igalia.com>: LOOKUP_HANDLE replaces
  LOOKUP (name, NUL, parent's ``fuse_file_handle {u32 size, u32 type}``);
  create-type requests append the parent's handle; replies are
  ``fuse_entry_out`` + ``fuse_file_handle`` + bytes; ``size == 0`` or
  ``>= 128`` is invalid, ``fuse_iget`` refuses ``size >= max_handle_sz``.
* RFC v3 6/8 <20260225112439.27276-7-luis@igalia.com>: LOOKUP_HANDLE = 55
  inside a FUSE_COMPOUND with a STATX on FUSE_ROOT_ID, parent handle in a
  FUSE_EXT_HANDLE (33) extension, reply ``fuse_entry2_out`` + ``{u16 size}``
  + bytes; other entry replies keep their upstream size.
* RFC v3 8/8 <20260225112439.27276-9-luis@igalia.com>: MKOBJ_HANDLE = 56 in an
  atomic compound with STATX and OPEN; its reply has no ``fuse_open_out``.
* RFC v3 5/8 <20260225112439.27276-6-luis@igalia.com>: the STATX in-args
  (``sx_mask = STATX_BASIC_STATS | STATX_BTIME``).
* FUSE_COMPOUND v5 1/3 <20260210-fuse-compounds-upstream-v5-1-ea0585f62daa@ddn.com>
  (what RFC v3 is based on): COMPOUND = 54, ``fuse_compound_in {u32 count,
  u32 flags, u32 result_size, u64 reserved}`` (24 bytes with C padding),
  ``fuse_compound_out {u32 count, u32 flags, u64 reserved}``, ATOMIC = 1 << 1,
  sub-request headers with only len/opcode/nodeid/uid/gid/pid set.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
from pathlib import Path
from typing import Any

import conftest
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusewire import handles as fh
from fusewire.connection import Config, Connection
from fusewire.examples.memfs import MemFS
from fusewire.opcodes.flags import InitFlag, Opcode
from fusewire.server import mount as fm
from fusewire.server.dispatch import Dispatcher
from fusewire.server.loop import Server, serve_in_thread
from fusewire.server.replies import entry_bytes
from fusewire.server.replies import statx_bytes as _statx_bytes
from fusewire.structs.codec import CODECS
from fusewire.testing.emulator import KernelEmulator, Pending
from fusewire.types import RequestContext
from fusewire.wire import KERNEL_FLAGS, ReplySizeError, encode_init, split_reply

SECRET = bytes(range(32))
ROOT = 1
UID, GID, PID = 1000, 1000, 4242
#: the emulated caller, for direct handler calls
CALLER = RequestContext(UID, GID, PID)
#: a MemFS handle: format byte, length byte, 16 inner bytes, 16-byte tag
MEMFS_HANDLE = 34
LOOKUP_HANDLE_V2, COMPOUND, LOOKUP_HANDLE_V3, MKOBJ_HANDLE = 54, 54, 55, 56
BIT43 = 1 << 43
COMPOUND_ATOMIC = 1 << 1           # compound v5 1/3
STATX_MASK = 0x7FF | 0x800         # STATX_BASIC_STATS | STATX_BTIME (v3 5/8)


def in_header(length: int, opcode: int, unique: int, nodeid: int, extlen: int = 0) -> bytes:
    """fuse_in_header {len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding}."""
    return struct.pack("<IIQQIIIHH", length, opcode, unique, nodeid, UID, GID, PID, extlen, 0)


def sub_header(length: int, opcode: int, nodeid: int) -> bytes:
    """A v5 compound sub-request header: fuse_compound_build_one_op zeroes it and sets
    len, opcode, nodeid, uid, gid, pid only (unique 0, total_extlen 0)."""
    return struct.pack("<IIQQIIIHH", length, opcode, 0, nodeid, UID, GID, PID, 0, 0)


def out_header(length: int, error: int, unique: int) -> bytes:
    return struct.pack("<IiQ", length, error, unique)


def _memfs() -> MemFS:
    """A memfs whose root the emulated caller (uid 1000, not root) owns."""
    return MemFS(root_uid=UID, root_gid=GID)


def rfc_emu(profile: str, fs: Any = None, **cfg: Any) -> KernelEmulator:
    """A posted-RFC kernel (never offers bit 43) and a server asserting the profile."""
    config = Config(lookup_handle=profile, handle_secret=SECRET, assert_lookup_handle=True,
                    **cfg)
    return KernelEmulator(fs if fs is not None else _memfs(), lookup_handle=profile,
                          config=config, uid=UID, gid=GID, pid=PID)


def exchange(emu: KernelEmulator, msg: bytes) -> bytes:
    bufs, _ = emu.dispatcher.dispatch(msg)
    assert bufs is not None
    return b"".join(bytes(b) for b in bufs)


def sent_bytes(emu: KernelEmulator) -> list[bytes]:
    """Record every message the emulated kernel sends from now on."""
    sent: list[bytes] = []
    orig = emu._receive

    def keep(p: Pending) -> None:
        orig(p)
        sent.append(p.raw)

    emu._receive = keep  # type: ignore[method-assign]
    return sent


def init_body(config: Config, offered: int, minor: int = 45) -> bytes:
    d = Dispatcher(_memfs(), Connection(config))
    bufs, _ = d.dispatch(encode_init(minor, offered))
    assert bufs is not None
    error, _unique, body = split_reply(b"".join(bytes(b) for b in bufs))
    assert error == 0
    return body


def flags_of(body: bytes) -> int:
    flags, flags2 = struct.unpack_from("<I", body, 12)[0], struct.unpack_from("<I", body, 32)[0]
    return int(flags | flags2 << 32)


# -- negotiation with the posted kernels -------------------------------------------------------


@pytest.mark.parametrize(("profile", "opcode"), [("rfc-v2", LOOKUP_HANDLE_V2),
                                                  ("rfc-v3", LOOKUP_HANDLE_V3)])
def test_negotiation_strict_and_asserted(profile: str, opcode: int) -> None:
    # v2 3/6 and v3 6/8: fuse_new_init offers "| FUSE_LOOKUP_HANDLE", the opcode value
    offered = KERNEL_FLAGS | opcode
    assert not offered & BIT43
    # v3 6/8 raises FUSE_KERNEL_MINOR_VERSION to 46; v2 keeps 45
    minor = 46 if profile == "rfc-v3" else 45
    strict = init_body(Config(lookup_handle=profile), offered, minor)
    assert not flags_of(strict) & BIT43 and strict[42:44] == b"\0\0"
    asserting = Config(lookup_handle=profile, assert_lookup_handle=True, max_handle_sz=64)
    body = init_body(asserting, offered, minor)
    assert struct.unpack_from("<I", body, 4)[0] == 45          # fusewire answers 7.45
    flags = flags_of(body)
    assert flags & BIT43 and flags & InitFlag.INIT_EXT   # flags2 is read only with INIT_EXT
    # READDIRPLUS with handles is undefined in both RFCs: not negotiated
    assert not flags & (InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO)
    # v2: max_handle_sz is the u16 at offset 42; v3 has no size in INIT
    assert struct.unpack_from("<H", body, 42)[0] == (64 if profile == "rfc-v2" else 0)
    assert body[44:] == bytes(20)
    if profile == "rfc-v3":
        # a 7.45 kernel (6.18) cannot run the v3 series: nothing is asserted
        assert not flags_of(init_body(asserting, offered, 45)) & BIT43
    # the emulated posted kernel: strict server -> no profile; asserting server -> profile
    emu = KernelEmulator(_memfs(), lookup_handle=profile,
                         config=Config(lookup_handle=profile, handle_secret=SECRET))
    assert emu.session is not None and emu.session.lookup_handle is None
    emu = rfc_emu(profile)
    assert emu.session is not None and emu.session.lookup_handle == profile
    assert emu.conn.session is not None and emu.conn.session.lookup_handle == profile


def test_v2_kernel_refuses_a_bad_max_handle_sz() -> None:
    # v2 3/6: the feature is enabled only for 0 < max_handle_sz <= 128
    emu = rfc_emu("rfc-v2", max_handle_sz=128)
    assert emu.session is not None and emu.session.max_handle_sz == 128
    raw = init_body(Config(lookup_handle="rfc-v2", assert_lookup_handle=True),
                    KERNEL_FLAGS | LOOKUP_HANDLE_V2)
    assert struct.unpack_from("<H", raw, 42)[0] == 128


# -- rfc-v2: LOOKUP_HANDLE (54) by name, handles of 1..S-1 bytes --------------------------------


def v2_element(handle: bytes) -> bytes:
    """fuse_file_handle {u32 size, u32 type} + bytes.  The v2 kernel stores only size and
    bytes (fuse_iget), so the type it sends back is always 0; fusewire writes 0."""
    return struct.pack("<II", len(handle), 0) + handle


@pytest.mark.parametrize("slot", [128, 64])
def test_v2_lookup_handle_bytes(slot: int) -> None:
    fs = _memfs()
    emu = rfc_emu("rfc-v2", fs, max_handle_sz=slot)
    handles = emu.dispatcher.handles
    assert handles is not None and handles.max_size == slot - 1
    sent = sent_bytes(emu)
    d = emu.mkdir("/d")
    f = emu.mknod("/d/f", stat.S_IFREG | 0o644)
    dh, fh_ = emu.inode_handles[d], emu.inode_handles[f]
    assert len(dh) == len(fh_) == MEMFS_HANDLE < slot

    # MKDIR in the root: no parent handle (the root inode predates the INIT reply)
    assert sent[0][40 + 8:] == b"d\0"
    # MKNOD in /d: mknod_in, name, then d's fuse_file_handle
    mknod_in = struct.pack("<IIII", stat.S_IFREG | 0o644, 0, 0o022, 0)
    body = mknod_in + b"f\0" + v2_element(dh)
    unique = struct.unpack_from("<Q", sent[1], 8)[0]
    assert sent[1] == in_header(40 + len(body), Opcode.MKNOD, unique, d) + body

    # LOOKUP_HANDLE of "f" in /d, written out from v2 4/6 (fuse_lookup_init)
    body = b"f\0" + v2_element(dh)
    msg = in_header(40 + len(body), LOOKUP_HANDLE_V2, 0x1000, d) + body
    reply = exchange(emu, msg)
    attr = fs.getattr(f, None)  # type: ignore[arg-type]
    expected = out_header(16 + 128 + 8 + MEMFS_HANDLE, 0, 0x1000) + entry_bytes(attr) + \
        v2_element(fh_)
    assert reply == expected
    # the same lookup, sent by the emulated kernel (a fresh path walk)
    emu.inc_epoch()
    sent.clear()
    assert emu.lookup("/d/f") == f
    assert sent[-1][:8] == msg[:8] and sent[-1][16:] == msg[16:]


def test_v2_lookup_in_the_root_has_no_parent_handle() -> None:
    fs = _memfs()
    emu = rfc_emu("rfc-v2", fs)
    f = emu.mknod("/f", stat.S_IFREG | 0o644)
    msg = in_header(40 + 2, LOOKUP_HANDLE_V2, 0x1000, ROOT) + b"f\0"
    reply = exchange(emu, msg)
    assert len(reply) == 16 + 136 + MEMFS_HANDLE
    assert reply[16 + 128:16 + 136] == struct.pack("<II", MEMFS_HANDLE, 0)
    assert reply[16 + 136:] == emu.inode_handles[f]
    # a parent handle of size 0 (the kernel's zeroed fh) is accepted as "none"
    msg0 = in_header(40 + 10, LOOKUP_HANDLE_V2, 0x1002, ROOT) + b"f\0" + bytes(8)
    assert exchange(emu, msg0)[16:] == reply[16:]


def test_v2_create_type_replies() -> None:
    emu = rfc_emu("rfc-v2")
    raws: dict[int, list[bytes]] = {}

    def keep(p: Pending, raw: bytes) -> bytes:
        raws.setdefault(p.opcode, []).append(raw)
        return raw

    emu.reply_filter = keep
    emu.mkdir("/d")
    emu.close(emu.create("/d/c"))
    emu.symlink("c", "/d/l")
    emu.link("/d/c", "/d/g")
    emu.mknod("/d/p", stat.S_IFIFO | 0o644)
    entry = 16 + 128 + 8 + MEMFS_HANDLE
    for op in (Opcode.MKDIR, Opcode.SYMLINK, Opcode.LINK, Opcode.MKNOD):
        assert [len(r) for r in raws[op]] == [entry], op
    assert [len(r) for r in raws[Opcode.CREATE]] == [entry + 16]
    (create,) = raws[Opcode.CREATE]
    size, typ = struct.unpack_from("<II", create, 16 + 128)
    assert (size, typ) == (MEMFS_HANDLE, 0)
    assert Opcode.LOOKUP not in raws                  # LOOKUP_HANDLE replaces it


@pytest.mark.parametrize(("size", "why"), [
    (0, "fuse_invalid_file_handle"), (64, ">= max_handle_sz"), (128, "fuse_invalid"),
    (None, "plain 128-byte reply"), (-1, "reply longer than 136 + S")])
def test_v2_kernel_refuses(size: int | None, why: str) -> None:
    emu = rfc_emu("rfc-v2", max_handle_sz=64)
    emu.mkdir("/d")

    def mangle(p: Pending, raw: bytes) -> bytes:
        if p.opcode != Opcode.MKNOD:
            return raw
        entry = raw[16:16 + 128]
        if size is None:
            body = entry
        elif size == -1:
            body = entry + v2_element(bytes(56)) + bytes(9)   # 201 > 136 + 64
        else:
            body = entry + struct.pack("<II", size, 0) + bytes(min(size, 64))
        return out_header(16 + len(body), 0, p.unique) + body

    emu.reply_filter = mangle
    with pytest.raises(ReplySizeError):
        emu.mknod("/d/x", stat.S_IFREG | 0o644)
    # what fusewire sends is accepted: 1 <= size < S
    emu.reply_filter = None
    emu.mknod("/d/y", stat.S_IFREG | 0o644)
    # direct checks of the decoder on the posted rules (nodeid 0 is not checked)
    assert emu.session is not None
    neg = bytes(128) + struct.pack("<II", 0, 0)
    assert fh.decode_v2_entry(emu.session, LOOKUP_HANDLE_V2, neg).entry.nodeid == 0


def test_v2_handles_too_big_for_s_are_an_eio(caplog: pytest.LogCaptureFixture) -> None:
    # S = 24: the kernel takes 1..23 bytes, a MemFS handle needs 34: fusewire
    # answers EIO (with a log line) instead of a reply the kernel would refuse
    emu = rfc_emu("rfc-v2", max_handle_sz=24)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError) as ei:
        emu.mknod("/x", stat.S_IFREG | 0o644)
    assert ei.value.errno == errno.EIO
    assert "no handle of 1..23 bytes" in caplog.text


def test_v2_parent_handle_checked() -> None:
    emu = rfc_emu("rfc-v2")
    d = emu.mkdir("/d")
    good = emu.inode_handles[d]
    forged = good[:-1] + bytes([good[-1] ^ 1])
    for element, err in ((v2_element(forged), errno.ESTALE),
                         (struct.pack("<II", 200, 0) + good, errno.EINVAL),
                         (struct.pack("<II", len(good) + 1, 0) + good, errno.EINVAL)):
        body = b"x\0" + element
        reply = exchange(emu, in_header(40 + len(body), LOOKUP_HANDLE_V2, 0x2000, d) + body)
        assert reply == out_header(16, -err, 0x2000)


# -- rfc-v3: FUSE_COMPOUND with LOOKUP_HANDLE / MKOBJ_HANDLE + STATX ----------------------------


def ext_handle(handle: bytes) -> bytes:
    """v3 6/8 create_ext_handle: fuse_ext_header {size (8-aligned total), 33},
    fuse_file_handle {u16 size} + bytes, zero padding."""
    body = struct.pack("<H", len(handle)) + handle
    size = 8 + (len(body) + 7) // 8 * 8
    return struct.pack("<II", size, 33) + body + bytes(size - 8 - len(body))


def statx_in() -> bytes:
    """v3 5/8 fuse_statx_init without a file: getattr_flags 0, fh 0, sx_flags 0."""
    return struct.pack("<IIQII", 0, 0, 0, 0, STATX_MASK)


def compound(unique: int, flags: int, subs: list[bytes], result_size: int) -> bytes:
    """v5 1/3 fuse_compound_send: header (nodeid 0), fuse_compound_in, sub-requests."""
    head = struct.pack("<IIIIQ", len(subs), flags, result_size, 0, 0)
    body = head + b"".join(subs)
    return in_header(40 + len(body), COMPOUND, unique, 0) + body


def split_subs(reply: bytes) -> tuple[int, list[tuple[int, int, bytes]]]:
    """The outer error and (error, unique, body) of each sub-reply."""
    length, error, _unique = struct.unpack_from("<IiQ", reply)
    assert length == len(reply)
    if error:
        return error, []
    count, flags, reserved = struct.unpack_from("<IIQ", reply, 16)
    assert flags == 0 and reserved == 0
    pos, out = 32, []
    for _ in range(count):
        n, err, uniq = struct.unpack_from("<IiQ", reply, pos)
        out.append((err, uniq, reply[pos + 16:pos + n]))
        pos += n
    assert pos == len(reply)
    return 0, out


def statx_out_for(fs: MemFS, ino: int) -> bytes:
    return _statx_bytes(fs.getattr(ino, None))  # type: ignore[arg-type]


def test_v3_lookup_handle_statx_compound_bytes() -> None:
    fs = _memfs()
    emu = rfc_emu("rfc-v3", fs)
    d = emu.mkdir("/d")
    f = emu.mknod("/d/f", stat.S_IFREG | 0o644)
    assert d not in emu.inode_handles          # MKDIR keeps the plain reply: no handle
    sent = sent_bytes(emu)
    assert emu.lookup("/d") == d               # cached dentry: nothing sent
    emu.inc_epoch()
    assert emu.lookup("/d") == d               # LOOKUP_HANDLE + STATX gives d a handle
    dh = emu.inode_handles[d]
    assert len(dh) == MEMFS_HANDLE

    # LOOKUP_HANDLE "f" in /d: name, NUL, the parent's handle as FUSE_EXT_HANDLE
    # (total_extlen stays 0 in a v5 sub-header), then STATX on FUSE_ROOT_ID
    lookup_body = b"f\0" + ext_handle(dh)
    subs = [sub_header(40 + len(lookup_body), LOOKUP_HANDLE_V3, d) + lookup_body,
            sub_header(40 + 24, Opcode.STATX, ROOT) + statx_in()]
    msg = compound(0x3000, 0, subs, (40 + 2 + 128) + 256)
    reply = exchange(emu, msg)

    attr = fs.getattr(f, None)  # type: ignore[arg-type]
    fhandle = emu.dispatcher.handles.handle_of(f)  # type: ignore[union-attr]
    entry2 = struct.pack("<QQQIIQ", f, attr.generation, int(attr.entry_timeout),
                         0, 0, 0)
    sub1 = entry2 + struct.pack("<H", len(fhandle)) + fhandle
    sub2 = statx_out_for(fs, f)
    expected_body = (struct.pack("<IIQ", 2, 0, 0) + out_header(16 + len(sub1), 0, 0) + sub1
                     + out_header(16 + len(sub2), 0, 0) + sub2)
    assert reply == out_header(16 + len(expected_body), 0, 0x3000) + expected_body
    assert len(sub1) == 40 + 2 + MEMFS_HANDLE        # no fuse_open_out, no attributes
    # the STATX placeholder (FUSE_ROOT_ID) was answered for the looked-up object
    sx = CODECS["statx_out"].decode(sub2, 0)
    assert sx.stat.ino == f and stat.S_ISREG(sx.stat.mode)

    # the emulated kernel builds the same compound for the same lookup
    emu.inc_epoch()
    emu.lookup("/d")
    sent.clear()
    assert emu.lookup("/d/f") == f
    (got,) = sent
    assert got[:8] == msg[:8] and got[16:] == msg[16:]


def test_v3_mkobj_handle_statx_open_atomic_bytes() -> None:
    fs = _memfs()
    emu = rfc_emu("rfc-v3", fs)
    d = emu.mkdir("/d")
    emu.inc_epoch()
    emu.lookup("/d")
    dh = emu.inode_handles[d]
    sent = sent_bytes(emu)
    h = emu.open("/d/new", os.O_RDWR | os.O_CREAT, 0o640)
    # the path walk: LOOKUP_HANDLE "new" (ENOENT), then the atomic create compound
    create_in = struct.pack("<IIII", os.O_RDWR | os.O_CREAT, stat.S_IFREG | 0o640, 0o022, 0)
    mk_body = create_in + b"new\0" + ext_handle(dh)
    open_in = struct.pack("<II", 2, 0)     # 8/8 "XXX flags handling": FOPEN_KEEP_CACHE
    subs = [sub_header(40 + len(mk_body), MKOBJ_HANDLE, d) + mk_body,
            sub_header(40 + 24, Opcode.STATX, ROOT) + statx_in(),
            sub_header(40 + 8, Opcode.OPEN, ROOT) + open_in]
    msg = compound(0, COMPOUND_ATOMIC, subs, (40 + 2 + 128) + 256 + 16)
    assert sent[-1][:8] == msg[:8] and sent[-1][16:] == msg[16:]

    # fed again under another name: one create, three sub-replies
    mk_body2 = create_in + b"two\0" + ext_handle(dh)
    subs[0] = sub_header(40 + len(mk_body2), MKOBJ_HANDLE, d) + mk_body2
    reply = exchange(emu, compound(0x4000, COMPOUND_ATOMIC, subs, 170 + 256 + 16))
    error, parts = split_subs(reply)
    assert error == 0 and [(e, u) for e, u, _ in parts] == [(0, 0), (0, 0), (0, 0)]
    two = fs.lookup(d, b"two", CALLER)
    entry, statx, opened = (b for _e, _u, b in parts)
    fhandle = emu.dispatcher.handles.handle_of(two.st_ino)  # type: ignore[union-attr]
    assert entry == struct.pack("<QQQIIQ", two.st_ino, two.generation,
                                int(two.entry_timeout), 0, 0, 0) + \
        struct.pack("<H", len(fhandle)) + fhandle       # entry2_out + handle, no open_out
    assert CODECS["statx_out"].decode(statx, 0).stat.ino == two.st_ino
    assert len(opened) == 16 and emu.write(h, b"x") == 1
    # a failing create answers every sub-request with its error, nothing was made
    excl = struct.pack("<IIII", os.O_RDWR | os.O_CREAT | os.O_EXCL, stat.S_IFREG | 0o640,
                       0o022, 0) + b"two\0" + ext_handle(dh)
    subs[0] = sub_header(40 + len(excl), MKOBJ_HANDLE, d) + excl
    reply = exchange(emu, compound(0x4002, COMPOUND_ATOMIC, subs, 170 + 256 + 16))
    error, parts = split_subs(reply)
    assert error == 0 and [e for e, _u, _b in parts] == [-errno.EEXIST] * 3


def test_v3_mkobj_handle_alone() -> None:
    # the posted kernel sends MKOBJ_HANDLE only inside the atomic compound; alone it
    # creates the file and answers entry2_out + handle (no fuse_open_out, nothing open)
    fs = _memfs()
    emu = rfc_emu("rfc-v3", fs)
    body = struct.pack("<IIII", os.O_RDWR | os.O_CREAT, stat.S_IFREG | 0o600, 0, 0) + b"m\0"
    reply = exchange(emu, in_header(40 + len(body), MKOBJ_HANDLE, 0x7000, ROOT) + body)
    m = fs.lookup(ROOT, b"m", CALLER)
    h = emu.dispatcher.handles.handle_of(m.st_ino)  # type: ignore[union-attr]
    assert reply == out_header(16 + 42 + len(h), 0, 0x7000) + struct.pack(
        "<QQQIIQ", m.st_ino, m.generation, int(m.entry_timeout), 0, 0, 0) + \
        struct.pack("<H", len(h)) + h
    # directories cannot be made by create-and-open
    body = struct.pack("<IIII", os.O_RDWR, stat.S_IFDIR | 0o700, 0, 0) + b"n\0"
    reply = exchange(emu, in_header(40 + len(body), MKOBJ_HANDLE, 0x7002, ROOT) + body)
    assert reply == out_header(16, -errno.EINVAL, 0x7002)


def test_v3_other_atomic_shapes_fall_back_to_mknod() -> None:
    emu = rfc_emu("rfc-v3")
    body = b"f\0"
    subs = [sub_header(40 + 2, LOOKUP_HANDLE_V3, ROOT) + body,
            sub_header(40 + 24, Opcode.STATX, ROOT) + statx_in()]
    reply = exchange(emu, compound(0x5000, COMPOUND_ATOMIC, subs, 426))
    assert reply == out_header(16, -errno.ENOSYS, 0x5000)
    # a filesystem without create: the atomic create compound is ENOSYS, and the
    # posted kernel sets fc->no_create and creates through MKNOD + OPEN
    emu2 = rfc_emu("rfc-v3", _memfs())
    emu2.dispatcher._implemented["create"] = False
    h = emu2.open("/f", os.O_RDWR | os.O_CREAT)
    assert emu2.no_create and emu2.write(h, b"ok") == 2


def test_v3_compound_errors_per_sub_request() -> None:
    emu = rfc_emu("rfc-v3")
    d = emu.mkdir("/d")
    # non-atomic: a missing name fails LOOKUP_HANDLE; the STATX aimed at its
    # result gets the same error (the kernel reports the first)
    subs = [sub_header(40 + 5, LOOKUP_HANDLE_V3, d) + b"nope\0",
            sub_header(40 + 24, Opcode.STATX, ROOT) + statx_in()]
    error, parts = split_subs(exchange(emu, compound(0x6000, 0, subs, 426)))
    assert error == 0 and [e for e, _u, _b in parts] == [-errno.ENOENT, -errno.ENOENT]
    with pytest.raises(OSError) as ei:
        emu.stat("/d/nope")
    assert ei.value.errno == errno.ENOENT
    # a count that does not match the sub-requests, or sub-requests that do not tile
    bad = compound(0x6002, 0, subs, 426)
    bad = bad[:40] + struct.pack("<I", 3) + bad[44:]
    assert exchange(emu, bad) == out_header(16, -errno.EINVAL, 0x6002)
    torn = compound(0x6004, 0, [subs[0][:-1]], 170)
    assert exchange(emu, torn) == out_header(16, -errno.EINVAL, 0x6004)
    # a forged parent handle in the extension: ESTALE for the lookup and its STATX
    emu.inc_epoch()
    emu.lookup("/d")
    forged = bytearray(emu.inode_handles[d])
    forged[-1] ^= 1
    body = b"x\0" + ext_handle(bytes(forged))
    subs = [sub_header(40 + len(body), LOOKUP_HANDLE_V3, d) + body,
            sub_header(40 + 24, Opcode.STATX, ROOT) + statx_in()]
    error, parts = split_subs(exchange(emu, compound(0x6006, 0, subs, 426)))
    assert [e for e, _u, _b in parts] == [-errno.ESTALE, -errno.ESTALE]


def test_v3_plain_sizes_everywhere_else() -> None:
    emu = rfc_emu("rfc-v3")
    raws: dict[int, list[bytes]] = {}

    def keep(p: Pending, raw: bytes) -> bytes:
        raws.setdefault(p.opcode, []).append(raw)
        return raw

    emu.reply_filter = keep
    d = emu.mkdir("/d")
    emu.mknod("/d/p", stat.S_IFIFO | 0o644)
    emu.symlink("p", "/d/l")
    err, _ = emu.request(Opcode.CREATE, d, names=(b"c",),
                         arg=CODECS["create_in"].record(flags=os.O_RDWR, mode=0o600,
                                                        umask=0, open_flags=0))
    assert err == 0
    err, _ = emu.request(Opcode.TMPFILE, d, names=(b"/",),
                         arg=CODECS["create_in"].record(flags=os.O_RDWR, mode=0o600,
                                                        umask=0, open_flags=0))
    assert err == 0
    for op in (Opcode.MKDIR, Opcode.MKNOD, Opcode.SYMLINK):
        assert {len(r) for r in raws[op]} == {16 + 128}, op
    for op in (Opcode.CREATE, Opcode.TMPFILE):
        assert {len(r) for r in raws[op]} == {16 + 128 + 16}, op
    # the posted v3 fuse_iget warns "NULL file handle" for these inodes
    assert d in emu.null_handle_warnings


def test_v3_kernel_refuses() -> None:
    emu = rfc_emu("rfc-v3")
    emu.mkdir("/d")

    def append_handle(p: Pending, raw: bytes) -> bytes:
        if p.opcode != Opcode.MKNOD:
            return raw
        body = raw[16:] + struct.pack("<H", 4) + b"abcd"   # the fusewire-profile layout
        return out_header(16 + len(body), 0, p.unique) + body

    emu.reply_filter = append_handle
    with pytest.raises(ReplySizeError):
        emu.mknod("/d/x", stat.S_IFREG | 0o644)           # plain size expected
    emu.reply_filter = None
    # the compound reply checks of v5 1/3 and the handle limit of 6/8
    sizes = [170, 256]
    ok = struct.pack("<IIQ", 2, 0, 0) + out_header(16 + 42, 0, 0) + bytes(42) + \
        out_header(16 + 256, 0, 0) + bytes(256)
    assert len(fh.decode_compound_reply(ok, 2, sizes)) == 2
    with pytest.raises(fh.HandleWireError):
        fh.decode_compound_reply(ok + bytes(16 + 426 + 32 - len(ok) + 1), 2, sizes)
    torn = struct.pack("<IIQ", 1, 0, 0) + out_header(8, 0, 0)
    with pytest.raises(fh.HandleWireError):
        fh.decode_compound_reply(torn, 2, sizes)
    with pytest.raises(fh.HandleWireError):
        fh.decode_v3_entry(bytes(40) + struct.pack("<H", 129) + bytes(129))


def test_v3_link_makes_the_inode_bad_in_the_posted_kernel() -> None:
    # v3 6/8 fuse_iget(..., NULL) for LINK's plain reply: the inode has a handle
    # from LOOKUP_HANDLE and fuse_file_handle_is_equal(fh, NULL) is false
    emu = rfc_emu("rfc-v3")
    emu.close(emu.create("/a"))
    a = emu.lookup("/a")
    assert a in emu.inode_handles
    h = emu.open("/a", os.O_RDWR)
    emu.link("/a", "/b")
    assert emu.stale_detected and emu.stale_detected[-1][0] == a
    with pytest.raises(OSError) as ei:
        emu.read(h, 1)
    assert ei.value.errno == errno.EIO


# -- restart: revalidation as the RFCs define it ---------------------------------------------------


class SaltFS(MemFS):
    """MemFS whose handles end with a per-object salt: a successor that changed an
    object's salt serves another object under the same nodeid and generation."""

    def __init__(self) -> None:
        super().__init__(root_uid=UID, root_gid=GID)
        self.salt: dict[int, int] = {}

    def handle_of(self, inode: int) -> bytes | None:
        inner = super().handle_of(inode)
        return None if inner is None else inner + bytes([self.salt.get(inode, 0)])

    def inode_for_handle(self, handle: bytes) -> int:
        ino = super().inode_for_handle(handle[:16])
        if handle[16:] != bytes([self.salt.get(ino, 0)]):
            raise fh.FUSEError(errno.ESTALE)
        return ino


def successor(emu: KernelEmulator, fs: Any) -> Dispatcher:
    """A new server for the same connection (session restored, as from the keeper's
    journal) with ``fs`` and no node table."""
    return Dispatcher(fs, Connection.restore(emu.conn.export_state(), emu.conn.config))


@pytest.mark.parametrize("profile", ["rfc-v2", "rfc-v3"])
def test_restart_revalidates_dentries(profile: str) -> None:
    fs = SaltFS()
    emu = rfc_emu(profile, fs)
    d = emu.mkdir("/d")
    h = emu.open("/d/keep", os.O_RDWR | os.O_CREAT)
    assert emu.write(h, b"keep data") == 9
    emu.close(emu.create("/d/gone"))
    h2 = emu.open("/d/other", os.O_RDWR | os.O_CREAT)
    keep, gone, other = (emu.lookup(p) for p in ("/d/keep", "/d/gone", "/d/other"))
    pending = emu.submit(Opcode.GETATTR, keep, arg=CODECS["getattr_in"].zero())
    in_flight = None
    if profile == "rfc-v3":
        # a lookup compound the dead server had read: re-sent and answered by the successor
        subs = [fh.encode_sub_request(LOOKUP_HANDLE_V3, d, b"keep\0"),
                fh.encode_sub_request(Opcode.STATX, ROOT, statx_in())]
        arg = CODECS["compound_in"].record(count=2, flags=0, result_size=426, padding=0,
                                           reserved=0)
        in_flight = emu.submit(COMPOUND, 0, arg=arg, data=b"".join(subs))

    # The server dies; its successor has the same data, except that "gone" was
    # deleted and "other" is another object under the same nodeid and generation.
    fs2 = SaltFS()
    fs2.load_state(fs.dump_state())
    fs2.unlink(d, b"gone", CALLER)
    fs2.forget([(gone, 1 << 30)])
    fs2.salt = {other: 1}
    report = emu.restart(successor(emu, fs2))

    # every cached name was looked up again (v2: LOOKUP_HANDLE 54 with the parent's
    # handle; v3: the LOOKUP_HANDLE + STATX compound) and nodeid + handle compared
    assert report.revalidated == {d: 0, keep: 0, gone: errno.ENOENT, other: errno.ESTALE}
    assert other in emu.bad and keep not in emu.bad and gone not in emu.bad
    err, attr_out = emu.complete(report.resent[0])
    assert report.resent[0] is pending and err == 0 and attr_out.attr.ino == keep
    if in_flight is not None:
        assert report.resent == [pending, in_flight] and in_flight.unique >> 63 == 1
        err, body = emu.complete(in_flight)
        lookup, statx = fh.decode_compound_reply(body, 2, [170, 256])
        assert err == 0 and lookup.error == 0 and statx.error == 0
        assert fh.decode_v3_entry(lookup.body).entry.nodeid == keep
        assert CODECS["statx_out"].decode(statx.body, 0).stat.ino == keep
    else:
        assert report.resent == [pending]

    assert emu.read(h, 100) == b"keep data"           # the same object: keeps working
    with pytest.raises(OSError) as ei:
        emu.read(h2, 1)                               # another object: the inode is bad
    assert ei.value.errno == errno.EIO
    with pytest.raises(OSError) as ei:
        emu.stat("/d/gone")
    assert ei.value.errno == errno.ENOENT
    # a new lookup of "other" gets a new inode with the successor's handle
    assert emu.lookup("/d/other") == other and other not in emu.bad
    assert emu.inode_handles[other] == emu.dispatcher.handles.handle_of(other)  # type: ignore[union-attr]
    assert sorted(emu.readdir("/d")) == [b"keep", b"other"]


# -- a real kernel (6.18, no RFC) ------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "asserted"), [("rfc-v2", False), ("rfc-v3", False),
                                                    ("rfc-v3", True), ("fusewire", False)])
def test_real_kernel_without_the_rfc_stays_upstream(tmp_path: Path, profile: str,
                                                    asserted: bool) -> None:
    """On a real 7.45 mount a configured profile is not negotiated (the kernel offers
    no bit 43; rfc-v3 is not asserted to a 7.45 kernel) and the mount works."""
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config = Config(lookup_handle=profile, assert_lookup_handle=asserted,
                    handle_secret=SECRET)
    server = Server(MemFS(), str(mnt), config=config)
    seen: list[int] = []
    server.dispatcher.observer = lambda req: seen.append(req.opcode)
    thread = serve_in_thread(server)
    dog = threading.Timer(conftest.WATCHDOG, lambda: fm.abort_connection(str(mnt)))
    dog.daemon = True
    dog.start()
    try:
        session = server.conn.session
        assert session is not None and session.lookup_handle is None
        assert not session.flags & BIT43 and server.dispatcher.handles is None
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_bytes(b"data")
        os.link(mnt / "d" / "f", mnt / "d" / "g")
        assert (mnt / "d" / "g").read_bytes() == b"data"
        assert sorted(os.listdir(mnt / "d")) == ["f", "g"]
        assert not {54, 55, 56, 57} & set(seen)
    finally:
        dog.cancel()
        server.stop()
        thread.join(10)
        server.close()


# -- bad input never kills the server ---------------------------------------------------------


#: one server for all examples (state from earlier examples is fine: any input goes)
_FUZZ_EMU: list[KernelEmulator] = [rfc_emu("rfc-v3")]
_SUB_OPS = st.sampled_from([LOOKUP_HANDLE_V3, MKOBJ_HANDLE, Opcode.STATX, Opcode.OPEN,
                            Opcode.GETATTR, Opcode.FORGET, COMPOUND, Opcode.INIT, 999])


@st.composite
def _compounds(draw: st.DrawFn) -> bytes:
    subs = []
    for _ in range(draw(st.integers(0, 4))):
        body = draw(st.binary(max_size=80))
        length = 40 + len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, -40]))
        subs.append(struct.pack("<IIQQIIIHH", max(0, length), draw(_SUB_OPS), 0,
                                draw(st.sampled_from([0, ROOT, 2, 99])), 0, 0, 0,
                                draw(st.sampled_from([0, 0, 1, 50])), 0) + body)
    count = draw(st.one_of(st.just(len(subs)), st.integers(0, 20)))
    flags = draw(st.sampled_from([0, COMPOUND_ATOMIC, 1, 0xFFFFFFFF]))
    body = struct.pack("<IIIIQ", count, flags, draw(st.integers(0, (1 << 32) - 1)), 0, 0)
    body += b"".join(subs) + draw(st.binary(max_size=8))
    return in_header(40 + len(body), COMPOUND, 0x9000, 0) + body


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(msg=_compounds())
def test_malformed_compounds_get_one_reply(msg: bytes) -> None:
    emu = _FUZZ_EMU[0]
    bufs, _ = emu.dispatcher.dispatch(msg)
    assert bufs is not None
    raw = b"".join(bytes(b) for b in bufs)
    length, error, unique = struct.unpack_from("<IiQ", raw)
    assert length == len(raw) and unique == 0x9000
    if error:
        assert length == 16 and -error in (errno.EINVAL, errno.ENOSYS, errno.EIO)
    else:
        split_subs(raw)          # well-formed: one complete sub-reply per count

