"""Unit tests for fusewire.examples.memfs.MemFS (methods called directly, no mount)."""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import stat
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from readdir_churn import list_with_churn

from fusewire.examples.memfs import (
    CHUNK_SIZE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    SEEK_DATA,
    SEEK_HOLE,
    XATTR_CREATE,
    XATTR_REPLACE,
    MemFS,
)
from fusewire.testing.listing import ListingToken
from fusewire.types import EntryAttributes, FUSEError, Lock, RequestContext, SetattrFields

if TYPE_CHECKING:
    pass

ROOT = 1
CTX = RequestContext(uid=0, gid=0, pid=1, umask=0o022)
USER = RequestContext(uid=1000, gid=1000, pid=2, umask=0o022)
EOF_ = 2**63 - 1


def raises(code: int) -> AbstractContextManager[pytest.ExceptionInfo[FUSEError]]:
    return pytest.raises(FUSEError, match=f"^{errno.errorcode[code]}:")


def listdir(fs: MemFS, ino: int, *, plus: bool = False, page: int = 1000) -> list[bytes]:
    fh = fs.opendir(ino, CTX)
    names: list[bytes] = []
    cookie = 0
    while True:
        tok = ListingToken(plus, page)
        fs.readdir(fh, cookie, tok)
        if not tok.entries:
            break
        names += [n for n, _, _ in tok.entries]
        cookie = tok.entries[-1][2]
    fs.releasedir(fh)
    return names


def mkfile(fs: MemFS, parent: int, name: bytes, data: bytes = b"",
           ctx: RequestContext = CTX, mode: int = 0o644) -> int:
    fi, attr = fs.create(parent, name, stat.S_IFREG | mode, os.O_RDWR, ctx)
    if data:
        fs.write(fi.fh, 0, memoryview(data))
    fs.release(fi.fh)
    return attr.st_ino


def openrw(fs: MemFS, ino: int, flags: int = os.O_RDWR) -> int:
    return fs.open(ino, flags, CTX).fh


@pytest.fixture(params=["heap", "memfd"])
def fs(request: pytest.FixtureRequest) -> MemFS:
    # a world-writable root: the tests create files there as USER, and memfs
    # checks permissions itself
    fs = MemFS(entry_timeout=1.0, attr_timeout=1.0, root_mode=0o777)
    if request.param == "memfd":
        # file data in blocks of a memfd, as on a recoverable mount
        assert len(fs.recovery_fds()) == 1
    return fs


# -- basics ------------------------------------------------------------------------


def test_root(fs: MemFS) -> None:
    a = fs.getattr(ROOT, CTX)
    assert stat.S_ISDIR(a.st_mode) and a.st_nlink == 2 and a.st_ino == ROOT
    assert a.entry_timeout == 1.0 and a.attr_timeout == 1.0
    assert listdir(fs, ROOT) == [b".", b".."]


def test_lookup_and_negative(fs: MemFS) -> None:
    with raises(errno.ENOENT):
        fs.lookup(ROOT, b"nope", CTX)
    neg = MemFS(negative_timeout=5.0)
    a = neg.lookup(ROOT, b"nope", CTX)
    assert a.st_ino == 0 and a.entry_timeout == 5.0
    with raises(errno.ENAMETOOLONG):
        fs.lookup(ROOT, b"x" * 256, CTX)
    ino = mkfile(fs, ROOT, b"f")
    assert fs.lookup(ROOT, b"f", CTX).st_ino == ino
    assert fs.lookup(ROOT, b".", CTX).st_ino == ROOT
    assert fs.lookup(ROOT, b"..", CTX).st_ino == ROOT
    with raises(errno.ENOTDIR):
        fs.lookup(ino, b"x", CTX)


def test_name_too_long(fs: MemFS) -> None:
    fs.mkdir(ROOT, b"y" * 255, 0o755, CTX)
    for call in (
        lambda: fs.mkdir(ROOT, b"x" * 256, 0o755, CTX),
        lambda: fs.mknod(ROOT, b"x" * 256, stat.S_IFREG | 0o644, 0, CTX),
        lambda: fs.create(ROOT, b"x" * 256, 0o100644, os.O_RDWR, CTX),
        lambda: fs.symlink(ROOT, b"x" * 256, b"t", CTX),
        lambda: fs.rename(ROOT, b"y" * 255, ROOT, b"x" * 256, 0, CTX),
    ):
        with raises(errno.ENAMETOOLONG):
            call()


def test_create_times_and_parent(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o777, CTX)
    before = fs.getattr(d.st_ino, CTX)
    time.sleep(0.002)
    fi, a = fs.create(d.st_ino, b"f", stat.S_IFREG | 0o640, os.O_RDWR, USER)
    assert a.st_atime_ns == a.st_mtime_ns == a.st_ctime_ns == a.st_birthtime_ns
    assert a.st_uid == 1000 and a.st_gid == 1000 and a.st_mode == stat.S_IFREG | 0o640
    after = fs.getattr(d.st_ino, CTX)
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns == after.st_mtime_ns
    assert after.st_mtime_ns == a.st_mtime_ns
    # write updates mtime/ctime but not atime
    time.sleep(0.002)
    fs.write(fi.fh, 0, memoryview(b"hello"))
    w = fs.getattr(a.st_ino, CTX)
    assert w.st_mtime_ns > a.st_mtime_ns and w.st_ctime_ns == w.st_mtime_ns
    assert w.st_atime_ns == a.st_atime_ns and w.st_size == 5
    # read updates atime (relatime: atime <= mtime)
    assert fs.read(fi.fh, 0, 100) == b"hello"
    r = fs.getattr(a.st_ino, CTX)
    assert r.st_atime_ns > w.st_mtime_ns
    fs.release(fi.fh)
    sx = fs.statx(a.st_ino, None, 0, 0xFFF, CTX)
    assert sx.st_birthtime_ns == a.st_birthtime_ns


def test_create_existing(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"data")
    with raises(errno.EEXIST):
        fs.create(ROOT, b"f", 0o100644, os.O_RDWR | os.O_CREAT | os.O_EXCL, CTX)
    fi, a = fs.create(ROOT, b"f", 0o100644, os.O_RDWR | os.O_CREAT | os.O_TRUNC, CTX)
    assert a.st_ino == ino and a.st_size == 0
    fs.release(fi.fh)
    with raises(errno.EEXIST):
        fs.mkdir(ROOT, b"f", 0o755, CTX)


def test_dir_nlink_and_size(fs: MemFS) -> None:
    a = fs.mkdir(ROOT, b"a", 0o755, CTX).st_ino
    assert fs.getattr(ROOT, CTX).st_nlink == 3
    fs.mkdir(a, b"b", 0o755, CTX)
    fs.mkdir(a, b"c", 0o755, CTX)
    mkfile(fs, a, b"f")
    assert fs.getattr(a, CTX).st_nlink == 4
    assert fs.getattr(a, CTX).st_size > 0
    fs.rmdir(a, b"b", CTX)
    assert fs.getattr(a, CTX).st_nlink == 3
    with raises(errno.ENOTEMPTY):
        fs.rmdir(ROOT, b"a", CTX)
    with raises(errno.ENOTDIR):
        fs.rmdir(a, b"f", CTX)
    with raises(errno.EISDIR):
        fs.unlink(a, b"c", CTX)
    with raises(errno.ENOENT):
        fs.rmdir(a, b"zz", CTX)


