"""The ``fusewire`` stable-handle profile (fusewire's own extension) and REVALIDATE_FH.

The emulated kernel implements the client side of the profile; the server is
the real Connection + Dispatcher.  Reply sizes are checked against layouts
computed here from the documented wire forms (docs/draft-handles.md), not
against the implementation's own constants.  The RFC profiles are checked
byte for byte against the posted patches in tests/test_lookup_handle_rfc.py.
"""

from __future__ import annotations

import copy
import errno
import functools
import os
import stat
import struct
from collections.abc import Sequence
from typing import Any

import pytest

from fusewire import EntryAttributes, FileInfo, FUSEError, Operations, RequestContext
from fusewire.connection import Config, Connection, Session
from fusewire.examples.memfs import MemFS
from fusewire.handles import HandleKey, SessionHandles
from fusewire.opcodes.flags import (
    DRAFT_FUSE_LOOKUP_HANDLE_V2,
    DRAFT_FUSE_LOOKUP_HANDLE_V3,
    DRAFT_FUSE_MKOBJ_HANDLE_V3,
    DRAFT_FUSE_REVALIDATE_FH,
    FUSE_EXT_HANDLE,
    InitFlag,
    Opcode,
)
from fusewire.recovery import journal as jn
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.codec import CODECS
from fusewire.testing.emulator import KernelEmulator, Pending, ProcessServer, from_state
from fusewire.wire import KERNEL_FLAGS, encode_init, split_reply

#: the fusewire profile (fusewire's own extension); the RFC profiles have their own
#: tests below, fed with the byte sequences the posted patches define
PROFILES = ["fusewire"]
SECRET = bytes(range(32))
#: a MemFS handle on the wire: format byte, length byte, 16 inner bytes
#: (inode u64, filesystem generation u64), 16-byte tag
MEMFS_HANDLE = 1 + 1 + 16 + 16
ROOT = 1
ENTRY_OUT, ENTRY2_OUT, OPEN_OUT, DIRENT = 128, 40, 16, 24
_R = CODECS


def make_emu(profile: str | None, fs: Operations | None = None, *,
             server_profile: str | None = "same", **cfg: Any) -> KernelEmulator:
    """An emulated kernel implementing ``profile``, and a server configured for
    ``server_profile`` (default: the same) with a fixed handle secret."""
    sp = profile if server_profile == "same" else server_profile
    config = Config(lookup_handle=sp, handle_secret=SECRET, **cfg)
    return KernelEmulator(fs if fs is not None else MemFS(), lookup_handle=profile,
                          config=config)


def capture(emu: KernelEmulator) -> dict[int, list[bytes]]:
    """Record every raw success reply (header included) by request opcode."""
    raws: dict[int, list[bytes]] = {}

    def keep(p: Pending, raw: bytes) -> bytes:
        if struct.unpack_from("<i", raw, 4)[0] == 0:
            raws.setdefault(p.opcode, []).append(raw)
        return raw

    emu.reply_filter = keep
    return raws


def element_size(handle_len: int) -> int:
    """Bytes a fuse_file_handle takes in a reply of the fusewire profile: u16 + bytes."""
    return 2 + handle_len


def ctx() -> RequestContext:
    return RequestContext()


def expect_errno(err: int, fn: Any, *args: Any) -> None:
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == err, ei.value


def init_reply(config: Config, offered: int, minor: int = 45) -> bytes:
    """The INIT reply body a server with ``config`` gives a kernel offering ``offered``."""
    d = Dispatcher(MemFS(), Connection(config))
    bufs, _ = d.dispatch(encode_init(minor, offered))
    assert bufs is not None
    error, unique, body = split_reply(b"".join(bytes(b) for b in bufs))
    assert error == 0 and unique == 2
    return body


class SpyFS(MemFS):
    """MemFS counting what reaches its handle contract."""

    def __init__(self) -> None:
        super().__init__()
        self.resolved: list[bytes] = []

    def inode_for_handle(self, handle: bytes) -> int:
        self.resolved.append(handle)
        return super().inode_for_handle(handle)


# -- negotiation ---------------------------------------------------------------------------------


