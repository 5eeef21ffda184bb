"""The emulated kernel driving MemFS through the real Connection + Dispatcher."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from fusewire.examples.memfs import MemFS
from fusewire.opcodes.flags import FUSE_UNIQUE_RESEND, NotifyCode, Opcode
from fusewire.structs.codec import CODECS
from fusewire.testing.emulator import KernelEmulator, Pending
from fusewire.wire import KernelRuleError, ReplySizeError


@pytest.fixture(params=[45, 19])
def emu(request: pytest.FixtureRequest) -> KernelEmulator:
    return KernelEmulator(MemFS(), minor=request.param)


def test_init_and_uniques(emu: KernelEmulator) -> None:
    assert emu.history[0] == (Opcode.INIT, 2, 0)
    emu.stat("/")
    uniques = [u for _, u, _ in emu.history]
    assert uniques == list(range(2, 2 * len(uniques) + 1, 2))


def test_syscalls(emu: KernelEmulator) -> None:
    emu.mkdir("/d")
    h = emu.create("/d/f", 0o640)
    assert emu.write(h, b"hello world", 0) == 11
    emu.close(h)
    h = emu.open("/d/f", os.O_RDWR)
    assert emu.read(h, 5, 6) == b"world"
    emu.fsync(h)
    emu.close(h)
    assert emu.readdir("/d") == [b"f"]
    assert sorted(emu.readdir("/d", with_dots=True)) == [b".", b"..", b"f"]
    st = emu.stat("/d/f")
    assert st.size == 11 and st.mode & 0o777 == 0o640 & ~0o022
    emu.symlink("f", "/d/l")
    assert emu.readlink("/d/l") == b"f"
    emu.link("/d/f", "/d/g")
    assert emu.stat("/d/g").nlink == 2
    emu.rename("/d/g", "/d/h")
    assert sorted(emu.readdir("/d")) == [b"f", b"h", b"l"]
    emu.unlink("/d/h")
    assert emu.truncate("/d/f", 3).size == 3
    assert emu.chmod("/d/f", 0o600).mode & 0o7777 == 0o600
    emu.setxattr("/d/f", b"user.k", b"value")
    assert emu.getxattr("/d/f", b"user.k") == b"value"
    assert emu.listxattr("/d/f") == [b"user.k"]
    with pytest.raises(OSError) as ei:
        emu.getxattr("/d/f", b"user.k", size=2)
    assert ei.value.errno == errno.ERANGE
    emu.removexattr("/d/f", b"user.k")
    with pytest.raises(OSError) as ei:
        emu.getxattr("/d/f", b"user.k")
    assert ei.value.errno == errno.ENODATA
    assert emu.statfs().bsize > 0
    with pytest.raises(OSError) as ei:
        emu.rmdir("/d")
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as ei:
        emu.stat("/nope")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(OSError) as ei:
        emu.open("/d/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert ei.value.errno == errno.EEXIST


def test_rename2_needs_23() -> None:
    emu = KernelEmulator(MemFS(), minor=19)
    h = emu.create("/a")
    emu.close(h)
    with pytest.raises(OSError):
        emu.rename("/a", "/b", flags=1)
    emu45 = KernelEmulator(MemFS())
    emu45.close(emu45.create("/a"))
    emu45.close(emu45.create("/b"))
    with pytest.raises(OSError) as ei:
        emu45.rename("/a", "/b", flags=1)
    assert ei.value.errno == errno.EEXIST


def test_wrong_reply_size_is_caught() -> None:
    emu = KernelEmulator(MemFS())

    def chop(p: Pending, raw: bytes) -> bytes:
        if p.opcode == Opcode.GETATTR:
            raw = raw[:-8]
            return struct.pack("<I", len(raw)) + raw[4:]
        return raw

    emu.reply_filter = chop
    with pytest.raises(ReplySizeError):
        emu.stat("/")
    lax = KernelEmulator(MemFS(), strict=False)
    lax.reply_filter = chop
    with pytest.raises(OSError) as ei:
        lax.stat("/")
    assert ei.value.errno == errno.EIO


def test_error_with_payload_is_caught() -> None:
    emu = KernelEmulator(MemFS())
    emu.reply_filter = lambda p, raw: struct.pack("<IiQ", 24, -2, p.unique) + bytes(8)
    with pytest.raises(ReplySizeError):
        emu.stat("/")


def test_lookup_counts_and_forget(emu: KernelEmulator) -> None:
    emu.mkdir("/d")
    emu.close(emu.create("/d/f"))
    d = emu.lookup("/d")
    f = emu.lookup("/d/f")
    assert emu.nlookup == {d: 1, f: 1}
    assert emu.dispatcher.nodes.counts == emu.nlookup
    emu.readdir("/d")
    if emu.minor >= 21:
        assert emu.nlookup[f] == 2  # READDIRPLUS entry counted, "." and ".." not
    assert emu.dispatcher.nodes.counts == emu.nlookup
    emu.forget(f, 1)
    assert emu.dispatcher.nodes.counts == emu.nlookup
    emu.evict_all()
    assert emu.nlookup == {} and emu.dispatcher.nodes.counts == {}
    assert {d, f} <= emu.forgotten
    assert emu.stat("/d/f").size == 0  # re-lookup works
    assert emu.nlookup == {d: 1, f: 1}
    emu.batch_forget([(d, 1), (f, 1)])
    assert emu.dispatcher.nodes.counts == {}
    with pytest.raises(ValueError):
        emu.forget(d, 1)


def test_interrupt() -> None:
    emu = KernelEmulator(MemFS())
    p = emu.submit(Opcode.GETATTR, 1, arg=CODECS["getattr_in"].zero())
    assert emu.conn.inflight
    assert emu.send_interrupt(p.unique) is None
    assert emu.conn.is_interrupted(p.unique)
    err, attr = emu.complete(p)
    assert err == 0 and attr.attr.ino == 1
    assert not emu.conn.is_interrupted(p.unique)
    assert emu.history[-1][1] == p.unique | 1 or emu.history[-2][1] == p.unique | 1


def test_resend_bit() -> None:
    emu = KernelEmulator(MemFS())
    p = emu.submit(Opcode.GETATTR, 1, arg=CODECS["getattr_in"].zero())
    [again] = emu.resend_pending()
    assert again.unique == p.unique and p.unique & FUSE_UNIQUE_RESEND
    seen: list[int] = []

    def spy(pp: Pending, raw: bytes) -> bytes:
        seen.append(struct.unpack_from("<Q", raw, 8)[0])
        return raw

    emu.reply_filter = spy
    err, _ = emu.complete(p)
    assert err == 0 and seen == [p.unique]
    assert not emu.conn.inflight


def test_inc_epoch_forces_relookup() -> None:
    emu = KernelEmulator(MemFS())
    emu.close(emu.create("/x"))
    emu.stat("/x")
    n = len(emu.history)
    emu.stat("/x")
    assert [op for op, _, _ in emu.history[n:]] == [Opcode.GETATTR]
    assert emu.receive_notification(struct.pack("<IiQ", 16, NotifyCode.INC_EPOCH, 0)) == 0
    n = len(emu.history)
    emu.stat("/x")
    assert [op for op, _, _ in emu.history[n:]] == [Opcode.FORGET, Opcode.LOOKUP,
                                                    Opcode.GETATTR]
    assert emu.dispatcher.nodes.counts == emu.nlookup


def test_prune() -> None:
    emu = KernelEmulator(MemFS())
    emu.close(emu.create("/x"))
    x = emu.lookup("/x")
    h = emu.open("/x")
    emu.prune([x])
    assert x in emu.nlookup  # open: skipped
    emu.close(h)
    buf = struct.pack("<IiQIIQQ", 40, NotifyCode.PRUNE, 0, 1, 0, 0, x)
    assert emu.receive_notification(buf) == 0
    assert x not in emu.nlookup and x in emu.forgotten
    assert emu.dispatcher.nodes.counts == {}
    assert emu.receive_notification(struct.pack("<I", 32) + buf[4:-8]) == errno.EINVAL
    emu.stat("/x")
    assert emu.nlookup == {x: 1}


def test_no_reply_to_forget() -> None:
    emu = KernelEmulator(MemFS())
    emu.close(emu.create("/x"))
    x = emu.lookup("/x")
    emu.reply_filter = None
    real = emu.dispatcher.handle

    def chatty(req):  # type: ignore[no-untyped-def]
        bufs, lk = real(req)
        return (bufs or [struct.pack("<IiQ", 16, 0, req.unique)]), lk

    emu.dispatcher.handle = chatty  # type: ignore[method-assign]
    with pytest.raises(KernelRuleError):
        emu.forget(x)


def test_create_returning_root_is_refused() -> None:
    class Bad(MemFS):
        def mkdir(self, *a, **kw):  # type: ignore[no-untyped-def]
            attr = super().mkdir(*a, **kw)
            attr.st_ino = 1
            return attr

    emu = KernelEmulator(Bad())
    with pytest.raises(OSError) as ei:
        emu.mkdir("/d")
    assert ei.value.errno == errno.EIO


# The plugin's fixtures, imported so this works before the pytest11 entry point exists.
from fusewire.testing.plugin import fuse_emulator, fuse_mount, fuse_ops  # noqa: E402, F401


@pytest.mark.parametrize("fuse_emulator", [19, 45], indirect=True)
def test_plugin_emulator(fuse_emulator: KernelEmulator) -> None:  # noqa: F811
    fuse_emulator.mkdir("/x")
    assert fuse_emulator.readdir("/") == [b"x"]


def test_plugin_mount(fuse_mount: os.PathLike[str]) -> None:  # noqa: F811
    path = os.path.join(fuse_mount, "f")
    with open(path, "wb") as f:
        f.write(b"hi")
    with open(path, "rb") as f:
        assert f.read() == b"hi"
    assert os.listdir(fuse_mount) == ["f"]
