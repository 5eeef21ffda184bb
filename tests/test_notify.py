"""Notifications (server -> kernel) on a live session, checked on real mounts.

Each test mounts a MemFS subclass served by :func:`serve_in_thread` in this
process, so it can send ``Server.notify_*`` at a chosen moment and see every
request the kernel sends (``Dispatcher.observer`` records them).  Clients are
plain syscalls from the test thread (they release the GIL while the kernel
waits for the server thread) or from a helper thread where a call must block.

Entries and attributes are cached for an hour, so anything the kernel shows
after a change made behind its back (through the Operations methods, the way
a server learns of remote changes) is stale until a notification says
otherwise.  Nothing here depends on timing: every wait is for an event that
must happen, with a generous timeout that only bounds a failure.

Teardown: the server is stopped and the mount lazily unmounted even when a
test fails; a watchdog aborts the connection through fusectl if a test hangs
in a syscall on the mount.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import conftest
import pytest

from fusewire.examples.memfs import MemFS
from fusewire.opcodes.flags import FUSE_UNIQUE_RESEND, POLL, InitFlag, Opcode
from fusewire.server import mount as fm
from fusewire.server.loop import Server, serve_in_thread
from fusewire.types import RequestContext, SetattrFields

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not conftest.IS_ROOT, reason="mounts with mount(2) directly: needs root"),
]

ROOT = 1
HOUR = 3600.0
WAIT = 30.0
CTX = RequestContext(uid=0, gid=0, pid=os.getpid())
_UNIQUE = struct.Struct("<Q")


@dataclass(frozen=True)
class Seen:
    """One request as the dispatcher received it."""

    opcode: int
    unique: int
    nodeid: int
    names: tuple[bytes, ...]
    arg: Any
    data: Any


class NotifyFS(MemFS):
    """MemFS with an hour of entry/attr caching, a poll handler and a LOOKUP hold.

    ``poll`` answers POLLIN once ``readable`` is set and records each poll
    handle the kernel asks to be notified on.  Once ``hold`` is set, the next
    LOOKUP of ``hold_name`` that was not re-sent blocks until ``unblock`` is
    set (``entered`` tells the test it is blocked); a re-sent one (bit 63) is
    answered at once.
    """

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("entry_timeout", HOUR)
        kw.setdefault("attr_timeout", HOUR)
        super().__init__(**kw)
        self.readable = threading.Event()
        self.poll_handles: list[tuple[int, int]] = []      # (kh, flags)
        self.hold_name = b"held"
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.unblock = threading.Event()
        self.lookups_of_held: list[tuple[int, bool]] = []   # (unique, resent)

    def poll(self, fh: int, kh: int, events: int, flags: int, ctx: RequestContext) -> int:
        self._handle(fh)
        self.poll_handles.append((kh, flags))
        return select.POLLIN if self.readable.is_set() and events & select.POLLIN else 0

    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> Any:
        if name == self.hold_name:
            self.lookups_of_held.append((ctx.unique, ctx.resent))
            if not ctx.resent and self.hold.is_set():
                self.hold.clear()
                self.entered.set()
                self.unblock.wait(WAIT * 2)
        return super().lookup(parent_inode, name, ctx)


@dataclass
class Live:
    """A mounted, serving NotifyFS and the requests it received."""

    fs: NotifyFS
    server: Server
    mnt: Path
    seen: list[Seen] = field(default_factory=list)
    replied: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, req: Any) -> None:
        with self.cond:
            self.seen.append(Seen(req.opcode, req.unique, req.nodeid, req.names, req.arg,
                                  req.data))
            self.cond.notify_all()

    def after_reply(self, msg: memoryview) -> None:
        """Server.on_reply: the loop is done with this request (reply written or refused)."""
        with self.cond:
            self.replied.append(_UNIQUE.unpack_from(msg, 8)[0])
            self.cond.notify_all()

    def count(self, opcode: int, nodeid: int | None = None, name: bytes | None = None) -> int:
        with self.cond:
            return sum(1 for s in self.seen if s.opcode == opcode
                       and (nodeid is None or s.nodeid == nodeid)
                       and (name is None or s.names[:1] == (name,)))

    def forgotten(self, nodeid: int) -> int:
        """nlookup the kernel gave back for ``nodeid`` (FORGET and BATCH_FORGET)."""
        total = 0
        with self.cond:
            for s in self.seen:
                if s.opcode == Opcode.FORGET and s.nodeid == nodeid:
                    total += s.arg.nlookup
                elif s.opcode == Opcode.BATCH_FORGET:
                    total += sum(n for i, n in s.data if i == nodeid)
        return total

    def wait_for(self, pred: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait until ``pred()`` holds, re-checking on each request and every 50 ms
        (state such as the node table also changes without a new request)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
            return True

    def path(self, name: str) -> str:
        return str(self.mnt / name)

    def ino(self, name: str) -> int:
        return os.stat(self.path(name)).st_ino

    def lookups(self, ino: int) -> int:
        """The lookup count the dispatcher's node table holds for ``ino``."""
        return self.server.dispatcher.nodes.counts.get(ino, 0)