def test_profile_off_nothing_on_the_wire_at_745() -> None:
    offered = KERNEL_FLAGS | InitFlag.HAS_LOOKUP_HANDLE
    for config in (Config(), Config(lookup_handle="rfc-v2")):
        kernel = offered if config.lookup_handle is None else KERNEL_FLAGS
        body = init_reply(config, kernel)
        assert len(body) == 64
        out = _R["init_out"].decode(body)
        assert out.minor == 45
        assert not (out.flags | out.flags2 << 32) & InitFlag.HAS_LOOKUP_HANDLE
        assert body[40:] == bytes(24)  # request_timeout 0, no max_handle_sz, unused zero

    # a kernel offering the draft, a server not opting in: upstream sizes everywhere
    emu = make_emu("fusewire", server_profile=None)
    assert emu.session is not None and emu.session.lookup_handle is None
    assert emu.dispatcher.handles is None
    raws = capture(emu)
    emu.mkdir("/d")
    emu.close(emu.create("/d/f"))
    emu.symlink("f", "/d/l")
    emu.link("/d/f", "/d/g")
    emu.mknod("/d/p", stat.S_IFIFO | 0o644)
    emu.inc_epoch()
    emu.lookup("/d/f")
    names = emu.readdir("/d")
    assert sorted(names) == [b"f", b"g", b"l", b"p"]
    for op in (Opcode.LOOKUP, Opcode.MKDIR, Opcode.SYMLINK, Opcode.LINK, Opcode.MKNOD):
        assert {len(r) for r in raws[op]} == {16 + ENTRY_OUT}, op
    assert {len(r) for r in raws[Opcode.CREATE]} == {16 + ENTRY_OUT + OPEN_OUT}
    plus = [r for r in raws[Opcode.READDIRPLUS] if len(r) > 16]
    assert plus
    body, pos, seen = plus[0][16:], 0, []
    while pos < len(body):
        namelen = struct.unpack_from("<I", body, pos + ENTRY_OUT + 16)[0]
        seen.append(body[pos + 152:pos + 152 + namelen])
        pos += (152 + namelen + 7) & ~7
    assert pos == len(body) and sorted(seen) == [b".", b"..", b"f", b"g", b"l", b"p"]
    # the draft opcodes do not exist on this connection
    for op in (DRAFT_FUSE_LOOKUP_HANDLE_V2, DRAFT_FUSE_REVALIDATE_FH):
        msg = struct.pack("<IIQQIIIHH", 40, op, 1000, ROOT, 0, 0, 0, 0, 0)
        bufs, _ = emu.dispatcher.dispatch(msg)
        assert bufs is not None
        assert split_reply(b"".join(bytes(b) for b in bufs))[0] == -errno.ENOSYS


def test_profile_needs_the_kernel_offer() -> None:
    emu = KernelEmulator(MemFS(), config=Config(lookup_handle="fusewire", handle_secret=SECRET))
    assert emu.conn.session is not None and emu.conn.session.lookup_handle is None
    assert emu.conn.session.handle_secret == ""
    # below 7.36 there is no flags2, so bit 43 cannot be offered at all
    body = init_reply(Config(lookup_handle="rfc-v2"), KERNEL_FLAGS | InitFlag.HAS_LOOKUP_HANDLE,
                      minor=35)
    assert not _R["init_out"].decode(body + bytes(64 - len(body))).flags2


@pytest.mark.parametrize(("profile", "size"), [("rfc-v2", 128), ("rfc-v2", 64),
                                               ("rfc-v3", 0), ("fusewire", 0)])
def test_init_reply_layout(profile: str, size: int) -> None:
    config = Config(lookup_handle=profile, max_handle_sz=size or 128)
    body = init_reply(config, KERNEL_FLAGS | InitFlag.HAS_LOOKUP_HANDLE)
    assert len(body) == 64
    out = _R["init_out"].decode(body)
    assert (out.flags | out.flags2 << 32) & InitFlag.HAS_LOOKUP_HANDLE
    # v2: max_handle_sz is the u16 at offset 42 (unused[0]); v3 has no INIT field
    assert struct.unpack_from("<H", body, 42)[0] == size
    assert body[44:] == bytes(20)


def test_config_is_checked() -> None:
    for name in ("v4", "v2", "v3"):       # the old names were renamed, not aliased
        with pytest.raises(ValueError):
            Config(lookup_handle=name)
    for bad in (0, 20, 130, 100):
        with pytest.raises(ValueError):
            Config(lookup_handle="rfc-v2", max_handle_sz=bad)
    with pytest.raises(ValueError):
        Config(lookup_handle="rfc-v2", handle_secret=b"short")


# -- entry replies carry handles ---------------------------------------------------------------