def test_removed_dir_rejects_creation(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    fh = fs.opendir(d, CTX)
    fs.rmdir(ROOT, b"d", CTX)
    assert fs.getattr(d, CTX).st_nlink == 0
    with raises(errno.ENOENT):
        fs.mknod(d, b"x", stat.S_IFREG | 0o644, 0, CTX)
    tok = ListingToken()
    fs.readdir(fh, 0, tok)
    assert tok.entries == []
    fs.releasedir(fh)
    fs.forget([(d, 1)])
    with raises(errno.ESTALE):
        fs.getattr(d, CTX)


def test_special_files(fs: MemFS) -> None:
    fifo = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, CTX)
    sock = fs.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, 0, CTX)
    dev = fs.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), CTX)
    blk = fs.mknod(ROOT, b"blk", stat.S_IFBLK | 0o660, os.makedev(8, 0), CTX)
    reg = fs.mknod(ROOT, b"reg", 0o644, 0, CTX)
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_ISSOCK(sock.st_mode)
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(blk.st_mode) and blk.st_rdev == os.makedev(8, 0)
    assert stat.S_ISREG(reg.st_mode)
    with raises(errno.EPERM):
        fs.mknod(ROOT, b"d", stat.S_IFDIR | 0o755, 0, CTX)
    with raises(errno.EINVAL):
        fs.mknod(ROOT, b"l", stat.S_IFLNK | 0o777, 0, CTX)


def test_symlink(fs: MemFS) -> None:
    a = fs.symlink(ROOT, b"l", b"/etc/passwd", CTX)
    assert stat.S_ISLNK(a.st_mode) and a.st_size == len(b"/etc/passwd")
    assert fs.readlink(a.st_ino, CTX) == b"/etc/passwd"
    f = mkfile(fs, ROOT, b"f")
    with raises(errno.EINVAL):
        fs.readlink(f, CTX)
    with raises(errno.ENAMETOOLONG):
        fs.symlink(ROOT, b"long", b"x" * 4096, CTX)


# -- links and unlinked-but-open ------------------------------------------------------