@pytest.fixture
def live_factory(tmp_path: Path) -> Iterator[Callable[..., Live]]:
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    started: list[tuple[Live, threading.Thread, threading.Timer]] = []

    def start(*, workers: int = 0, **kw: Any) -> Live:
        mnt = tmp_path / f"mnt{len(started)}"
        mnt.mkdir()
        fs = NotifyFS(**kw)
        server = Server(fs, str(mnt), workers=workers)
        live = Live(fs, server, mnt)
        server.dispatcher.observer = live.record
        server.on_reply = live.after_reply
        thread = serve_in_thread(server)

        def abort() -> None:
            try:
                fm.abort_connection(str(mnt))
            except OSError:
                pass

        dog = threading.Timer(conftest.WATCHDOG, abort)
        dog.daemon = True
        dog.start()
        started.append((live, thread, dog))
        return live

    yield start
    for live, thread, dog in reversed(started):
        dog.cancel()
        live.fs.unblock.set()
        live.fs.readable.set()
        live.server.stop()
        thread.join(10)
        live.server.close()


@pytest.fixture
def live(live_factory: Callable[..., Live]) -> Live:
    return live_factory()


def write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, 1 << 16, 0)
    finally:
        os.close(fd)


def replace_behind(fs: MemFS, ino: int, data: bytes) -> None:
    """Change a file's content and size through the filesystem, not the mount."""
    fh = fs.open(ino, os.O_WRONLY | os.O_TRUNC, CTX).fh
    try:
        assert fs.write(fh, 0, memoryview(data)) == len(data)
    finally:
        fs.release(fh)


# --------------------------------------------------------------------------
# INVAL_INODE


def test_inval_inode_drops_attrs_and_pages(live: Live) -> None:
    p = live.path("f")
    write(p, b"old content")
    assert read(p) == b"old content"              # now in the page cache
    ino = live.ino("f")
    replace_behind(live.fs, ino, b"NEW CONTENT, longer")
    getattrs, reads = live.count(Opcode.GETATTR, ino), live.count(Opcode.READ)
    # stale: attributes and pages come from the kernel's caches
    assert os.stat(p).st_size == len(b"old content")
    assert read(p) == b"old content"
    assert live.count(Opcode.GETATTR, ino) == getattrs and live.count(Opcode.READ) == reads

    assert live.server.notify_inval_inode(ino, 0, 0) == 0
    assert os.stat(p).st_size == len(b"NEW CONTENT, longer")
    assert read(p) == b"NEW CONTENT, longer"
    assert live.count(Opcode.GETATTR, ino) > getattrs
    assert live.count(Opcode.READ) > reads


def test_inval_inode_attrs_only_keeps_pages(live: Live) -> None:
    """``off < 0``: attributes are refetched, cached pages stay.

    The change keeps size and mtime, so AUTO_INVAL_DATA has no reason to drop
    the pages when the new attributes arrive.
    """
    p = live.path("g")
    write(p, b"aaaa")
    assert read(p) == b"aaaa"
    ino = live.ino("g")
    mtime = os.stat(p).st_mtime_ns
    replace_behind(live.fs, ino, b"bbbb")
    attr = live.fs.getattr(ino, CTX)
    attr.st_mtime_ns = mtime
    attr.st_mode = 0o600
    live.fs.setattr(ino, attr, SetattrFields(update_mtime=True, update_mode=True), None, CTX)
    getattrs, reads = live.count(Opcode.GETATTR, ino), live.count(Opcode.READ)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644          # stale
    assert live.server.notify_inval_inode(ino, -1, 0) == 0
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == mtime
    assert live.count(Opcode.GETATTR, ino) == getattrs + 1
    assert read(p) == b"aaaa"                     # the page cache was left alone
    assert live.count(Opcode.READ) == reads


def test_inval_inode_unknown_inode(live: Live) -> None:
    assert live.server.notify_inval_inode(987654, 0, 0) == errno.ENOENT


# --------------------------------------------------------------------------
# INVAL_ENTRY