@pytest.mark.parametrize(("profile", "slot"), [("fusewire", 128)])
def test_every_entry_reply_carries_a_handle(profile: str, slot: int) -> None:
    fs = MemFS()
    emu = make_emu(profile, fs, max_handle_sz=slot)
    assert emu.session is not None and emu.session.lookup_handle == profile
    assert emu.session.max_handle_sz == 0
    handles = emu.dispatcher.handles
    assert handles is not None
    raws = capture(emu)
    hlen = MEMFS_HANDLE
    elem = element_size(hlen)

    d = emu.mkdir("/d")
    f = emu.open("/d/f", os.O_RDWR | os.O_CREAT)            # MKOBJ_HANDLE
    emu.close(f)
    emu.mknod("/d/p", stat.S_IFIFO | 0o644)
    emu.symlink("f", "/d/l")
    emu.link("/d/f", "/d/g")
    err, decoded = emu.request(Opcode.TMPFILE, d, names=(b"/",),
                               arg=_R["create_in"].record(flags=os.O_RDWR, mode=0o600,
                                                          umask=0, open_flags=0))
    assert err == 0
    err, decoded = emu.request(Opcode.LOOKUP, d, names=(b"f",))   # the legacy LOOKUP
    assert err == 0 and decoded.entry.nodeid == emu.lookup("/d/f")
    err, decoded = emu.request(Opcode.CREATE, d, names=(b"c",),
                               arg=_R["create_in"].record(flags=os.O_RDWR, mode=0o600,
                                                          umask=0, open_flags=0))
    assert err == 0
    assert emu.revalidate(emu.lookup("/d/f"), "lookup_handle") == 0
    assert emu.revalidate(emu.lookup("/d/g"), "revalidate_fh") == 0
    emu.readdir("/d")

    entry = 16 + ENTRY_OUT + elem
    expected = {Opcode.LOOKUP: entry, Opcode.MKDIR: entry, Opcode.MKNOD: entry,
                Opcode.SYMLINK: entry, Opcode.LINK: entry, Opcode.CREATE: entry + OPEN_OUT,
                Opcode.TMPFILE: entry + OPEN_OUT, DRAFT_FUSE_REVALIDATE_FH: entry}
    expected[DRAFT_FUSE_LOOKUP_HANDLE_V3] = 16 + ENTRY2_OUT + elem
    expected[DRAFT_FUSE_MKOBJ_HANDLE_V3] = 16 + ENTRY2_OUT + elem + OPEN_OUT
    for op, size in expected.items():
        assert raws.get(op), f"no reply seen for opcode {op}"
        assert {len(r) for r in raws[op]} == {size}, op

    # every handle the kernel stored has the profile's size and names its inode
    assert set(emu.inode_handles) == set(emu.nlookup)
    for nodeid, h in emu.inode_handles.items():
        assert len(h) == hlen <= slot
        assert handles.resolve(h) == nodeid

    # READDIRPLUS: entry_out, handle element, dirent, name, padding to 8
    body = max(raws[Opcode.READDIRPLUS], key=len)[16:]
    pos, names = 0, []
    while pos < len(body):
        hsz = struct.unpack_from("<H", body, pos + ENTRY_OUT)[0]
        used = 2 + hsz
        dpos = pos + ENTRY_OUT + used
        ino, _off, namelen, _type = struct.unpack_from("<QQII", body, dpos)
        name = body[dpos + DIRENT:dpos + DIRENT + namelen]
        names.append(name)
        nodeid = struct.unpack_from("<Q", body, pos)[0]
        if name in (b".", b".."):
            assert nodeid == 0 and hsz == 0
        else:
            assert nodeid == ino and hsz == hlen
            h = body[pos + ENTRY_OUT + 2:][:hsz]
            assert handles.resolve(h) == ino
        pos += (ENTRY_OUT + used + DIRENT + namelen + 7) & ~7
    assert pos == len(body)
    assert sorted(names) == [b".", b"..", b"c", b"f", b"g", b"l", b"p"]