def test_hard_links(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    ino = mkfile(fs, ROOT, b"f", b"abc")
    c0 = fs.getattr(ino, CTX).st_ctime_ns
    time.sleep(0.002)
    a = fs.link(ino, d, b"g", CTX)
    assert a.st_ino == ino and a.st_nlink == 2
    assert a.st_ctime_ns > c0
    assert fs.getattr(d, CTX).st_mtime_ns == a.st_ctime_ns
    with raises(errno.EPERM):
        fs.link(d, ROOT, b"dlink", CTX)
    with raises(errno.EEXIST):
        fs.link(ino, ROOT, b"f", CTX)
    fs.unlink(ROOT, b"f", CTX)
    assert fs.getattr(ino, CTX).st_nlink == 1
    assert fs.lookup(d, b"g", CTX).st_ino == ino


def test_unlink_while_open(fs: MemFS) -> None:
    fi, a = fs.create(ROOT, b"f", 0o100644, os.O_RDWR, CTX)
    fs.write(fi.fh, 0, memoryview(b"x" * 100_000))
    fs.unlink(ROOT, b"f", CTX)
    assert fs.getattr(a.st_ino, CTX).st_nlink == 0
    with raises(errno.ENOENT):
        fs.lookup(ROOT, b"f", CTX)
    assert fs.read(fi.fh, 99_990, 100) == b"x" * 10
    fs.forget([(a.st_ino, 1)])         # kernel forgets, file still open
    assert fs.read(fi.fh, 0, 3) == b"xxx"
    used = fs.statfs(CTX).f_bfree
    fs.release(fi.fh)                  # last reference: freed
    with raises(errno.ESTALE):
        fs.getattr(a.st_ino, CTX)
    assert fs.statfs(CTX).f_bfree > used
    # release first, forget later
    fi, a = fs.create(ROOT, b"g", 0o100644, os.O_RDWR, CTX)
    fs.unlink(ROOT, b"g", CTX)
    fs.release(fi.fh)
    assert fs.getattr(a.st_ino, CTX).st_nlink == 0
    fs.forget([(a.st_ino, 1)])
    with raises(errno.ESTALE):
        fs.getattr(a.st_ino, CTX)


def test_forget_exact_counts(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")         # 1 lookup
    fs.lookup(ROOT, b"f", CTX)           # 2
    fs.lookup(ROOT, b"f", CTX)           # 3
    fs.unlink(ROOT, b"f", CTX)
    fs.forget([(ino, 2)])
    assert fs.getattr(ino, CTX).st_nlink == 0
    fs.forget([(ino, 1)])
    with raises(errno.ESTALE):
        fs.getattr(ino, CTX)
    fs.forget([(12345, 1)])              # unknown: ignored


def test_tmpfile(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    fi, a = fs.tmpfile(d, stat.S_IFREG | 0o600, os.O_RDWR, CTX)
    assert a.st_nlink == 0 and stat.S_ISREG(a.st_mode)
    assert listdir(fs, d) == [b".", b".."]
    fs.write(fi.fh, 0, memoryview(b"temp"))
    assert fs.read(fi.fh, 0, 10) == b"temp"
    la = fs.link(a.st_ino, d, b"named", CTX)          # linkat(AT_EMPTY_PATH)
    assert la.st_nlink == 1
    fs.release(fi.fh)
    fs.forget([(a.st_ino, 2)])
    assert fs.lookup(d, b"named", CTX).st_size == 4
    # O_EXCL: never linkable; freed on release + forget
    fi, a = fs.tmpfile(d, stat.S_IFREG | 0o600, os.O_RDWR | os.O_EXCL, CTX)
    with raises(errno.ENOENT):
        fs.link(a.st_ino, d, b"nope", CTX)
    fs.release(fi.fh)
    fs.forget([(a.st_ino, 1)])
    with raises(errno.ESTALE):
        fs.getattr(a.st_ino, CTX)


def test_link_unlinked_file_enoent(fs: MemFS) -> None:
    fi, a = fs.create(ROOT, b"f", 0o100644, os.O_RDWR, CTX)
    fs.unlink(ROOT, b"f", CTX)
    with raises(errno.ENOENT):
        fs.link(a.st_ino, ROOT, b"again", CTX)
    fs.release(fi.fh)


# -- rename ----------------------------------------------------------------------


def test_rename_basic_and_times(fs: MemFS) -> None:
    a = fs.mkdir(ROOT, b"a", 0o755, CTX).st_ino
    b = fs.mkdir(ROOT, b"b", 0o755, CTX).st_ino
    f = mkfile(fs, a, b"f", b"1")
    before = fs.getattr(f, CTX)
    time.sleep(0.002)
    fs.rename(a, b"f", b, b"g", 0, CTX)
    after = fs.getattr(f, CTX)
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns
    for p in (a, b):
        pa = fs.getattr(p, CTX)
        assert pa.st_mtime_ns == pa.st_ctime_ns == after.st_ctime_ns
    assert fs.lookup(b, b"g", CTX).st_ino == f
    with raises(errno.ENOENT):
        fs.lookup(a, b"f", CTX)
    with raises(errno.ENOENT):
        fs.rename(a, b"f", b, b"x", 0, CTX)


def test_rename_replace_file(fs: MemFS) -> None:
    f = mkfile(fs, ROOT, b"f", b"new")
    g = mkfile(fs, ROOT, b"g", b"old")
    fs.rename(ROOT, b"f", ROOT, b"g", 0, CTX)
    assert fs.lookup(ROOT, b"g", CTX).st_ino == f
    assert fs.getattr(g, CTX).st_nlink == 0
    fs.forget([(g, 1)])
    with raises(errno.ESTALE):
        fs.getattr(g, CTX)
    assert sorted(listdir(fs, ROOT)) == [b".", b"..", b"g"]


def test_rename_noreplace(fs: MemFS) -> None:
    mkfile(fs, ROOT, b"f")
    mkfile(fs, ROOT, b"g")
    with raises(errno.EEXIST):
        fs.rename(ROOT, b"f", ROOT, b"g", RENAME_NOREPLACE, CTX)
    fs.rename(ROOT, b"f", ROOT, b"h", RENAME_NOREPLACE, CTX)
    fs.link(fs.lookup(ROOT, b"h", CTX).st_ino, ROOT, b"h2", CTX)
    with raises(errno.EEXIST):                 # even onto a hard link of itself
        fs.rename(ROOT, b"h", ROOT, b"h2", RENAME_NOREPLACE, CTX)
    with raises(errno.EINVAL):
        fs.rename(ROOT, b"h", ROOT, b"g", RENAME_NOREPLACE | RENAME_EXCHANGE, CTX)
    with raises(errno.EINVAL):
        fs.rename(ROOT, b"h", ROOT, b"g", 0x80, CTX)


def test_rename_exchange(fs: MemFS) -> None:
    a = fs.mkdir(ROOT, b"a", 0o755, CTX).st_ino
    b = fs.mkdir(ROOT, b"b", 0o755, CTX).st_ino
    sub = fs.mkdir(a, b"sub", 0o755, CTX).st_ino
    f = mkfile(fs, b, b"f")
    with raises(errno.ENOENT):
        fs.rename(a, b"sub", b, b"missing", RENAME_EXCHANGE, CTX)
    fs.rename(a, b"sub", b, b"f", RENAME_EXCHANGE, CTX)
    assert fs.lookup(a, b"sub", CTX).st_ino == f
    assert fs.lookup(b, b"f", CTX).st_ino == sub
    assert fs.getattr(a, CTX).st_nlink == 2 and fs.getattr(b, CTX).st_nlink == 3
    assert fs.lookup(sub, b"..", CTX).st_ino == b
    # exchanging a dir with its own ancestor is refused
    inner = fs.mkdir(sub, b"inner", 0o755, CTX).st_ino
    with raises(errno.EINVAL):
        fs.rename(ROOT, b"b", sub, b"inner", RENAME_EXCHANGE, CTX)
    assert fs.lookup(sub, b"inner", CTX).st_ino == inner


def test_rename_dir_rules(fs: MemFS) -> None:
    a = fs.mkdir(ROOT, b"a", 0o755, CTX).st_ino
    sub = fs.mkdir(a, b"sub", 0o755, CTX).st_ino
    deep = fs.mkdir(sub, b"deep", 0o755, CTX).st_ino
    mkfile(fs, ROOT, b"f")
    fs.mkdir(ROOT, b"empty", 0o755, CTX)
    full = fs.mkdir(ROOT, b"full", 0o755, CTX).st_ino
    mkfile(fs, full, b"x")
    with raises(errno.EINVAL):
        fs.rename(ROOT, b"a", deep, b"a2", 0, CTX)
    with raises(errno.EINVAL):
        fs.rename(ROOT, b"a", a, b"self", 0, CTX)
    with raises(errno.ENOTDIR):
        fs.rename(ROOT, b"a", ROOT, b"f", 0, CTX)
    with raises(errno.EISDIR):
        fs.rename(ROOT, b"f", ROOT, b"a", 0, CTX)
    with raises(errno.ENOTEMPTY):
        fs.rename(ROOT, b"a", ROOT, b"full", 0, CTX)
    with raises(errno.ENOTEMPTY):       # target is an ancestor of the source
        fs.rename(sub, b"deep", ROOT, b"a", 0, CTX)
    root_links = fs.getattr(ROOT, CTX).st_nlink
    fs.rename(a, b"sub", ROOT, b"empty", 0, CTX)   # replaces an empty dir
    assert fs.lookup(ROOT, b"empty", CTX).st_ino == sub
    assert fs.getattr(ROOT, CTX).st_nlink == root_links
    assert fs.getattr(a, CTX).st_nlink == 2
    assert fs.lookup(sub, b"..", CTX).st_ino == ROOT


def test_rename_same_inode_noop(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fs.link(ino, ROOT, b"g", CTX)
    fs.rename(ROOT, b"f", ROOT, b"g", 0, CTX)
    assert fs.lookup(ROOT, b"f", CTX).st_ino == ino
    assert fs.lookup(ROOT, b"g", CTX).st_ino == ino
    assert fs.getattr(ino, CTX).st_nlink == 2
    fs.rename(ROOT, b"f", ROOT, b"f", 0, CTX)
    assert fs.lookup(ROOT, b"f", CTX).st_ino == ino
    fs.rename(ROOT, b"f", ROOT, b"g", RENAME_EXCHANGE, CTX)


def test_rename_whiteout(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fs.rename(ROOT, b"f", ROOT, b"g", RENAME_WHITEOUT, CTX)
    wo = fs.lookup(ROOT, b"f", CTX)
    assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0
    assert fs.lookup(ROOT, b"g", CTX).st_ino == ino


# -- attributes --------------------------------------------------------------------


def sa(**kw: bool) -> SetattrFields:
    return SetattrFields(**kw)


def test_chmod_chown_rules(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", ctx=USER, mode=0o755)
    c0 = fs.getattr(ino, CTX).st_ctime_ns
    time.sleep(0.002)
    a = fs.setattr(ino, EntryAttributes(st_mode=0o4750), sa(update_mode=True), None, USER)
    assert a.st_mode == stat.S_IFREG | 0o4750 and a.st_ctime_ns > c0
    other = RequestContext(uid=2000, gid=2000, pid=3)
    with raises(errno.EPERM):
        fs.setattr(ino, EntryAttributes(st_mode=0o777), sa(update_mode=True), None, other)
    with raises(errno.EPERM):   # only root gives files away
        fs.setattr(ino, EntryAttributes(st_uid=2000), sa(update_uid=True), None, USER)
    with raises(errno.EPERM):   # owner may only chgrp to a group it is in
        fs.setattr(ino, EntryAttributes(st_gid=2000), sa(update_gid=True), None, USER)
    member = RequestContext(uid=1000, gid=1000, pid=2, groups=(3000,))
    a = fs.setattr(ino, EntryAttributes(st_gid=3000), sa(update_gid=True), None, member)
    assert a.st_gid == 3000
    assert not a.st_mode & stat.S_ISUID            # chgrp cleared suid
    fs.setattr(ino, EntryAttributes(st_mode=0o6755), sa(update_mode=True), None, CTX)
    a = fs.setattr(ino, EntryAttributes(st_uid=0, st_gid=0),
                   sa(update_uid=True, update_gid=True), None, CTX)
    assert a.st_uid == 0 and a.st_gid == 0
    assert a.st_mode == stat.S_IFREG | 0o755       # chown clears suid and sgid (g+x)
    # sgid without group exec survives chown
    fs.setattr(ino, EntryAttributes(st_mode=0o2644), sa(update_mode=True), None, CTX)
    a = fs.setattr(ino, EntryAttributes(st_uid=5), sa(update_uid=True), None, CTX)
    assert a.st_mode & stat.S_ISGID
    # chown on a directory keeps sgid
    d = fs.mkdir(ROOT, b"d", 0o2755, CTX).st_ino
    a = fs.setattr(d, EntryAttributes(st_uid=7), sa(update_uid=True), None, CTX)
    assert a.st_mode & stat.S_ISGID


def test_non_owner_writer_may_only_clear_suid(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", mode=0o6777)
    a = fs.setattr(ino, EntryAttributes(st_mode=0o0777), sa(update_mode=True), None, USER)
    assert a.st_mode == stat.S_IFREG | 0o777
    with raises(errno.EPERM):
        fs.setattr(ino, EntryAttributes(st_mode=0o0775), sa(update_mode=True), None, USER)
    with raises(errno.EPERM):
        fs.setattr(ino, EntryAttributes(st_mode=0o4777), sa(update_mode=True), None, USER)


def test_chmod_non_member_drops_sgid(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", ctx=USER)
    fs.setattr(ino, EntryAttributes(st_gid=42), sa(update_gid=True), None, CTX)
    a = fs.setattr(ino, EntryAttributes(st_mode=0o2755), sa(update_mode=True), None, USER)
    assert not a.st_mode & stat.S_ISGID


def test_utimes(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", ctx=USER, mode=0o644)
    a = fs.setattr(ino, EntryAttributes(st_atime_ns=10**9, st_mtime_ns=2 * 10**9),
                   sa(update_atime=True, update_mtime=True), None, USER)
    assert a.st_atime_ns == 10**9 and a.st_mtime_ns == 2 * 10**9
    assert a.st_ctime_ns > 2 * 10**9
    other = RequestContext(uid=2000, gid=2000, pid=3)
    with raises(errno.EPERM):
        fs.setattr(ino, EntryAttributes(st_mtime_ns=5), sa(update_mtime=True), None, other)
    with raises(errno.EACCES):    # "now" needs write access
        fs.setattr(ino, EntryAttributes(st_mtime_ns=5),
                   sa(update_mtime=True, mtime_now=True), None, other)


def test_truncate(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"0123456789" * 10_000)
    a0 = fs.getattr(ino, CTX)
    time.sleep(0.002)
    a = fs.setattr(ino, EntryAttributes(st_size=5), sa(update_size=True), None, CTX)
    assert a.st_size == 5 and a.st_mtime_ns > a0.st_mtime_ns and a.st_ctime_ns == a.st_mtime_ns
    a = fs.setattr(ino, EntryAttributes(st_size=CHUNK_SIZE * 3), sa(update_size=True), None, CTX)
    fh = openrw(fs, ino)
    data = fs.read(fh, 0, CHUNK_SIZE * 3)
    assert data == b"01234" + bytes(CHUNK_SIZE * 3 - 5)
    assert fs.lseek(fh, 10, SEEK_DATA, CTX) == 10
    assert fs.lseek(fh, 10, SEEK_HOLE, CTX) == CHUNK_SIZE
    fs.release(fh)
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    with raises(errno.EISDIR):
        fs.setattr(d, EntryAttributes(st_size=0), sa(update_size=True), None, CTX)
    f = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644, 0, CTX).st_ino
    with raises(errno.EINVAL):
        fs.setattr(f, EntryAttributes(st_size=0), sa(update_size=True), None, CTX)


def test_truncate_kill_suidgid(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"abc", mode=0o6755)
    a = fs.setattr(ino, EntryAttributes(st_size=0), sa(update_size=True, kill_suidgid=True),
                   None, CTX)
    assert a.st_mode == stat.S_IFREG | 0o755


def test_open_trunc(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"abc")
    fh = fs.open(ino, os.O_RDONLY | os.O_TRUNC, CTX).fh  # Linux truncates even read-only
    assert fs.getattr(ino, CTX).st_size == 0
    with raises(errno.EBADF):
        fs.write(fh, 0, memoryview(b"x"))
    fs.release(fh)
    fh = fs.open(ino, os.O_WRONLY | os.O_TRUNC, CTX).fh
    assert fs.getattr(ino, CTX).st_size == 0
    with raises(errno.EBADF):
        fs.read(fh, 0, 1)
    fs.release(fh)


def test_append(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"abc")
    fh = fs.open(ino, os.O_WRONLY | os.O_APPEND, CTX).fh
    assert fs.write(fh, 0, memoryview(b"def")) == 3
    fs.release(fh)
    fh = openrw(fs, ino)
    assert fs.read(fh, 0, 10) == b"abcdef"
    fs.release(fh)


def test_sgid_directory_inheritance(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"shared", 0o2777, CTX).st_ino
    fs.setattr(d, EntryAttributes(st_gid=500), sa(update_gid=True), None, CTX)
    f = fs.create(d, b"f", 0o100664, os.O_RDWR, USER)[1]
    assert f.st_gid == 500 and f.st_uid == 1000
    sub = fs.mkdir(d, b"sub", 0o755, USER)
    assert sub.st_gid == 500 and sub.st_mode & stat.S_ISGID
    # non-member creating a setgid executable in the setgid dir loses S_ISGID
    x = fs.mknod(d, b"x", stat.S_IFREG | 0o2775, 0, USER)
    assert not x.st_mode & stat.S_ISGID
    outside = fs.mkdir(ROOT, b"plain", 0o755, USER)
    assert outside.st_gid == 1000 and not outside.st_mode & stat.S_ISGID


def test_access(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", ctx=USER, mode=0o640)
    assert fs.access(ino, os.R_OK | os.W_OK, USER)
    assert not fs.access(ino, os.X_OK, USER)
    grp = RequestContext(uid=2000, gid=1000, pid=3)
    assert fs.access(ino, os.R_OK, grp) and not fs.access(ino, os.W_OK, grp)
    other = RequestContext(uid=2000, gid=2000, pid=3)
    assert not fs.access(ino, os.R_OK, other)
    assert fs.access(ino, os.F_OK, other)
    assert fs.access(ino, os.R_OK | os.W_OK, CTX)
    assert not fs.access(ino, os.X_OK, CTX)
    assert fs.access(ROOT, os.X_OK, CTX)
    sup = RequestContext(uid=2000, gid=2000, pid=3, groups=(1000,))
    assert fs.access(ino, os.R_OK, sup)


# -- xattrs ------------------------------------------------------------------------


def test_xattrs(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    with raises(errno.ENODATA):
        fs.getxattr(ino, b"user.a", CTX)
    with raises(errno.ENODATA):
        fs.setxattr(ino, b"user.a", b"1", XATTR_REPLACE, CTX)
    c0 = fs.getattr(ino, CTX).st_ctime_ns
    time.sleep(0.002)
    fs.setxattr(ino, b"user.a", b"1", XATTR_CREATE, CTX)
    assert fs.getattr(ino, CTX).st_ctime_ns > c0
    with raises(errno.EEXIST):
        fs.setxattr(ino, b"user.a", b"2", XATTR_CREATE, CTX)
    fs.setxattr(ino, b"user.a", b"2", XATTR_REPLACE, CTX)
    assert fs.getxattr(ino, b"user.a", CTX) == b"2"
    fs.setxattr(ino, b"user.empty", b"", 0, CTX)
    assert fs.getxattr(ino, b"user.empty", CTX) == b""
    fs.setxattr(ino, b"trusted.t", b"x", 0, CTX)
    fs.setxattr(ino, b"security.selinux", b"ctx", 0, CTX)
    with raises(errno.EOPNOTSUPP):  # ACLs are not evaluated: refused, so cp -a uses chmod
        fs.setxattr(ino, b"system.posix_acl_access", b"\x02\x00\x00\x00", 0, CTX)
    with raises(errno.EOPNOTSUPP):
        fs.setxattr(ino, b"foo.bar", b"x", 0, CTX)
    with raises(errno.EOPNOTSUPP):
        fs.setxattr(ino, b"system.other", b"x", 0, CTX)
    with raises(errno.EPERM):
        fs.setxattr(ino, b"trusted.u", b"x", 0, USER)
    assert sorted(fs.listxattr(ino, CTX)) == sorted(
        [b"user.a", b"user.empty", b"trusted.t", b"security.selinux"])
    assert b"trusted.t" not in fs.listxattr(ino, USER)
    fs.removexattr(ino, b"user.a", CTX)
    with raises(errno.ENODATA):
        fs.removexattr(ino, b"user.a", CTX)
    with raises(errno.ERANGE):
        fs.setxattr(ino, b"user." + b"n" * 251, b"", 0, CTX)
    with raises(errno.E2BIG):
        fs.setxattr(ino, b"user.big", b"v" * 65537, 0, CTX)
    lnk = fs.symlink(ROOT, b"l", b"f", CTX).st_ino
    with raises(errno.EPERM):
        fs.setxattr(lnk, b"user.a", b"1", 0, CTX)
    fs.setxattr(lnk, b"trusted.ok", b"1", 0, CTX)


# -- sparse data -------------------------------------------------------------------


def test_sparse_and_seek(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fh = openrw(fs, ino)
    off = 10 * CHUNK_SIZE + 100
    fs.write(fh, off, memoryview(b"data"))
    a = fs.getattr(ino, CTX)
    assert a.st_size == off + 4
    assert a.st_blocks * 512 <= 8192            # only one small chunk allocated
    assert fs.read(fh, 0, 8) == bytes(8)
    assert fs.read(fh, off - 2, 10) == b"\0\0data"
    assert fs.lseek(fh, 0, SEEK_DATA, CTX) == 10 * CHUNK_SIZE
    assert fs.lseek(fh, 0, SEEK_HOLE, CTX) == 0
    assert fs.lseek(fh, off, SEEK_HOLE, CTX) == off + 4     # EOF is a hole
    assert fs.lseek(fh, off, SEEK_DATA, CTX) == off
    with raises(errno.ENXIO):
        fs.lseek(fh, off + 4, SEEK_DATA, CTX)
    with raises(errno.ENXIO):
        fs.lseek(fh, off + 4, SEEK_HOLE, CTX)
    # extend with a hole after the data
    fs.setattr(ino, EntryAttributes(st_size=20 * CHUNK_SIZE), sa(update_size=True), fh, CTX)
    assert fs.lseek(fh, off, SEEK_HOLE, CTX) == 11 * CHUNK_SIZE
    with raises(errno.ENXIO):
        fs.lseek(fh, 11 * CHUNK_SIZE, SEEK_DATA, CTX)
    # a 1 TiB sparse file costs nothing
    fs.setattr(ino, EntryAttributes(st_size=1 << 40), sa(update_size=True), fh, CTX)
    assert fs.read(fh, (1 << 40) - 4, 100) == bytes(4)
    fs.release(fh)


def test_punch_hole(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"\xff" * (4 * CHUNK_SIZE))
    fh = openrw(fs, ino)
    free0 = fs.statfs(CTX).f_bfree
    with raises(errno.EOPNOTSUPP):
        fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE, 0, 10, CTX)
    fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 2 * CHUNK_SIZE, CTX)
    assert fs.getattr(ino, CTX).st_size == 4 * CHUNK_SIZE
    data = fs.read(fh, 0, 4 * CHUNK_SIZE)
    assert data[:100] == b"\xff" * 100
    assert data[100:100 + 2 * CHUNK_SIZE] == bytes(2 * CHUNK_SIZE)
    assert data[100 + 2 * CHUNK_SIZE:] == b"\xff" * (2 * CHUNK_SIZE - 100)
    # chunk 1 is now a real hole
    assert fs.lseek(fh, 0, SEEK_HOLE, CTX) == CHUNK_SIZE
    assert fs.lseek(fh, CHUNK_SIZE, SEEK_DATA, CTX) == 2 * CHUNK_SIZE
    assert fs.statfs(CTX).f_bfree > free0
    # punching past EOF does not extend
    fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 10 * CHUNK_SIZE, CTX)
    assert fs.getattr(ino, CTX).st_size == 4 * CHUNK_SIZE
    assert fs.getattr(ino, CTX).st_blocks == 0
    with raises(errno.ENXIO):
        fs.lseek(fh, 0, SEEK_DATA, CTX)
    fs.release(fh)


def test_fallocate_modes(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f", b"abcdef")
    fh = openrw(fs, ino)
    fs.fallocate(fh, FALLOC_FL_KEEP_SIZE, 0, 1000, CTX)
    assert fs.getattr(ino, CTX).st_size == 6
    fs.fallocate(fh, 0, 0, 1000, CTX)
    assert fs.getattr(ino, CTX).st_size == 1000
    assert fs.read(fh, 0, 1000) == b"abcdef" + bytes(994)
    fs.fallocate(fh, FALLOC_FL_ZERO_RANGE, 2, 2, CTX)
    assert fs.read(fh, 0, 6) == b"ab\0\0ef"
    fs.fallocate(fh, FALLOC_FL_ZERO_RANGE, 990, 20, CTX)
    assert fs.getattr(ino, CTX).st_size == 1010
    fs.fallocate(fh, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 1000, 100, CTX)
    assert fs.getattr(ino, CTX).st_size == 1010
    for bad in (0x04, 0x08, 0x20, 0x40, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
                | FALLOC_FL_KEEP_SIZE):
        with raises(errno.EOPNOTSUPP):
            fs.fallocate(fh, bad, 0, 10, CTX)
    with raises(errno.EINVAL):
        fs.fallocate(fh, 0, 0, 0, CTX)
    small = MemFS(max_bytes=1 << 20)
    sino = mkfile(small, ROOT, b"f")
    sfh = openrw(small, sino)
    with raises(errno.ENOSPC):
        small.fallocate(sfh, 0, 0, 2 << 20, CTX)
    with raises(errno.ENOSPC):
        small.write(sfh, 0, memoryview(bytes(2 << 20)))
    fs.release(fh)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["w", "t", "p", "z"]),
                          st.integers(0, 5 * CHUNK_SIZE), st.integers(1, 2 * CHUNK_SIZE)),
                max_size=12))
def test_data_model(ops: list[tuple[str, int, int]]) -> None:
    """Random writes/truncates/punches agree with a plain bytearray model."""
    fs = MemFS()
    fi, a = fs.create(ROOT, b"f", 0o100644, os.O_RDWR, CTX)
    model = bytearray()
    for i, (op, off, n) in enumerate(ops):
        if op == "w":
            data = bytes([(i % 250) + 1]) * n
            fs.write(fi.fh, off, memoryview(data))
            if len(model) < off:
                model.extend(bytes(off - len(model)))
            model[off:off + n] = data
        elif op == "t":
            fs.setattr(a.st_ino, EntryAttributes(st_size=off), sa(update_size=True), None, CTX)
            del model[off:]
            model.extend(bytes(off - len(model)))
        elif op == "p":
            fs.fallocate(fi.fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n, CTX)
            end = min(off + n, len(model))
            if off < end:
                model[off:end] = bytes(end - off)
        else:
            fs.fallocate(fi.fh, FALLOC_FL_ZERO_RANGE, off, n, CTX)
            if len(model) < off + n:
                model.extend(bytes(off + n - len(model)))
            model[off:off + n] = bytes(n)
        assert fs.getattr(a.st_ino, CTX).st_size == len(model)
    assert fs.read(fi.fh, 0, len(model) + 10) == bytes(model)
    # SEEK_DATA/SEEK_HOLE are consistent with the content: holes read as zeros
    pos = 0
    while pos < len(model):
        hole = fs.lseek(fi.fh, pos, SEEK_HOLE, CTX)
        assert pos <= hole <= len(model)
        if hole == len(model):
            break
        try:
            nxt = fs.lseek(fi.fh, hole, SEEK_DATA, CTX)
        except FUSEError as e:
            assert e.errno == errno.ENXIO
            nxt = len(model)
        assert model[hole:nxt] == bytes(nxt - hole)
        pos = nxt
    fs.release(fi.fh)
    assert fs._used == sum(len(c) for c in (fs._inodes[a.st_ino].chunks or {}).values())


def test_copy_file_range(fs: MemFS) -> None:
    src = mkfile(fs, ROOT, b"src")
    dst = mkfile(fs, ROOT, b"dst", b"Z" * 10)
    fin = fs.open(src, os.O_RDWR, CTX).fh
    fs.write(fin, 0, memoryview(b"A" * 100))
    fs.write(fin, 3 * CHUNK_SIZE, memoryview(b"B" * 100))
    fout = fs.open(dst, os.O_WRONLY, CTX).fh
    n = fs.copy_file_range(fin, 50, dst, fout, 5, 10 * CHUNK_SIZE, 0, CTX)
    assert n == 3 * CHUNK_SIZE + 100 - 50          # bounded by the source EOF
    rfh = fs.open(dst, os.O_RDONLY, CTX).fh
    out = fs.read(rfh, 0, 4 * CHUNK_SIZE)
    assert out[:5] == b"Z" * 5
    assert out[5:55] == b"A" * 50
    assert out[55:5 + 3 * CHUNK_SIZE - 50] == bytes(3 * CHUNK_SIZE - 100)
    assert out.endswith(b"B" * 100)
    # the hole was carried over instead of being filled with zeros
    assert fs.lseek(rfh, 0, SEEK_HOLE, CTX) == CHUNK_SIZE
    assert fs.copy_file_range(fin, 10**9, dst, fout, 0, 10, 0, CTX) == 0
    with raises(errno.EINVAL):
        fs.copy_file_range(fin, 0, dst, fout, 0, 10, 1, CTX)
    with raises(errno.EINVAL):                      # overlapping ranges in one file
        fs.copy_file_range(fin, 0, src, fin, 10, 50, 0, CTX)
    with raises(errno.EBADF):
        fs.copy_file_range(fout, 0, src, fin, 0, 10, 0, CTX)
    for fh in (fin, fout, rfh):
        fs.release(fh)


# -- locks -----------------------------------------------------------------------


def lk(start: int, end: int, type_: int, pid: int = 1) -> Lock:
    return Lock(start, end, type_, pid)


def test_posix_locks(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fa = openrw(fs, ino)
    fb = openrw(fs, ino)
    fs.setlk(fa, 1, lk(0, 99, fcntl.F_WRLCK, 11), False, CTX)
    got = fs.getlk(fb, 2, lk(50, 60, fcntl.F_RDLCK), CTX)
    assert (got.start, got.end, got.type, got.pid) == (0, 99, fcntl.F_WRLCK, 11)
    assert fs.getlk(fb, 2, lk(100, 200, fcntl.F_WRLCK), CTX).type == fcntl.F_UNLCK
    assert fs.getlk(fa, 1, lk(0, 10, fcntl.F_WRLCK), CTX).type == fcntl.F_UNLCK   # own
    with raises(errno.EAGAIN):
        fs.setlk(fb, 2, lk(99, 99, fcntl.F_RDLCK), False, CTX)
    # split: unlock the middle, the hole is free, the ends still locked
    fs.setlk(fa, 1, lk(40, 59, fcntl.F_UNLCK), False, CTX)
    fs.setlk(fb, 2, lk(40, 59, fcntl.F_WRLCK), False, CTX)
    with raises(errno.EAGAIN):
        fs.setlk(fb, 2, lk(39, 40, fcntl.F_RDLCK), False, CTX)
    assert [(x.start, x.end) for x in fs._plocks[ino] if x.owner == 1] == [(0, 39), (60, 99)]
    # downgrade part of owner 1's range to a read lock; readers then share it
    fs.setlk(fa, 1, lk(60, 69, fcntl.F_RDLCK), False, CTX)
    fs.setlk(fb, 2, lk(60, 65, fcntl.F_RDLCK), False, CTX)
    # merging adjacent same-type ranges of one owner
    fs.setlk(fa, 1, lk(200, 299, fcntl.F_RDLCK), False, CTX)
    fs.setlk(fa, 1, lk(300, EOF_, fcntl.F_RDLCK), False, CTX)
    mine = [(x.start, x.end, x.type) for x in fs._plocks[ino] if x.owner == 1]
    assert (200, EOF_, fcntl.F_RDLCK) in mine
    got = fs.getlk(fb, 2, lk(10**12, 10**12, fcntl.F_WRLCK), CTX)
    assert got.start == 200 and got.end == EOF_
    # on close(2) the kernel itself sends SETLK F_UNLCK for the closing owner
    fc = openrw(fs, ino)
    fs.setlk(fc, 5, lk(150, 150, fcntl.F_WRLCK), False, CTX)
    fs.setlk(fc, 5, lk(0, EOF_, fcntl.F_UNLCK), False, CTX)
    assert not [x for x in fs._plocks[ino] if x.owner == 5]
    assert [x for x in fs._plocks[ino] if x.owner == 1]
    fs.release(fc)
    # release drops the locks taken through that handle
    fs.release(fa)
    fs.setlk(fb, 2, lk(0, EOF_, fcntl.F_WRLCK), False, CTX)
    fs.setlk(fb, 2, lk(0, EOF_, fcntl.F_UNLCK), False, CTX)
    assert ino not in fs._plocks
    with raises(errno.EINVAL):
        fs.setlk(fb, 2, lk(10, 5, fcntl.F_WRLCK), False, CTX)
    fs.release(fb)


def test_posix_lock_mode_check(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    ro = fs.open(ino, os.O_RDONLY, CTX).fh
    with raises(errno.EBADF):
        fs.setlk(ro, 1, lk(0, 10, fcntl.F_WRLCK), False, CTX)
    fs.setlk(ro, 1, lk(0, 10, fcntl.F_RDLCK), False, CTX)
    fs.release(ro)


def test_posix_lock_blocking_wait(fs: MemFS, start_blocked: Any) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fa = openrw(fs, ino)
    fb = openrw(fs, ino)
    fs.setlk(fa, 1, lk(0, 10, fcntl.F_WRLCK), False, CTX)
    done = threading.Event()

    def waiter() -> None:
        fs.setlk(fb, 2, lk(5, 6, fcntl.F_WRLCK), True, CTX)
        done.set()

    t = start_blocked(waiter)       # returns once the waiter is parked on the lock
    assert not done.is_set()
    fs.setlk(fa, 1, lk(0, 10, fcntl.F_UNLCK), False, CTX)
    t.join(5)
    assert done.is_set()
    assert fs.getlk(fa, 1, lk(0, 10, fcntl.F_RDLCK), CTX).type == fcntl.F_WRLCK
    fs.release(fa)
    fs.release(fb)


def test_posix_lock_interrupt_and_deadlock(fs: MemFS, start_blocked: Any) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fa = openrw(fs, ino)
    fb = openrw(fs, ino)
    fs.setlk(fa, 1, lk(0, 0, fcntl.F_WRLCK), False, CTX)
    fs.setlk(fb, 2, lk(1, 1, fcntl.F_WRLCK), False, CTX)
    flag = threading.Event()
    ictx = RequestContext(uid=0, gid=0, pid=5, unique=77,
                          _interrupted=lambda unique: flag.is_set() and unique == 77)
    errs: list[int] = []

    def waiter() -> None:
        try:
            fs.setlk(fa, 1, lk(1, 1, fcntl.F_WRLCK), True, ictx)   # waits for owner 2
        except FUSEError as e:
            errs.append(e.errno)

    t = start_blocked(waiter)       # owner 1 is now queued behind owner 2
    # owner 2 now asking for owner 1's byte would deadlock
    with raises(errno.EDEADLK):
        fs.setlk(fb, 2, lk(0, 0, fcntl.F_WRLCK), True, CTX)
    flag.set()
    t.join(5)
    assert errs == [errno.EINTR]
    # a bounded wait gives up with EINTR (for single-threaded servers)
    bounded = MemFS(lock_wait_timeout=0.1)
    ino2 = mkfile(bounded, ROOT, b"f")
    ga, gb = openrw(bounded, ino2), openrw(bounded, ino2)
    bounded.setlk(ga, 1, lk(0, 0, fcntl.F_WRLCK), False, CTX)
    t0 = time.monotonic()
    with raises(errno.EINTR):
        bounded.setlk(gb, 2, lk(0, 0, fcntl.F_WRLCK), True, CTX)
    assert time.monotonic() - t0 < 2
    fs.release(fa)
    fs.release(fb)


def test_flock(fs: MemFS, start_blocked: Any) -> None:
    ino = mkfile(fs, ROOT, b"f")
    fa, fb, fc = openrw(fs, ino), openrw(fs, ino), openrw(fs, ino)
    fs.flock(fa, 1, fcntl.LOCK_SH, False, CTX)
    fs.flock(fb, 2, fcntl.LOCK_SH, False, CTX)
    with raises(errno.EWOULDBLOCK):
        fs.flock(fc, 3, fcntl.LOCK_EX, False, CTX)
    fs.flock(fa, 1, fcntl.LOCK_UN, False, CTX)
    fs.flock(fb, 2, fcntl.LOCK_UN, False, CTX)
    fs.flock(fc, 3, fcntl.LOCK_EX | fcntl.LOCK_NB, False, CTX)
    with raises(errno.EWOULDBLOCK):
        fs.flock(fa, 1, fcntl.LOCK_SH, False, CTX)
    fs.flock(fc, 3, fcntl.LOCK_EX, False, CTX)        # idempotent
    fs.flock(fc, 3, fcntl.LOCK_SH, False, CTX)        # downgrade
    fs.flock(fa, 1, fcntl.LOCK_SH, False, CTX)
    # flock and POSIX locks are independent
    fs.setlk(fb, 2, lk(0, EOF_, fcntl.F_WRLCK), False, CTX)

    got: list[int] = []

    def waiter() -> None:
        fs.flock(fb, 2, fcntl.LOCK_EX, True, CTX)
        got.append(1)

    t = start_blocked(waiter)
    assert not got
    fs.release(fa)                                    # closing drops its flock
    fs.flock(fc, 3, fcntl.LOCK_UN, False, CTX)
    t.join(5)
    assert got == [1]
    fs.release(fb)
    fs.release(fc)
    assert ino not in fs._flocks


# -- readdir ---------------------------------------------------------------------


def test_readdir_paging_and_plus(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    inos = {mkfile(fs, d, b"f%03d" % i) for i in range(50)}
    names = listdir(fs, d, page=7)
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == [b"f%03d" % i for i in range(50)]
    counts = {i: fs._inodes[i].nlookup for i in inos}
    dir_count = fs._inodes[d].nlookup
    fh = fs.opendir(d, CTX)
    tok = ListingToken(plus=True, capacity=12)
    fs.readdir(fh, 0, tok)
    assert [n for n, _, _ in tok.entries][:2] == [b".", b".."]
    for _name, attr, _ in tok.entries[2:]:
        assert fs._inodes[attr.st_ino].nlookup == counts[attr.st_ino] + 1
    # entries that did not fit are not counted
    added = {a.st_ino for _, a, _ in tok.entries}
    for i in inos - added:
        assert fs._inodes[i].nlookup == counts[i]
    # "." and ".." are not counted
    assert fs._inodes[d].nlookup == dir_count
    fs.releasedir(fh)


def test_readdir_cookies_stable_under_modification(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    for i in range(300):
        mkfile(fs, d, b"n%04d" % i)
    def read_page(fh: int, cookie: int) -> list[tuple[bytes, int]]:
        tok = ListingToken(capacity=10)
        fs.readdir(fh, cookie, tok)
        return [(n, c) for n, _, c in tok.entries]

    # churn: remove entries both ahead of and behind the cursor, add new ones
    seen, removed = list_with_churn(fs, d, read_page, lambda name: mkfile(fs, d, name))
    assert len(seen) == len(set(seen)), "no entry may be returned twice"
    survivors = {b"n%04d" % i for i in range(300)} - removed
    assert survivors <= set(seen), "no surviving entry may be skipped"
    assert {b"new%04d" % i for i in range(20)} <= set(seen)   # appended after the cursor
    dd = fs._inodes[d].dir
    assert dd is not None and dd.dead < 64           # tombstones were compacted


def test_readdir_resume_after_deleted_cookie(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o755, CTX).st_ino
    for n in (b"a", b"b", b"c"):
        mkfile(fs, d, n)
    fh = fs.opendir(d, CTX)
    tok = ListingToken(capacity=3)
    fs.readdir(fh, 0, tok)
    assert [n for n, _, _ in tok.entries] == [b".", b"..", b"a"]
    fs.unlink(d, b"a", CTX)
    fs.unlink(d, b"b", CTX)
    tok2 = ListingToken()
    fs.readdir(fh, tok.entries[-1][2], tok2)
    assert [n for n, _, _ in tok2.entries] == [b"c"]
    fs.releasedir(fh)


# -- filesystem-wide and identity -----------------------------------------------------


def test_statfs(fs: MemFS) -> None:
    small = MemFS(max_bytes=1 << 20, max_inodes=10)
    s = small.statfs(CTX)
    assert s.f_namemax == 255 and s.f_blocks == 256 and s.f_files == 10
    assert s.f_ffree == 9
    mkfile(small, ROOT, b"f", b"x" * 5000)
    s2 = small.statfs(CTX)
    assert s2.f_bfree == 254 and s2.f_ffree == 8
    for i in range(8):
        small.mknod(ROOT, b"n%d" % i, stat.S_IFREG | 0o644, 0, CTX)
    with raises(errno.ENOSPC):
        small.mknod(ROOT, b"full", stat.S_IFREG | 0o644, 0, CTX)


def test_handles(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")
    h = fs.handle_of(ino)
    assert h is not None and len(h) == 16
    assert fs.inode_for_handle(h) == ino
    assert fs.inode_for_handle(fs.handle_of(ROOT) or b"") == ROOT
    other = MemFS()
    with raises(errno.ESTALE):
        other.inode_for_handle(h)          # different generation
    with raises(errno.ESTALE):
        fs.inode_for_handle(b"short")
    fs.unlink(ROOT, b"f", CTX)
    fs.forget([(ino, 1)])
    with raises(errno.ESTALE):
        fs.inode_for_handle(h)
    assert fs.handle_of(ino) is None


def test_dump_and_load_state(fs: MemFS) -> None:
    d = fs.mkdir(ROOT, b"d", 0o2755, CTX).st_ino
    f = mkfile(fs, d, b"f", b"hello" * 1000)
    fs.link(f, ROOT, b"hard", CTX)
    fs.symlink(d, b"l", b"../hard", CTX)
    fs.mknod(d, b"dev", stat.S_IFCHR | 0o600, os.makedev(4, 5), CTX)
    fs.setxattr(f, b"user.k", b"v", 0, CTX)
    fh = openrw(fs, f)
    fs.write(fh, 5 * CHUNK_SIZE, memoryview(b"tail"))
    fs.setlk(fh, 9, lk(0, 10, fcntl.F_WRLCK, 99), False, CTX)
    tfi, ta = fs.tmpfile(d, 0o100600, os.O_RDWR, CTX)   # unlinked but open
    fs.write(tfi.fh, 0, memoryview(b"tmp"))
    blob = fs.dump_state()
    handle = fs.handle_of(f)
    assert handle is not None

    succ = MemFS()
    succ.load_state(blob)
    succ.attach_recovery_fds(fs.recovery_fds())    # memfd: the data (heap: none)
    assert succ.inode_for_handle(handle) == f
    assert succ.read(fh, 0, 5) == b"hello"
    assert succ.read(fh, 5 * CHUNK_SIZE, 10) == b"tail"
    assert succ.read(tfi.fh, 0, 10) == b"tmp"
    assert succ.getattr(ta.st_ino, CTX).st_nlink == 0
    assert succ.lookup(d, b"l", CTX).st_ino
    assert succ.readlink(succ.lookup(d, b"l", CTX).st_ino, CTX) == b"../hard"
    assert succ.lookup(d, b"dev", CTX).st_rdev == os.makedev(4, 5)
    assert succ.getxattr(f, b"user.k", CTX) == b"v"
    assert succ.getattr(f, CTX).st_nlink == 2
    assert succ.getattr(d, CTX).st_mode & stat.S_ISGID
    assert succ.getlk(fh, 1, lk(5, 5, fcntl.F_RDLCK), CTX).pid == 99
    assert listdir(succ, d) == listdir(fs, d)
    assert succ.getattr(f, CTX).__repr__() == fs.getattr(f, CTX).__repr__()
    assert succ.statfs(CTX) == fs.statfs(CTX)
    # new inodes and handles do not collide with old ones
    nfi, na = succ.create(ROOT, b"new", 0o100644, os.O_RDWR, CTX)
    assert na.st_ino > max(fs._inodes) and nfi.fh > tfi.fh
    # the tmpfile is freed by the successor once released and forgotten
    succ.release(tfi.fh)
    succ.forget([(ta.st_ino, 1)])
    with raises(errno.ESTALE):
        succ.getattr(ta.st_ino, CTX)
    with pytest.raises((pickle.UnpicklingError, EOFError, ValueError)):
        succ.load_state(b"\x80\x04\x95" + b"junk")


def test_load_state_rejects_globals() -> None:
    evil = pickle.dumps({"version": 1, "x": os.getcwd})
    with pytest.raises(pickle.UnpicklingError):
        MemFS().load_state(evil)


def test_threads_concurrent_writes(fs: MemFS) -> None:
    ino = mkfile(fs, ROOT, b"f")

    def worker(k: int) -> None:
        fh = openrw(fs, ino)
        for i in range(200):
            fs.write(fh, (k * 200 + i) * 100, memoryview(bytes([k + 1]) * 100))
        fs.release(fh)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fh = openrw(fs, ino)
    data = fs.read(fh, 0, 4 * 200 * 100)
    fs.release(fh)
    for k in range(4):
        assert data[k * 20000:(k + 1) * 20000] == bytes([k + 1]) * 20000


def iter_names(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield b"file-%06d" % i


def test_memory_100k_empty_files() -> None:
    fs = MemFS()
    d = fs.mkdir(ROOT, b"many", 0o755, CTX).st_ino
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, name in enumerate(iter_names(100_000)):
            if i % 2:
                fs.mknod(d, name, stat.S_IFREG | 0o644, 0, CTX)
            else:
                fi, _ = fs.create(d, name, stat.S_IFREG | 0o644, os.O_RDWR, CTX)
                fs.release(fi.fh)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(fs._inodes) == 100_002
    assert grown < 60 * 1024 * 1024, f"{grown / 2**20:.1f} MiB for 100k files"