def test_inval_entry_forces_a_new_lookup(live: Live) -> None:
    write(live.path("a"), b"A")
    write(live.path("b"), b"B")
    ino_a, ino_b = live.ino("a"), live.ino("b")
    live.fs.rename(ROOT, b"b", ROOT, b"a", 0, CTX)    # behind the kernel's back
    lookups = live.count(Opcode.LOOKUP, ROOT, b"a")
    assert live.ino("a") == ino_a                     # stale dentry, no LOOKUP
    assert live.count(Opcode.LOOKUP, ROOT, b"a") == lookups

    assert live.server.notify_inval_entry(ROOT, b"a") == 0
    assert live.ino("a") == ino_b
    assert live.count(Opcode.LOOKUP, ROOT, b"a") == lookups + 1
    # the dropped dentry was the old inode's only alias: unused, it is evicted and forgotten
    assert live.wait_for(lambda: live.forgotten(ino_a) >= 1)


def test_inval_entry_expire_only(live: Live) -> None:
    assert live.server.session_flags & InitFlag.HAS_EXPIRE_ONLY
    write(live.path("e"), b"E")
    ino = live.ino("e")
    lookups = live.count(Opcode.LOOKUP, ROOT, b"e")
    assert live.ino("e") == ino and live.count(Opcode.LOOKUP, ROOT, b"e") == lookups
    assert live.server.notify_inval_entry(ROOT, b"e", expire_only=True) == 0
    assert live.ino("e") == ino
    assert live.count(Opcode.LOOKUP, ROOT, b"e") == lookups + 1


def test_inval_entry_errors(live: Live) -> None:
    assert live.server.notify_inval_entry(987654, b"x") == errno.ENOENT
    # a name the kernel has not cached is ENOENT too (nothing to invalidate)
    assert live.server.notify_inval_entry(ROOT, b"never-looked-up") == errno.ENOENT


# --------------------------------------------------------------------------
# DELETE


IN_DELETE = 0x200
_INOTIFY_EVENT = struct.Struct("iIII")


def _inotify_watch(path: str) -> tuple[int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    wd = libc.inotify_add_watch(fd, path.encode(), IN_DELETE)
    if wd < 0:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "inotify_add_watch")
    return fd, wd


def _inotify_events(fd: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(WAIT * 1000)):
        return out
    buf = os.read(fd, 4096)
    pos = 0
    while pos < len(buf):
        _wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(buf, pos)
        name = buf[pos + 16:pos + 16 + length].rstrip(b"\0")
        out.append((mask, name))
        pos += 16 + length
    return out


def test_delete_removes_the_dentry(live: Live) -> None:
    p = live.path("gone")
    write(p, b"bye")
    ino = live.ino("gone")
    write(live.path("other"), b"o")
    other = live.ino("other")
    live.fs.unlink(ROOT, b"gone", CTX)            # behind the kernel's back
    assert os.stat(p).st_ino == ino               # still cached
    ifd, _wd = _inotify_watch(str(live.mnt))
    try:
        # a child id that does not match the cached dentry: ENOENT
        assert live.server.notify_delete(ROOT, other + 1000, b"other") == errno.ENOENT
        assert live.server.notify_delete(ROOT, ino, b"gone") == 0
        # Linux 6.18 unhashes the dentry with d_delete() but generates no
        # fsnotify event for it: the first IN_DELETE the watch sees is the
        # unlink made through the mount afterwards (events are queued in order)
        os.unlink(live.path("other"))
        assert _inotify_events(ifd) == [(IN_DELETE, b"other")]
    finally:
        os.close(ifd)
    lookups = live.count(Opcode.LOOKUP, ROOT, b"gone")
    with pytest.raises(FileNotFoundError):
        os.stat(p)
    assert live.count(Opcode.LOOKUP, ROOT, b"gone") == lookups + 1
    # the kernel dropped its reference to the deleted inode
    assert live.wait_for(lambda: live.forgotten(ino) >= 1)


# --------------------------------------------------------------------------
# STORE and RETRIEVE


def test_store_fills_the_page_cache(live: Live) -> None:
    p = live.path("s")
    write(p, b"x" * 8192)
    ino = live.ino("s")
    fd = os.open(p, os.O_RDONLY)
    try:
        reads = live.count(Opcode.READ)
        assert live.server.notify_store(ino, 0, b"S" * 8192) == 0
        assert os.pread(fd, 8192, 0) == b"S" * 8192   # the server's data says "x"
        assert live.count(Opcode.READ) == reads
    finally:
        os.close(fd)


