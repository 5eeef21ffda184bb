"""Unit tests for fusewire.examples.passthrough.Passthrough (methods called directly)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fusewire.connection import DEFAULT_WANT
from fusewire.examples.passthrough import Passthrough
from fusewire.opcodes.flags import InitFlag
from fusewire.operations import Operations
from fusewire.server.dispatch import wanted_flags
from fusewire.testing.listing import ListingToken
from fusewire.types import EntryAttributes, FUSEError, RequestContext, SetattrFields

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, handles)")

ROOT = 1
CTX = RequestContext(uid=0, gid=0, pid=1, umask=0o022)
USER = RequestContext(uid=1000, gid=1000, pid=2, umask=0o022)
EOF_ = 2**63 - 1
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SEEK_DATA = 3
SEEK_HOLE = 4


def raises(code: int) -> AbstractContextManager[pytest.ExceptionInfo[FUSEError]]:
    return pytest.raises(FUSEError, match=f"^{errno.errorcode[code]}:")


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    os.chmod(src, 0o777)    # USER (uid 1000) creates here: passthrough acts as the caller
    (tmp_path / "outside").write_bytes(b"secret")
    (src / "f").write_bytes(b"hello world")
    (src / "d").mkdir()
    (src / "d" / "inner").write_bytes(b"in")
    os.symlink("/etc", src / "etc")
    os.symlink("../outside", src / "up")
    return src


@pytest.fixture
def fs(tree: Path) -> Iterator[Passthrough]:
    p = Passthrough(str(tree))
    yield p
    p.destroy()


def look(fs: Passthrough, path: str) -> int:
    ino = ROOT
    for part in path.split("/"):
        ino = fs.lookup(ino, part.encode(), CTX).st_ino
    return ino


def sa(**kw: bool) -> SetattrFields:
    return SetattrFields(**kw)


# -- lookups, identity, confinement ---------------------------------------------------


def test_lookup_and_getattr(fs: Passthrough, tree: Path) -> None:
    a = fs.lookup(ROOT, b"f", CTX)
    st = os.lstat(tree / "f")
    assert a.st_ino == st.st_ino          # nodeid is the source inode number
    assert a.st_size == 11 and a.st_mode == st.st_mode
    assert fs.getattr(a.st_ino, CTX).st_mtime_ns == st.st_mtime_ns
    assert fs.getattr(ROOT, CTX).st_ino == ROOT
    with raises(errno.ENOENT):
        fs.lookup(ROOT, b"missing", CTX)
    with raises(errno.ESTALE):
        fs.getattr(987654321, CTX)


def test_bad_names_rejected(fs: Passthrough) -> None:
    d = look(fs, "d")
    for bad in (b"..", b".", b"d/inner", b"../outside", b"", b"a\0b"):
        with raises(errno.EINVAL):
            fs.lookup(d, bad, CTX)
        with raises(errno.EINVAL):
            fs.mkdir(d, bad, 0o755, CTX)
        with raises(errno.EINVAL):
            fs.create(d, bad, 0o100644, os.O_RDWR, CTX)
        with raises(errno.EINVAL):
            fs.unlink(d, bad, CTX)
        with raises(errno.EINVAL):
            fs.rename(d, b"inner", d, bad, 0, CTX)
    with raises(errno.ENAMETOOLONG):
        fs.lookup(ROOT, b"x" * 256, CTX)


def test_symlinks_never_followed(fs: Passthrough, tree: Path) -> None:
    etc = fs.lookup(ROOT, b"etc", CTX)
    assert stat.S_ISLNK(etc.st_mode)
    assert fs.readlink(etc.st_ino, CTX) == b"/etc"
    with raises(errno.ENOTDIR):
        fs.lookup(etc.st_ino, b"passwd", CTX)
    with raises(errno.ELOOP):
        fs.open(etc.st_ino, os.O_RDONLY, CTX)
    up = fs.lookup(ROOT, b"up", CTX).st_ino
    outside = tree.parent / "outside"
    os.setxattr(outside, b"user.secret", b"1")
    before = os.stat(outside)
    with raises(errno.ENODATA):          # the link's own xattrs, not the target's
        fs.getxattr(up, b"user.secret", CTX)
    assert b"user.secret" not in fs.listxattr(up, CTX)
    with raises(errno.EINVAL):
        fs.setattr(up, EntryAttributes(st_size=0), sa(update_size=True), None, CTX)
    with raises(errno.EOPNOTSUPP):
        fs.setattr(up, EntryAttributes(st_mode=0o777), sa(update_mode=True), None, CTX)
    fs.setattr(up, EntryAttributes(st_mtime_ns=10**9), sa(update_mtime=True), None, CTX)
    fs.setattr(up, EntryAttributes(st_uid=5, st_gid=6), sa(update_uid=True, update_gid=True),
               None, CTX)
    assert os.lstat(tree / "up").st_mtime_ns == 10**9
    assert os.lstat(tree / "up").st_uid == 5
    after = os.stat(outside)
    assert (after.st_mtime_ns, after.st_uid, after.st_mode, after.st_size) == \
        (before.st_mtime_ns, before.st_uid, before.st_mode, before.st_size)
    # O_CREAT on a name that is a symlink to the outside must not open the target
    with raises(errno.ELOOP):
        fs.create(ROOT, b"up", 0o100644, os.O_RDWR | os.O_TRUNC, CTX)
    assert outside.read_bytes() == b"secret"


def test_lookup_counts_and_forget(fs: Passthrough) -> None:
    fds0 = open_fds()
    a = fs.lookup(ROOT, b"f", CTX).st_ino
    assert fs.lookup(ROOT, b"f", CTX).st_ino == a
    assert len(open_fds() - fds0) == 1             # one O_PATH fd per inode
    fs.forget([(a, 1)])
    assert fs.getattr(a, CTX).st_size == 11
    fs.forget([(a, 1)])
    assert open_fds() == fds0
    with raises(errno.ESTALE):
        fs.getattr(a, CTX)
    fs.forget([(a, 3), (ROOT, 10)])                 # unknown / root: harmless
    assert fs.getattr(ROOT, CTX).st_ino == ROOT


def test_nodeid_allocation() -> None:
    p = Passthrough("/")
    try:
        dev = p._root_key[0]
        assert p._nodeid_for(p._root_key) == ROOT
        assert p._nodeid_for((dev, 1234)) == 1234
        other = p._nodeid_for((dev + 1, 1234))
        assert other >= 1 << 63
        assert p._nodeid_for((dev, 1)) == other + 1    # ino 1 would clash with the root
    finally:
        p.destroy()


# -- creation and ownership ---------------------------------------------------------


def test_create_ownership_and_mode(fs: Passthrough, tree: Path) -> None:
    # the kernel sends the mode unmasked and the caller's umask (DONT_MASK)
    unmasked = RequestContext(uid=1000, gid=1000, pid=2, umask=0)
    fi, a = fs.create(ROOT, b"new", stat.S_IFREG | 0o666, os.O_RDWR, unmasked)
    st = os.lstat(tree / "new")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert stat.S_IMODE(st.st_mode) == 0o666        # our own umask did not interfere
    assert a.st_ino == st.st_ino and a.st_uid == 1000
    fs.release(fi.fh)
    fi, _ = fs.create(ROOT, b"masked", stat.S_IFREG | 0o666, os.O_RDWR, USER)
    fs.release(fi.fh)
    assert stat.S_IMODE(os.lstat(tree / "masked").st_mode) == 0o644   # the caller's umask
    d = fs.mkdir(ROOT, b"nd", 0o777, unmasked)
    st = os.lstat(tree / "nd")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777 and st.st_uid == 1000
    assert d.st_nlink == 2
    s = fs.symlink(ROOT, b"nl", b"target", USER)
    assert os.lstat(tree / "nl").st_uid == 1000 and os.readlink(tree / "nl") == "target"
    assert stat.S_ISLNK(s.st_mode)
    fifo = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o640, 0, USER)
    assert stat.S_ISFIFO(os.lstat(tree / "fifo").st_mode) and fifo.st_uid == 1000
    dev = fs.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), CTX)
    assert dev.st_rdev == os.makedev(1, 3)
    with raises(errno.EEXIST):
        fs.mkdir(ROOT, b"nd", 0o755, CTX)
    # a set-uid file keeps its bit although root chowned it
    fi, a = fs.create(ROOT, b"suid", stat.S_IFREG | 0o4755, os.O_RDWR, USER)
    assert stat.S_IMODE(os.lstat(tree / "suid").st_mode) == 0o4755
    fs.release(fi.fh)


def test_create_existing_keeps_owner(fs: Passthrough, tree: Path) -> None:
    # acting as the caller: root's 0644 file is not writable by USER, as on the source
    with raises(errno.EACCES):
        fs.create(ROOT, b"f", 0o100600, os.O_RDWR, USER)
    os.chmod(tree / "f", 0o666)
    fi, _ = fs.create(ROOT, b"f", 0o100600, os.O_RDWR, USER)
    st = os.lstat(tree / "f")
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o666
    fs.release(fi.fh)
    with raises(errno.EEXIST):
        fs.create(ROOT, b"f", 0o100600, os.O_RDWR | os.O_EXCL, USER)


def test_setgid_directory(fs: Passthrough, tree: Path) -> None:
    os.mkdir(tree / "shared")
    os.chown(tree / "shared", 0, 500)
    os.chmod(tree / "shared", 0o2775)
    sh = look(fs, "shared")
    with raises(errno.EACCES):          # not a member of group 500: no write permission
        fs.create(sh, b"f", 0o100664, os.O_RDWR, USER)
    member = RequestContext(uid=1000, gid=1000, pid=2, umask=0o022, groups=(500,))
    fi, a = fs.create(sh, b"f", 0o100664, os.O_RDWR, member)
    fs.release(fi.fh)
    assert (a.st_uid, a.st_gid) == (1000, 500)
    sub = fs.mkdir(sh, b"sub", 0o755, member)
    assert sub.st_gid == 500 and sub.st_mode & stat.S_ISGID


def test_setattr(fs: Passthrough, tree: Path) -> None:
    f = look(fs, "f")
    a = fs.setattr(f, EntryAttributes(st_mode=0o600), sa(update_mode=True), None, CTX)
    assert stat.S_IMODE(a.st_mode) == 0o600
    a = fs.setattr(f, EntryAttributes(st_uid=7, st_gid=8), sa(update_uid=True, update_gid=True),
                   None, CTX)
    assert (a.st_uid, a.st_gid) == (7, 8)
    a = fs.setattr(f, EntryAttributes(st_gid=9), sa(update_gid=True), None, CTX)
    assert (a.st_uid, a.st_gid) == (7, 9)
    a = fs.setattr(f, EntryAttributes(st_size=5), sa(update_size=True), None, CTX)
    assert a.st_size == 5 and (tree / "f").read_bytes() == b"hello"
    fh = fs.open(f, os.O_RDWR, CTX).fh
    a = fs.setattr(f, EntryAttributes(st_size=2), sa(update_size=True), fh, CTX)
    assert a.st_size == 2
    fs.release(fh)
    a = fs.setattr(f, EntryAttributes(st_atime_ns=10**9 + 5, st_mtime_ns=2 * 10**9 + 7),
                   sa(update_atime=True, update_mtime=True), None, CTX)
    assert (a.st_atime_ns, a.st_mtime_ns) == (10**9 + 5, 2 * 10**9 + 7)
    a = fs.setattr(f, EntryAttributes(st_mtime_ns=0), sa(update_mtime=True, mtime_now=True),
                   None, CTX)
    assert a.st_mtime_ns > time.time_ns() - 10 * 10**9
    assert a.st_atime_ns == 10**9 + 5                 # omitted: unchanged
    d = look(fs, "d")
    with raises(errno.EISDIR):
        fs.setattr(d, EntryAttributes(st_size=0), sa(update_size=True), None, CTX)


def test_truncate_kills_suid(fs: Passthrough, tree: Path) -> None:
    os.chmod(tree / "f", 0o6755)
    f = look(fs, "f")
    a = fs.setattr(f, EntryAttributes(st_size=0), sa(update_size=True, kill_suidgid=True),
                   None, CTX)
    assert stat.S_IMODE(a.st_mode) == 0o755


# -- names -------------------------------------------------------------------------


def test_link_unlink_rmdir(fs: Passthrough, tree: Path) -> None:
    f = look(fs, "f")
    d = look(fs, "d")
    a = fs.link(f, d, b"hard", CTX)
    assert a.st_ino == f and a.st_nlink == 2
    assert os.lstat(tree / "d" / "hard").st_ino == os.lstat(tree / "f").st_ino
    with raises(errno.EPERM):
        fs.link(d, ROOT, b"dirlink", CTX)
    up = look(fs, "up")
    la = fs.link(up, ROOT, b"up2", CTX)             # hard link to the symlink itself
    assert stat.S_ISLNK(la.st_mode) and os.readlink(tree / "up2") == "../outside"
    fs.unlink(d, b"hard", CTX)
    assert fs.getattr(f, CTX).st_nlink == 1
    with raises(errno.ENOTEMPTY):
        fs.rmdir(ROOT, b"d", CTX)
    fs.unlink(d, b"inner", CTX)
    fs.rmdir(ROOT, b"d", CTX)
    assert not (tree / "d").exists()
    with raises(errno.ENOENT):
        fs.unlink(ROOT, b"nope", CTX)


def test_rename_flags(fs: Passthrough, tree: Path) -> None:
    (tree / "g").write_bytes(b"G")
    with raises(errno.EEXIST):
        fs.rename(ROOT, b"f", ROOT, b"g", RENAME_NOREPLACE, CTX)
    fs.rename(ROOT, b"f", ROOT, b"h", RENAME_NOREPLACE, CTX)
    assert (tree / "h").read_bytes() == b"hello world"
    fs.rename(ROOT, b"h", ROOT, b"g", RENAME_EXCHANGE, CTX)
    assert (tree / "g").read_bytes() == b"hello world" and (tree / "h").read_bytes() == b"G"
    with raises(errno.ENOENT):
        fs.rename(ROOT, b"h", ROOT, b"zz", RENAME_EXCHANGE, CTX)
    d = look(fs, "d")
    fs.rename(ROOT, b"g", d, b"moved", 0, CTX)
    assert (tree / "d" / "moved").exists()
    with raises(errno.EINVAL):
        fs.rename(ROOT, b"d", d, b"loop", 0, CTX)


# -- file I/O ------------------------------------------------------------------------


def test_open_read_write(fs: Passthrough, tree: Path) -> None:
    f = look(fs, "f")
    fi = fs.open(f, os.O_RDWR, CTX)
    assert fs.read(fi.fh, 6, 100) == b"world"
    assert fs.write(fi.fh, 0, memoryview(b"HELLO")) == 5
    fs.fsync(fi.fh, False)
    fs.fsync(fi.fh, True)
    fs.flush(fi.fh)
    fs.release(fi.fh)
    with pytest.raises(OSError):
        os.fstat(fi.fh)                                # really closed
    assert (tree / "f").read_bytes() == b"HELLO world"
    fi = fs.open(f, os.O_WRONLY | os.O_APPEND, CTX)
    fs.write(fi.fh, 0, memoryview(b"!"))
    fs.release(fi.fh)
    assert (tree / "f").read_bytes() == b"HELLO world!"
    fi = fs.open(f, os.O_WRONLY | os.O_TRUNC, CTX)
    fs.release(fi.fh)
    assert (tree / "f").read_bytes() == b""
    with raises(errno.EISDIR):
        fs.open(look(fs, "d"), os.O_RDONLY, CTX)
    ro = fs.open(f, os.O_RDONLY, CTX)
    with raises(errno.EBADF):
        fs.write(ro.fh, 0, memoryview(b"x"))
    fs.release(ro.fh)


def test_unlink_while_open(fs: Passthrough, tree: Path) -> None:
    f = look(fs, "f")
    fi = fs.open(f, os.O_RDWR, CTX)
    fs.unlink(ROOT, b"f", CTX)
    assert fs.getattr(f, CTX).st_nlink == 0
    assert fs.read(fi.fh, 0, 5) == b"hello"
    fs.write(fi.fh, 0, memoryview(b"J"))
    assert fs.read(fi.fh, 0, 5) == b"Jello"
    fs.release(fi.fh)
    fs.forget([(f, 1)])


def test_tmpfile(fs: Passthrough, tree: Path) -> None:
    d = look(fs, "d")
    os.chmod(tree / "d", 0o777)
    fi, a = fs.tmpfile(d, stat.S_IFREG | 0o600, os.O_RDWR, USER)
    assert a.st_nlink == 0 and a.st_uid == 1000 and stat.S_IMODE(a.st_mode) == 0o600
    fs.write(fi.fh, 0, memoryview(b"tmp"))
    assert sorted(os.listdir(tree / "d")) == ["inner"]
    la = fs.link(a.st_ino, d, b"named", CTX)
    assert la.st_ino == a.st_ino and la.st_nlink == 1
    assert (tree / "d" / "named").read_bytes() == b"tmp"
    fs.release(fi.fh)


def test_fallocate_and_seek(fs: Passthrough, tree: Path) -> None:
    fi, _ = fs.create(ROOT, b"sparse", 0o100644, os.O_RDWR, CTX)
    fs.fallocate(fi.fh, 0, 0, 1 << 20, CTX)
    assert os.lstat(tree / "sparse").st_size == 1 << 20
    fs.fallocate(fi.fh, 1, 0, 2 << 20, CTX)           # KEEP_SIZE
    assert os.lstat(tree / "sparse").st_size == 1 << 20
    fs.write(fi.fh, 0, memoryview(b"x" * (1 << 20)))
    fs.fallocate(fi.fh, 1 | 2, 0, 512 << 10, CTX)     # PUNCH_HOLE | KEEP_SIZE
    assert fs.read(fi.fh, 0, 4) == bytes(4)
    assert fs.lseek(fi.fh, 0, SEEK_HOLE, CTX) == 0
    assert fs.lseek(fi.fh, 0, SEEK_DATA, CTX) == 512 << 10
    with raises(errno.ENXIO):
        fs.lseek(fi.fh, 1 << 20, SEEK_DATA, CTX)
    with raises(errno.EOPNOTSUPP):
        fs.fallocate(fi.fh, 2, 0, 10, CTX)            # punch without KEEP_SIZE
    fs.release(fi.fh)


def test_copy_file_range(fs: Passthrough, tree: Path) -> None:
    f = look(fs, "f")
    src = fs.open(f, os.O_RDONLY, CTX)
    dst, a = fs.create(ROOT, b"copy", 0o100644, os.O_RDWR, CTX)
    assert fs.copy_file_range(src.fh, 6, a.st_ino, dst.fh, 0, 1000, 0, CTX) == 5
    assert (tree / "copy").read_bytes() == b"world"
    with raises(errno.EINVAL):
        fs.copy_file_range(src.fh, 0, a.st_ino, dst.fh, 0, 10, 1, CTX)
    fs.release(src.fh)
    fs.release(dst.fh)


# -- locks -------------------------------------------------------------------------


def test_locks_are_left_to_the_kernel(fs: Passthrough) -> None:
    """Passthrough implements no lock handlers, so neither lock flag is negotiated
    and the kernel keeps POSIX, OFD and flock locks itself (the mount tests in
    test_posix.py and test_programs.py check the semantics)."""
    want = wanted_flags(fs, DEFAULT_WANT)
    assert DEFAULT_WANT & InitFlag.POSIX_LOCKS and DEFAULT_WANT & InitFlag.FLOCK_LOCKS
    assert not want & InitFlag.POSIX_LOCKS
    assert not want & InitFlag.FLOCK_LOCKS
    for name in ("getlk", "setlk", "flock"):
        assert getattr(Passthrough, name) is getattr(Operations, name)


# -- directories ---------------------------------------------------------------------


def test_readdir_plain(fs: Passthrough, tree: Path) -> None:
    for i in range(20):
        (tree / f"n{i:02d}").write_bytes(b"")
    fh = fs.opendir(ROOT, CTX)
    tok = ListingToken()
    fs.readdir(fh, 0, tok)
    names = [n for n, _, _ in tok.entries]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == sorted(os.fsencode(n) for n in os.listdir(tree))
    assert [c for _, _, c in tok.entries] == list(range(1, len(names) + 1))
    kinds = {n: stat.S_IFMT(a.st_mode) for n, a, _ in tok.entries}
    assert kinds[b"d"] == stat.S_IFDIR and kinds[b"etc"] == stat.S_IFLNK
    assert kinds[b"f"] == stat.S_IFREG
    inos = {n: a.st_ino for n, a, _ in tok.entries}
    assert inos[b"f"] == os.lstat(tree / "f").st_ino and inos[b"."] == ROOT
    assert len(fs._nodes) == 1                          # plain READDIR registers nothing
    # resume in the middle of the snapshot, even if the directory changed
    (tree / "late").write_bytes(b"")
    tok2 = ListingToken()
    fs.readdir(fh, 10, tok2)
    assert [n for n, _, _ in tok2.entries] == names[10:]
    fs.releasedir(fh)
    fs.fsyncdir(fs.opendir(ROOT, CTX), False)


def test_readdirplus_counts(fs: Passthrough, tree: Path) -> None:
    fh = fs.opendir(ROOT, CTX)
    tok = ListingToken(plus=True, capacity=4)
    fs.readdir(fh, 0, tok)
    assert len(tok.entries) == 4
    counted = [a.st_ino for n, a, _ in tok.entries if n not in (b".", b"..")]
    assert len(counted) == 2
    assert {i: fs._nodes[i].nlookup for i in counted} == {i: 1 for i in counted}
    assert set(fs._nodes) == {ROOT, *counted}          # the entry that did not fit: no node
    for n, a, _ in tok.entries[2:]:
        assert a.st_ino == os.lstat(tree / os.fsdecode(n)).st_ino
    rest = ListingToken(plus=True)
    fs.readdir(fh, tok.entries[-1][2], rest)
    assert len(tok.entries) + len(rest.entries) == 2 + len(os.listdir(tree))
    fs.releasedir(fh)
    fs.forget([(a.st_ino, 1) for _, a, _ in tok.entries[2:] + rest.entries])
    assert set(fs._nodes) == {ROOT}


# -- xattrs, statfs, access ------------------------------------------------------------


def test_xattrs(fs: Passthrough) -> None:
    f = look(fs, "f")
    with raises(errno.ENODATA):
        fs.getxattr(f, b"user.a", CTX)
    fs.setxattr(f, b"user.a", b"1", 1, CTX)
    with raises(errno.EEXIST):
        fs.setxattr(f, b"user.a", b"2", 1, CTX)
    with raises(errno.ENODATA):
        fs.setxattr(f, b"user.b", b"2", 2, CTX)
    fs.setxattr(f, b"user.a", b"3", 2, CTX)
    assert fs.getxattr(f, b"user.a", CTX) == b"3"
    assert b"user.a" in fs.listxattr(f, CTX)
    fs.removexattr(f, b"user.a", CTX)
    with raises(errno.ENODATA):
        fs.removexattr(f, b"user.a", CTX)
    with raises(errno.EPERM):
        fs.setxattr(look(fs, "etc"), b"user.a", b"1", 0, CTX)


def test_statfs_statx_access(fs: Passthrough, tree: Path) -> None:
    s = fs.statfs(CTX)
    ref = os.statvfs(tree)
    assert s.f_blocks == ref.f_blocks and s.f_namemax == ref.f_namemax
    f = look(fs, "f")
    assert fs.statx(f, None, 0, 0xFFF, CTX).st_birthtime_ns > 0
    os.chown(tree / "f", 1000, 1000)
    os.chmod(tree / "f", 0o640)
    assert fs.access(f, os.R_OK | os.W_OK, USER)
    assert not fs.access(f, os.X_OK, USER)
    assert fs.access(f, os.R_OK, RequestContext(uid=5, gid=1000))
    assert not fs.access(f, os.W_OK, RequestContext(uid=5, gid=1000))
    assert not fs.access(f, os.R_OK, RequestContext(uid=5, gid=5))
    assert fs.access(f, os.R_OK | os.W_OK, CTX) and not fs.access(f, os.X_OK, CTX)


# -- identity, kernel passthrough, lifecycle ----------------------------------------------


def test_handles_and_successor(fs: Passthrough, tree: Path) -> None:
    f = look(fs, "f")
    h = fs.handle_of(f)
    assert h is not None
    assert fs.inode_for_handle(h) == f
    succ = Passthrough(str(tree))
    try:
        assert succ.inode_for_handle(h) == f          # reopened by file handle
        assert succ.getattr(f, CTX).st_size == 11
        assert succ.lookup(ROOT, b"f", CTX).st_ino == f
        succ.forget([(f, 2)])
        assert f not in succ._nodes
        with raises(errno.ESTALE):
            succ.inode_for_handle(b"garbage")
        with raises(errno.ESTALE):
            succ.inode_for_handle(h[:-1])
        os.unlink(tree / "f")
        fs.forget([(f, 1)])
        with raises(errno.ESTALE):
            succ.inode_for_handle(h)                  # gone
    finally:
        succ.destroy()
    assert fs.handle_of(123456789) is None


def test_destroy_closes_everything(tree: Path) -> None:
    fds0 = open_fds()
    p = Passthrough(str(tree))
    f = p.lookup(ROOT, b"f", CTX).st_ino
    fh = p.open(f, os.O_RDWR, CTX).fh
    p.opendir(ROOT, CTX)
    assert fh in open_fds()
    assert len(open_fds() - fds0) >= 3
    p.destroy()
    assert open_fds() == fds0