@pytest.mark.parametrize("profile", PROFILES)
def test_requests_carry_the_parent_handle(profile: str) -> None:
    emu = make_emu(profile)
    seen: list[tuple[int, int, bytes | None]] = []
    emu.dispatcher.observer = lambda req: seen.append(
        (req.opcode, req.nodeid, req.ext.handle if req.ext is not None else None))
    d = emu.mkdir("/d")
    sub = emu.mkdir("/d/sub")
    emu.close(emu.create("/d/sub/f"))
    emu.inc_epoch()
    emu.stat("/d/sub/f")
    by_parent = {(op, n): h for op, n, h in seen}
    lookup = DRAFT_FUSE_LOOKUP_HANDLE_V3 if profile == "fusewire" else Opcode.LOOKUP
    create = DRAFT_FUSE_MKOBJ_HANDLE_V3 if profile == "fusewire" else Opcode.CREATE
    assert by_parent[(Opcode.MKDIR, d)] == emu.inode_handles[d]
    assert by_parent[(create, sub)] == emu.inode_handles[sub]
    assert by_parent[(lookup, sub)] == emu.inode_handles[sub]
    # the root was never looked up: the kernel has no handle for it
    assert by_parent[(Opcode.MKDIR, ROOT)] in (b"", None)
    raw_ext: list[bytes] = []
    emu.dispatcher.observer = lambda req: raw_ext.append(req.ext.raw if req.ext else b"")
    emu.inc_epoch()
    emu.stat("/d/sub/f")
    if profile == "fusewire":
        # v3: the handle rides in a FUSE_EXT_HANDLE request extension (padded to 8)
        size, typ, hsz = struct.unpack_from("<IIH", raw_ext[-2])
        assert typ == FUSE_EXT_HANDLE and size == len(raw_ext[-2]) == 8 + 40
        assert raw_ext[-2][10:10 + hsz] == emu.inode_handles[sub]
    else:
        # v2: an in-arg after the name, no extension block
        assert raw_ext[-2] == b""


# -- authentication --------------------------------------------------------------------------------


def clone(fs: MemFS) -> MemFS:
    """Another MemFS with the same data (what a successor loads)."""
    new = MemFS()
    new.load_state(fs.dump_state())
    return new


def _foreign_handle(fs: MemFS, profile: str, nodeid: int, slot: int) -> bytes:
    """A handle for the same object on the same data, sealed under another secret."""
    other = make_emu(profile, clone(fs), max_handle_sz=slot)
    fresh = Config(lookup_handle=profile, max_handle_sz=slot)   # random secret
    conn = Connection.restore(
        {"session": {**other.conn.export_state()["session"],
                     "handle_secret": os.urandom(32).hex()}}, fresh)
    assert conn.session is not None
    return SessionHandles(other.ops, conn.session).handle_of(nodeid)


@pytest.mark.parametrize("profile", PROFILES)
def test_forged_truncated_and_foreign_handles_are_refused(profile: str) -> None:
    fs = SpyFS()
    emu = make_emu(profile, fs)
    d = emu.mkdir("/d")
    f = emu.mknod("/d/f", stat.S_IFREG | 0o644)
    good = emu.inode_handles[f]
    slot = 128
    assert emu.revalidate(f) == 0                                # control: accepted
    reached = len(fs.resolved)
    assert fs.resolved[-1] == struct.pack("<QQ", f, emu.generations[f])

    flipped = bytearray(good)
    flipped[5] ^= 0x01            # one bit of the inner handle (the inode number)
    forged_tag = good[:-1] + bytes([good[-1] ^ 0xFF])
    other_inode = bytearray(good)
    struct.pack_into("<Q", other_inode, 2, d)   # claim to be the directory, keep the tag
    candidates = {
        "flipped": bytes(flipped), "bad tag": forged_tag, "other inode": bytes(other_inode),
        "truncated": good[:-1], "shortened": good[:20], "extended": good + b"\0",
        "foreign": _foreign_handle(fs, profile, f, slot), "garbage": os.urandom(len(good)),
        "empty-ish": bytes(18),
    }
    assert candidates["foreign"] and candidates["foreign"] != good
    gen = emu.generations[f]
    for what, bad in candidates.items():
        arg = _R["revalidate_fh_in"].record(generation=gen, nlookup=1, flags=0, padding=0)
        element = struct.pack("<H", len(bad)) + bad
        err, _ = emu.request(DRAFT_FUSE_REVALIDATE_FH, f, arg=arg, data=element)
        assert err == errno.ESTALE, what
        # as a parent handle
        err, _ = emu.request(Opcode.MKDIR, d, names=(b"x",), handle=bad,
                             arg=_R["mkdir_in"].record(mode=0o755, umask=0))
        assert err == errno.ESTALE, what
        # by LOOKUP_HANDLE
        err, _ = emu.request(DRAFT_FUSE_LOOKUP_HANDLE_V3, 0, names=(b"",), handle=bad)
        assert err == errno.ESTALE, what
    # none of them reached the filesystem's handle code
    assert len(fs.resolved) == reached
    # a valid handle of another directory is no proof for this parent either
    err, _ = emu.request(Opcode.MKDIR, d, names=(b"x",), handle=good,
                         arg=_R["mkdir_in"].record(mode=0o755, umask=0))
    assert err == errno.ESTALE
    assert emu.readdir("/d") == [b"f"]
    # a malformed fuse_file_handle (size field disagreeing with the bytes) is EINVAL
    arg = _R["revalidate_fh_in"].record(generation=gen, nlookup=1, flags=0, padding=0)
    hdr = struct.pack("<H", len(good) + 1)
    assert emu.request(DRAFT_FUSE_REVALIDATE_FH, f, arg=arg, data=hdr + good)[0] == errno.EINVAL