def test_store_past_eof_grows_the_file(live: Live) -> None:
    p = live.path("grow")
    write(p, b"")
    ino = live.ino("grow")
    assert os.stat(p).st_size == 0
    assert live.server.notify_store(ino, 0, b"G" * 4096) == 0
    # i_size grew; the attributes were invalidated, so the next stat asks the
    # server, which (rightly) still says 0
    getattrs = live.count(Opcode.GETATTR, ino)
    os.stat(p)
    assert live.count(Opcode.GETATTR, ino) == getattrs + 1


def test_store_errors(live: Live) -> None:
    os.mkdir(live.path("d"))
    assert live.server.notify_store(live.ino("d"), 0, b"x") == errno.EINVAL
    assert live.server.notify_store(987654, 0, b"x") == errno.ENOENT


def test_retrieve_returns_the_cached_pages(live: Live) -> None:
    p = live.path("r")
    write(p, b"r" * 10000)
    ino = live.ino("r")
    assert read(p)[:5] == b"rrrrr"                    # cache pages 0..2
    # the kernel's copy differs from the server's once STORE overwrote page 0
    assert live.server.notify_store(ino, 0, b"K" * 4096) == 0
    got = live.server.notify_retrieve(ino, 0, 10000, timeout=WAIT)
    assert got == b"K" * 4096 + b"r" * (10000 - 4096)
    assert live.count(Opcode.NOTIFY_REPLY, ino) == 1
    # from an offset, capped at EOF
    assert live.server.notify_retrieve(ino, 8192, 1 << 20, timeout=WAIT) == b"r" * 1808


def test_retrieve_without_cached_pages(live: Live) -> None:
    p = live.path("cold")
    write(p, b"c" * 5000)
    ino = live.ino("cold")
    assert live.server.notify_inval_inode(ino, 0, 0) == 0   # drop whatever write left
    assert live.server.notify_retrieve(ino, 0, 5000, timeout=WAIT) == b""
    with pytest.raises(OSError) as info:
        live.server.notify_retrieve(987654, 0, 10, timeout=WAIT)
    assert info.value.errno == errno.ENOENT


# --------------------------------------------------------------------------
# POLL


@pytest.mark.parametrize("how", ["poll", "select"])
def test_poll_wakeup(live: Live, how: str) -> None:
    p = live.path("pollme")
    write(p, b"")
    fd = os.open(p, os.O_RDONLY)
    result: list[Any] = []

    def client() -> None:
        if how == "poll":
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            result.append(poller.poll(int(WAIT * 1000)))
        else:
            result.append(select.select([fd], [], [], WAIT)[0])

    t = threading.Thread(target=client)
    try:
        t.start()
        # the client is asleep once the kernel asked to be notified on its handle
        assert live.wait_for(lambda: any(f & POLL.SCHEDULE_NOTIFY
                                         for _, f in live.fs.poll_handles))
        kh = next(k for k, f in live.fs.poll_handles if f & POLL.SCHEDULE_NOTIFY)
        asked = live.count(Opcode.POLL)
        assert not result
        live.fs.readable.set()
        assert live.server.notify_poll(kh) == 0
        t.join(WAIT)
        assert not t.is_alive()
    finally:
        live.fs.readable.set()
        t.join(WAIT)
        os.close(fd)
    if how == "poll":
        assert result == [[(fd, select.POLLIN)]]
    else:
        assert result == [[fd]]
    assert live.count(Opcode.POLL) > asked          # woken, it polled the server again
    # an unknown poll handle is not an error
    assert live.server.notify_poll(kh + 1000) == 0


# --------------------------------------------------------------------------
# PRUNE (7.45) and INC_EPOCH (7.44)


def test_prune_forgets_unused_inodes(live: Live) -> None:
    write(live.path("p1"), b"1")
    write(live.path("p2"), b"2")
    write(live.path("busy"), b"3")
    p1, p2, busy = live.ino("p1"), live.ino("p2"), live.ino("busy")
    assert live.lookups(p1) >= 1
    fd = os.open(live.path("busy"), os.O_RDONLY)
    try:
        # in use: skipped
        assert live.server.notify_prune([busy]) == 0
        assert live.server.notify_prune([p1, 987654]) == 0      # unknown ids are fine
        assert live.wait_for(lambda: live.forgotten(p1) >= 1)
        # forgets are queued in order: p2's FORGET after the first two prunes means
        # the busy inode's would already have been delivered had there been one
        assert live.server.notify_prune([p2]) == 0
        assert live.wait_for(lambda: live.forgotten(p2) >= 1)
        assert live.forgotten(busy) == 0
        assert live.lookups(busy) >= 1
    finally:
        os.close(fd)
    assert live.lookups(p1) == 0 and p1 not in live.server.dispatcher.nodes.counts
    lookups = live.count(Opcode.LOOKUP, ROOT, b"p1")
    assert live.ino("p1") == p1                      # looked up afresh
    assert live.count(Opcode.LOOKUP, ROOT, b"p1") == lookups + 1


def test_inc_epoch_revalidates_cached_dentries(live_factory: Callable[..., Live]) -> None:
    live = live_factory(negative_timeout=HOUR)
    write(live.path("x"), b"x")
    ino = live.ino("x")
    with pytest.raises(FileNotFoundError):
        os.stat(live.path("ghost"))                  # a cached negative dentry
    before_x = live.count(Opcode.LOOKUP, ROOT, b"x")
    before_g = live.count(Opcode.LOOKUP, ROOT, b"ghost")
    assert live.ino("x") == ino
    with pytest.raises(FileNotFoundError):
        os.stat(live.path("ghost"))
    assert live.count(Opcode.LOOKUP, ROOT, b"x") == before_x
    assert live.count(Opcode.LOOKUP, ROOT, b"ghost") == before_g
    # created behind the kernel's back: invisible through the negative dentry
    made = live.fs.mknod(ROOT, b"ghost", stat.S_IFREG | 0o644, 0, CTX)
    live.fs.forget([(made.st_ino, 1)])               # mknod counted a lookup nobody holds
    with pytest.raises(FileNotFoundError):
        os.stat(live.path("ghost"))

    assert live.server.notify_inc_epoch() == 0
    assert live.ino("x") == ino
    assert os.stat(live.path("ghost")).st_size == 0
    assert live.count(Opcode.LOOKUP, ROOT, b"x") == before_x + 1
    assert live.count(Opcode.LOOKUP, ROOT, b"ghost") == before_g + 1
    # revalidated once: cached again afterwards
    live.ino("x")
    assert live.count(Opcode.LOOKUP, ROOT, b"x") == before_x + 1


# --------------------------------------------------------------------------
# RESEND (7.40)


def test_resend_redelivers_an_unanswered_request(live_factory: Callable[..., Live]) -> None:
    """A LOOKUP held unanswered by one worker comes back with bit 63 after
    RESEND, is answered by the other worker, and the caller gets exactly one
    answer: the late reply of the first worker is refused by the kernel (ENOENT)
    and the lookup it carried is rolled back."""
    live = live_factory(workers=1)
    write(live.path("held"), b"h")
    ino = live.ino("held")
    assert live.server.notify_inval_entry(ROOT, b"held") == 0
    assert live.wait_for(lambda: live.forgotten(ino) >= 1)
    assert live.lookups(ino) == 0
    result: list[Any] = []

    def client() -> None:
        try:
            result.append(os.stat(live.path("held")).st_ino)
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=client)
    live.fs.hold.set()
    t.start()
    try:
        assert live.fs.entered.wait(WAIT)
        first = [s for s in live.seen if s.opcode == Opcode.LOOKUP and s.names == (b"held",)]
        unique = first[-1].unique
        assert not unique & FUSE_UNIQUE_RESEND
        assert live.server.notify_resend() == 0
        t.join(WAIT)
        assert not t.is_alive()
    finally:
        live.fs.unblock.set()
        t.join(WAIT)
    assert result == [ino]
    again = [s for s in live.seen if s.opcode == Opcode.LOOKUP and s.names == (b"held",)
             and s.unique & FUSE_UNIQUE_RESEND]
    assert [s.unique for s in again] == [unique | FUSE_UNIQUE_RESEND]
    assert again[0].nodeid == first[-1].nodeid == ROOT
    # the held handler ran to completion too, but the kernel refused its reply
    # (ENOENT: nobody waits for that unique any more) and the lookup it
    # carried was rolled back: the kernel and the node table agree on 1
    # (the caller wakes when the re-sent copy's reply is written, which can be
    # before the serving thread's on_reply records it: wait for both records)
    assert live.wait_for(lambda: unique in live.replied
                         and unique | FUSE_UNIQUE_RESEND in live.replied)
    assert live.replied.count(unique | FUSE_UNIQUE_RESEND) == 1
    assert live.lookups(ino) == 1
    assert live.fs.lookups_of_held[-2:] == [(unique, False), (unique | FUSE_UNIQUE_RESEND, True)]
    assert os.stat(live.path("held")).st_ino == ino   # cached from the one answer


def test_resend_with_nothing_outstanding(live: Live) -> None:
    write(live.path("n"), b"n")
    lookups = len(live.seen)
    assert live.server.notify_resend() == 0
    assert live.ino("n") == os.stat(live.path("n")).st_ino
    assert not any(s.unique & FUSE_UNIQUE_RESEND for s in live.seen[lookups:])