def test_handle_key() -> None:
    key = HandleKey(SECRET)
    h = key.seal(b"inner", 64)
    assert len(h) == 64 and key.open(h, 64) == b"inner"
    assert key.open(key.seal(b"abc")) == b"abc"
    for bad in (h[:-1], h + b"\0", bytes([2]) + h[1:], h[:1] + bytes([200]) + h[2:]):
        with pytest.raises(FUSEError) as ei:
            key.open(bad, 128)
        assert ei.value.errno == errno.ESTALE
    with pytest.raises(FUSEError):
        key.open(h, 32)                                  # longer than the session allows
    with pytest.raises(FUSEError):
        HandleKey(bytes(32)).open(h, 64)                 # another key
    with pytest.raises(ValueError):
        key.seal(bytes(50), 64)                          # does not fit


class BigHandleFS(MemFS):
    """A filesystem whose handles are ``extra`` bytes longer than MemFS's."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def handle_of(self, inode: int) -> bytes | None:
        inner = super().handle_of(inode)
        return None if inner is None else inner + bytes(self.extra)

    def inode_for_handle(self, handle: bytes) -> int:
        return super().inode_for_handle(handle[:16])


@pytest.mark.parametrize(("profile", "slot", "extra", "fits"), [
    ("fusewire", 128, 94, True), ("fusewire", 128, 95, False)])
def test_the_handle_size_limit_is_respected(profile: str, slot: int, extra: int,
                                            fits: bool) -> None:
    emu = make_emu(profile, BigHandleFS(extra), max_handle_sz=slot)
    raws = capture(emu)
    f = emu.mknod("/f", stat.S_IFREG | 0o644)
    hlen = MEMFS_HANDLE + extra
    elem = element_size(hlen if fits else 0)
    assert [len(r) for r in raws[Opcode.MKNOD]] == [16 + ENTRY_OUT + elem]
    if fits:
        assert len(emu.inode_handles[f]) == hlen <= slot
        assert emu.revalidate(f) == 0
    else:
        # too big for the negotiated size: the object gets no handle, so a
        # restart cannot vouch for it and the kernel makes it bad
        assert f not in emu.inode_handles
        assert emu.revalidate(f) == errno.ESTALE and f in emu.bad


# -- lookup counts ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_lookup_handle_by_handle_counts_one_lookup(profile: str) -> None:
    fs = MemFS()
    emu = make_emu(profile, fs)
    f = emu.mknod("/f", stat.S_IFREG | 0o644)
    assert emu.nlookup[f] == 1 and emu.dispatcher.nodes.counts[f] == 1
    assert emu.revalidate(f, "lookup_handle") == 0
    assert emu.nlookup[f] == 2 and emu.dispatcher.nodes.counts[f] == 2
    assert emu.revalidate(f, "revalidate_fh") == 0             # counts nothing
    assert emu.nlookup[f] == 2 and emu.dispatcher.nodes.counts[f] == 2
    emu.unlink("/f")
    assert f not in emu.nlookup and f not in emu.dispatcher.nodes.counts
    assert fs.handle_of(f) is None                              # freed: counts balanced


@pytest.mark.parametrize("profile", PROFILES)
def test_mkobj_handle_and_lookup_handle_edge_cases(profile: str) -> None:
    emu = make_emu(profile)
    arg = _R["create_in"].record(flags=os.O_RDWR, mode=stat.S_IFDIR | 0o755, umask=0,
                                 open_flags=0)
    assert emu.request(DRAFT_FUSE_MKOBJ_HANDLE_V3, ROOT, arg=arg,
                       names=(b"x",))[0] == errno.EINVAL
    # neither a name nor a handle
    assert emu.request(DRAFT_FUSE_LOOKUP_HANDLE_V3, ROOT, names=(b"",))[0] == errno.EINVAL
    # a negative lookup: entry2_out with nodeid 0 and an empty handle
    err, decoded = emu.request(DRAFT_FUSE_LOOKUP_HANDLE_V3, ROOT, names=(b"nope",))
    assert err == errno.ENOENT and decoded is None
    # the handle names another nodeid than the header says
    a = emu.mknod("/a", stat.S_IFREG | 0o644)
    b = emu.mknod("/b", stat.S_IFREG | 0o644)
    arg = _R["revalidate_fh_in"].record(generation=emu.generations[a], nlookup=1, flags=0,
                                        padding=0)
    element = struct.pack("<H", len(emu.inode_handles[a])) + emu.inode_handles[a]
    assert emu.request(DRAFT_FUSE_REVALIDATE_FH, b, arg=arg, data=element)[0] == errno.ESTALE
    assert emu.request(DRAFT_FUSE_REVALIDATE_FH, a, arg=arg._replace(generation=7),
                       data=element)[0] == errno.ESTALE
    assert emu.request(DRAFT_FUSE_REVALIDATE_FH, a, arg=arg._replace(flags=1),
                       data=element)[0] == errno.EINVAL
    assert emu.request(DRAFT_FUSE_REVALIDATE_FH, a, arg=arg, data=element)[0] == 0


# -- restart ----------------------------------------------------------------------------------


def successor(emu: KernelEmulator, fs: Operations) -> Dispatcher:
    """A new server for the same connection: the session restored (as from the keeper's
    journal), ``fs`` as its filesystem, and no node table at all."""
    d = Dispatcher(fs, Connection.restore(emu.conn.export_state(), emu.conn.config))
    assert d.nodes.counts == {}
    return d


@pytest.mark.parametrize("method", ["revalidate_fh", "lookup_handle"])
@pytest.mark.parametrize("profile", PROFILES)
def test_restart_memfs(profile: str, method: str) -> None:
    fs = MemFS()
    emu = make_emu(profile, fs)
    d = emu.mkdir("/d")
    sub = emu.mkdir("/d/sub")
    h = emu.open("/d/keep", os.O_RDWR | os.O_CREAT)
    assert emu.write(h, b"keep data") == 9
    emu.close(emu.create("/d/gone"))
    gone = emu.lookup("/d/gone")
    keep = emu.lookup("/d/keep")
    assert emu.chdir("/d/sub") == sub
    emu.close(emu.create("rel"))                    # relative to the cwd
    rel = emu.lookup("/d/sub/rel")
    before = dict(emu.nlookup)
    # a request the old server read and never answered
    pending = emu.submit(Opcode.GETATTR, keep, arg=_R["getattr_in"].zero())

    # The server dies.  Its successor gets the same data (MemFS state, as the
    # keeper's journal gives it) and meanwhile "gone" was deleted for good.
    fs2 = MemFS()
    fs2.load_state(fs.dump_state())
    fs2.unlink(d, b"gone", ctx())
    fs2.forget([(gone, 1 << 30)])
    assert fs2.handle_of(gone) is None
    d2 = successor(emu, fs2)
    report = emu.restart(d2, revalidate=method)

    assert report.revalidated == {n: (errno.ESTALE if n == gone else 0) for n in before}
    assert report.bad == [gone] and gone in emu.bad
    assert report.resent == [pending] and pending.unique >> 63 == 1
    err, attr_out = emu.complete(report.resent[0])
    assert err == 0 and attr_out.attr.ino == keep and attr_out.attr.size == 9

    # survivors keep working under their old inodes, through the old fh and the cwd
    assert emu.read(h, 100) == b"keep data"
    assert emu.write(h, b"KEEP", 0) == 4
    assert emu.stat("rel").ino == rel
    emu.close(emu.create("rel2"))
    assert emu.readdir(".") == [b"rel", b"rel2"]
    emu.inc_epoch()                                  # names looked up again: same nodeids
    assert (emu.lookup("/d"), emu.lookup("/d/sub"), emu.lookup("/d/keep")) == (d, sub, keep)
    assert emu.stat("/d/keep").size == 9
    # the deleted object is bad: its name is gone, its inode was given back
    expect_errno(errno.ENOENT, emu.stat, "/d/gone")
    assert gone not in emu.nlookup
    assert sorted(emu.readdir("/d")) == [b"keep", b"sub"]

    if method == "revalidate_fh":
        # REVALIDATE_FH let the successor adopt the kernel's counts: forgets balance
        emu.close(h)
        emu.cwd = None
        emu.evict_all()
        assert emu.nlookup == {} and d2.nodes.counts == {}
        assert fs2.handle_of(keep) is not None       # still linked, just unreferenced
        emu.unlink("/d/keep")
        assert fs2.handle_of(keep) is None            # freed once unlinked and forgotten


@pytest.mark.parametrize("profile", PROFILES)
def test_restart_into_another_process(profile: str) -> None:
    fs = MemFS()
    emu = make_emu(profile, fs)
    d = emu.mkdir("/d")
    h = emu.open("/d/keep", os.O_RDWR | os.O_CREAT)
    emu.write(h, b"survives")
    emu.close(emu.create("/d/gone"))
    gone, keep = emu.lookup("/d/gone"), emu.lookup("/d/keep")
    emu.chdir("/d")
    fs2 = clone(fs)
    fs2.unlink(d, b"gone", ctx())
    fs2.forget([(gone, 1 << 30)])
    factory = functools.partial(from_state, MemFS, fs2.dump_state())
    with ProcessServer(factory, emu.conn.export_state(), emu.conn.config) as server:
        assert server.proc.pid != os.getpid()
        report = emu.restart(server)
        assert report.bad == [gone] and report.revalidated[keep] == 0
        assert emu.read(h, 100) == b"survives"
        assert emu.stat("keep").ino == keep
        expect_errno(errno.ENOENT, emu.stat, "gone")
        emu.close(emu.create("new"))
        assert sorted(emu.readdir(".")) == [b"keep", b"new"]
    assert server.proc.returncode == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_restart_with_a_deleted_cwd(profile: str) -> None:
    fs = MemFS()
    emu = make_emu(profile, fs)
    d = emu.mkdir("/d")
    emu.mkdir("/d/cwd")
    emu.chdir("/d/cwd")
    cwd = emu.lookup("/d/cwd")
    fs2 = MemFS()
    fs2.load_state(fs.dump_state())
    fs2.rmdir(d, b"cwd", ctx())
    fs2.forget([(cwd, 1 << 30)])
    report = emu.restart(successor(emu, fs2))
    assert report.bad == [cwd]
    expect_errno(errno.EIO, emu.stat, "anything")    # lookups in a bad directory
    expect_errno(errno.EIO, emu.open, "new", os.O_CREAT | os.O_WRONLY)
    assert emu.readdir("/d") == []
    emu.chdir("/d")
    emu.close(emu.create("again"))
    assert emu.readdir(".") == [b"again"]


class ReuseFS(Operations):
    """A flat filesystem that reuses the lowest free inode number, like ext4, and
    bumps a generation counter for every new object.  Its handle is the bare inode
    number, so only the generation tells a reused number from the old object."""

    def __init__(self) -> None:
        self.next_gen = 1
        self.objects: dict[int, dict[str, Any]] = {}
        self.names: dict[bytes, int] = {}
        self.files: dict[int, int] = {}
        self.next_fh = 1

    def _attr(self, ino: int) -> EntryAttributes:
        if ino == ROOT:
            return EntryAttributes(ROOT, 0, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        o = self.objects.get(ino)
        if o is None:
            raise FUSEError(errno.ESTALE)
        return EntryAttributes(ino, o["gen"], st_mode=stat.S_IFREG | 0o644,
                               st_size=len(o["data"]))

    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        ino = self.names.get(name)
        if parent_inode != ROOT or ino is None:
            raise FUSEError(errno.ENOENT)
        self.objects[ino]["nlookup"] += 1
        return self._attr(ino)

    def lookup_inode(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        attr = self._attr(inode)
        self.objects[inode]["nlookup"] += 1
        return attr

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            o = self.objects.get(ino)
            if o is not None:
                o["nlookup"] = max(0, o["nlookup"] - n)
                self._maybe_free(ino)

    def _maybe_free(self, ino: int) -> None:
        o = self.objects[ino]
        if not o["linked"] and not o["nlookup"] and ino not in self.files.values():
            del self.objects[ino]

    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self._attr(inode)

    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        if name in self.names:
            raise FUSEError(errno.EEXIST)
        ino = 2
        while ino in self.objects:
            ino += 1
        self.objects[ino] = {"gen": self.next_gen, "data": b"", "nlookup": 1, "linked": True}
        self.next_gen += 1
        self.names[name] = ino
        fh = self.next_fh
        self.next_fh += 1
        self.files[fh] = ino
        return FileInfo(fh), self._attr(ino)

    def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        ino = self.names.pop(name)
        self.objects[ino]["linked"] = False
        self._maybe_free(ino)

    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        self._attr(inode)
        fh = self.next_fh
        self.next_fh += 1
        self.files[fh] = inode
        return FileInfo(fh)

    def write(self, fh: int, off: int, buf: memoryview) -> int:
        o = self.objects[self.files[fh]]
        o["data"] = o["data"][:off] + bytes(buf)
        return len(buf)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self.objects[self.files[fh]]["data"][off:off + size])

    def release(self, fh: int) -> None:
        ino = self.files.pop(fh)
        if ino in self.objects:
            self._maybe_free(ino)

    def handle_of(self, inode: int) -> bytes | None:
        return struct.pack("<Q", inode) if inode in self.objects else None

    def inode_for_handle(self, handle: bytes) -> int:
        (ino,) = struct.unpack("<Q", handle)
        if ino not in self.objects:
            raise FUSEError(errno.ESTALE)
        return int(ino)

    def fsck_remove(self, name: bytes) -> None:
        """Offline repair: the object and its open files are gone."""
        ino = self.names.pop(name)
        del self.objects[ino]
        self.files = {fh: i for fh, i in self.files.items() if i != ino}


@pytest.mark.parametrize("method", ["revalidate_fh", "lookup_handle"])
@pytest.mark.parametrize("profile", PROFILES)
def test_restart_detects_a_reused_inode_number(profile: str, method: str) -> None:
    fs = ReuseFS()
    emu = make_emu(profile, fs)
    h = emu.open("/a", os.O_RDWR | os.O_CREAT)
    emu.write(h, b"old object")
    a = emu.lookup("/a")
    assert a == 2 and emu.generations[a] == 1

    # Offline, the object is removed and its inode number reused for another one.
    fs2 = copy.deepcopy(fs)
    fs2.fsck_remove(b"a")
    fi, attr = fs2.create(ROOT, b"b", 0o644, os.O_RDWR, ctx())
    fs2.release(fi.fh)
    fs2.forget([(attr.st_ino, 1)])
    assert (attr.st_ino, attr.generation) == (a, 2)
    d2 = successor(emu, fs2)
    report = emu.restart(d2, revalidate=method)

    assert report.revalidated == {a: errno.ESTALE} and a in emu.bad
    if method == "lookup_handle":
        # the server resolved the bare number; the kernel saw the new generation
        assert emu.stale_detected == [(a, 1, 2)]
    expect_errno(errno.EIO, emu.read, h, 10)          # the open file is dead
    emu.close(h)                                      # and closes without a request
    expect_errno(errno.ENOENT, emu.stat, "/a")
    st = emu.stat("/b")                               # the new object, same number
    assert st.ino == a and emu.generations[a] == 2 and a not in emu.bad
    h2 = emu.open("/b", os.O_RDWR)
    assert emu.read(h2, 10) == b""


# -- the secret survives a restart, in the state the keeper holds ---------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_secret_travels_in_the_journal(profile: str) -> None:
    fs = MemFS()
    emu = KernelEmulator(fs, lookup_handle=profile)       # default: a random per-mount secret
    session = emu.conn.session
    assert session is not None and len(bytes.fromhex(session.handle_secret)) == 32
    assert "handle_secret" not in repr(session) and session.handle_secret not in repr(session)
    f = emu.mknod("/f", stat.S_IFREG | 0o644)
    handle = emu.inode_handles[f]

    # what the keeper's memfd holds after a compaction, read back by a successor
    blob = jn.encode_snapshot(session.to_dict(), {"fs": "memfs"}, fs.dump_state(),
                              dict(emu.dispatcher.nodes.counts), {})
    state = jn.load(blob)
    assert state.session is not None
    fs2 = MemFS()
    assert state.fs_snapshot is not None
    fs2.load_state(bytes(state.fs_snapshot))
    d2 = Dispatcher(fs2, Connection.restore({"session": state.session}))
    assert d2.handles is not None and d2.handles.resolve(handle) == f
    assert emu.restart(d2).bad == []

    # another mount of the same data has its own secret: the handle is foreign there
    other = KernelEmulator(clone(fs2), lookup_handle=profile)
    assert other.conn.session is not None
    assert other.conn.session.handle_secret != session.handle_secret
    assert other.dispatcher.handles is not None
    with pytest.raises(FUSEError) as ei:
        other.dispatcher.handles.resolve(handle)
    assert ei.value.errno == errno.ESTALE
    assert Session.from_dict(session.to_dict()) == session
