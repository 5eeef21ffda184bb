"""A reusable POSIX behaviour suite.

Each ``check_*`` function takes an empty directory (``root``), exercises one
POSIX behaviour inside it and returns an observable, *normalised* result:
plain JSON-like data with no inode numbers, pids or absolute times (times are
reported as relative orderings; values we set ourselves are reported as-is).
Errors are reported as errno names ("ENOENT").  Running the same check on two
filesystems and comparing results is a differential test (tests/test_posix.py).

This module is loaded by path (``posix`` is also the name of a builtin module).
A check returns :data:`UNSUPPORTED` when the behaviour is unsupported in a way
callers may skip (e.g. fallocate EOPNOTSUPP).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CHECKS", "UNSUPPORTED", "run_check"]

UNSUPPORTED = "UNSUPPORTED"
CHECKS: dict[str, Callable[[Path], Any]] = {}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SEEK_DATA = 3
SEEK_HOLE = 4
XATTR_CREATE = os.XATTR_CREATE
XATTR_REPLACE = os.XATTR_REPLACE
NOBODY = 65534
CHUNK = 64 * 1024
# struct flock on Linux x86_64/aarch64: short type, short whence, off_t start, off_t len, pid_t pid
_FLOCK = struct.Struct("hhqqi4x")


def check(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def run_check(name: str, root: Path) -> Any:
    """Run one check in a fresh subdirectory of ``root``; JSON round-trip the result."""
    d = Path(root) / name
    d.mkdir()
    os.chmod(d, 0o755)
    return json.loads(json.dumps(CHECKS[name](d)))


def ename(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def attempt(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args)``'s result (or "OK" for None), or the errno name it raised."""
    try:
        r = fn(*args, **kw)
    except OSError as exc:
        return ename(exc)
    return "OK" if r is None else r


def write_file(p: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def open_create(p: Path, flags: int = 0, mode: int = 0o644) -> None:
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | flags, mode))


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "reg"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "lnk"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "sock"), (stat.S_ISCHR, "chr"),
                       (stat.S_ISBLK, "blk")):
        if test(mode):
            return name
    return "?"


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def linkat_follow(src: str, dst: Path) -> None:
    """linkat(AT_FDCWD, src, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) (os.link uses link(2))."""
    if _libc.linkat(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                    AT_SYMLINK_FOLLOW) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def fallocate(fd: int, mode: int, off: int, length: int) -> None:
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def in_child(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a forked child; return its JSON result (or raise its error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            out = {"ok": body()}
        except BaseException as exc:
            out = {"error": repr(exc)}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    data = json.loads(b"".join(chunks) or b'{"error": "child died"}')
    if "error" in data:
        raise RuntimeError(f"child failed: {data['error']}")
    return data["ok"]


# --------------------------------------------------------------------------
# files


@check
def check_create_read_write_append(root: Path) -> Any:
    p = root / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    n1 = os.write(fd, b"hello ")
    n2 = os.pwrite(fd, b"WORLD", 3)
    os.lseek(fd, 0, os.SEEK_SET)
    first = os.read(fd, 100)
    os.close(fd)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"+tail")
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    os.close(fd)
    big = bytes(range(256)) * 4096 + b"x"  # 1 MiB + 1, several max_write chunks
    write_file(root / "big", big)
    fd = os.open(root / "gap", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"end", 10000)
    gap = os.pread(fd, 10003, 0)
    os.close(fd)
    return {"n": [n1, n2], "first": first.decode(), "after_append": read_file(p).decode(),
            "append_pos": pos, "big_ok": read_file(root / "big") == big,
            "big_size": os.stat(root / "big").st_size,
            "gap": [len(gap), gap[:10] == b"\0" * 10, gap[10000:].decode()],
            "read_past_eof": os.stat(root / "gap").st_size,
            "kind": kind(os.stat(p).st_mode), "perm": oct(stat.S_IMODE(os.stat(p).st_mode))}


@check
def check_o_excl(root: Path) -> Any:
    p = root / "f"
    first = attempt(open_create, p, os.O_EXCL)
    again = attempt(open_create, p, os.O_EXCL)
    os.symlink("dangling-target", root / "dangling")
    via_symlink = attempt(open_create, root / "dangling", os.O_EXCL)
    no_excl = attempt(open_create, p)
    return {"first": first, "again": again, "via_dangling_symlink": via_symlink,
            "target_created": (root / "dangling-target").exists(), "no_excl": no_excl,
            "missing_no_creat": attempt(os.open, root / "missing", os.O_RDONLY)}


@check
def check_o_trunc(root: Path) -> Any:
    p = root / "f"
    write_file(p, b"0123456789")
    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
    size_after_open = os.fstat(fd).st_size
    os.write(fd, b"ab")
    os.close(fd)
    content = read_file(p).decode()
    ro_trunc = attempt(lambda: os.close(os.open(p, os.O_RDONLY | os.O_TRUNC)))
    return {"size_after_open": size_after_open, "content": content,
            "rdonly_trunc": ro_trunc, "size_after_rdonly_trunc": os.stat(p).st_size}


@check
def check_truncate_grow_shrink(root: Path) -> Any:
    p = root / "f"
    write_file(p, b"abcdefghij" * 10)
    os.truncate(p, 5)
    s1 = read_file(p)
    os.truncate(p, 50)  # must not resurrect the old bytes
    s2 = read_file(p)
    fd = os.open(p, os.O_RDWR)
    os.ftruncate(fd, 3 * CHUNK + 7)
    size3 = os.fstat(fd).st_size
    os.pwrite(fd, b"Z", 3 * CHUNK + 6)
    os.ftruncate(fd, 2)
    os.ftruncate(fd, 3 * CHUNK + 7)
    tail = os.pread(fd, 10, 3 * CHUNK - 3)
    os.close(fd)
    return {"shrunk": s1.decode(), "grown": [len(s2), s2[:5].decode(), s2[5:] == b"\0" * 45],
            "size3": size3, "regrown_tail_zero": tail == b"\0" * 10,
            "negative": attempt(os.truncate, p, -1),
            "dir": attempt(os.truncate, root, 0)}


@check
def check_sparse_seek(root: Path) -> Any:
    p = root / "sparse"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"A" * CHUNK, 0)
    os.pwrite(fd, b"B" * CHUNK, 16 * CHUNK)
    os.ftruncate(fd, 32 * CHUNK)
    size = os.fstat(fd).st_size
    out: dict[str, Any] = {"size": size}
    for label, off, whence in (("data0", 0, SEEK_DATA), ("hole0", 0, SEEK_HOLE),
                               ("data_mid", CHUNK, SEEK_DATA), ("hole_mid", CHUNK, SEEK_HOLE),
                               ("data_b", 16 * CHUNK, SEEK_DATA),
                               ("hole_b", 16 * CHUNK, SEEK_HOLE),
                               ("data_after", 17 * CHUNK, SEEK_DATA),
                               ("hole_tail", 20 * CHUNK, SEEK_HOLE),
                               ("data_eof", size, SEEK_DATA), ("hole_eof", size, SEEK_HOLE),
                               ("data_neg", -1, SEEK_DATA)):
        out[label] = attempt(os.lseek, fd, off, whence)
    hole = os.pread(fd, 4096, 4 * CHUNK)
    st = os.fstat(fd)
    os.close(fd)
    out["hole_reads_zero"] = hole == b"\0" * 4096
    out["blocks_less_than_size"] = st.st_blocks * 512 < size
    out["blocks_cover_data"] = st.st_blocks * 512 >= 2 * CHUNK
    return out


@check
def check_fallocate_punch_hole(root: Path) -> Any:
    p = root / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        first = attempt(fallocate, fd, 0, 0, 4 * CHUNK)
        if first == "EOPNOTSUPP":
            return UNSUPPORTED
        size1 = os.fstat(fd).st_size
        zeros = os.pread(fd, 4 * CHUNK, 0) == b"\0" * (4 * CHUNK)
        keep = attempt(fallocate, fd, FALLOC_FL_KEEP_SIZE, 4 * CHUNK, 4 * CHUNK)
        size2 = os.fstat(fd).st_size
        os.pwrite(fd, b"X" * (4 * CHUNK), 0)
        punch = attempt(fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, CHUNK, CHUNK)
        data = os.pread(fd, 4 * CHUNK, 0)
        size3 = os.fstat(fd).st_size
        punch_nokeep = attempt(fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 10)
        hole_at = attempt(os.lseek, fd, 0, SEEK_HOLE)
        grow = attempt(fallocate, fd, 0, 6 * CHUNK, 10)
        size4 = os.fstat(fd).st_size
        bad = attempt(fallocate, fd, 0, 0, 0)
    finally:
        os.close(fd)
    rd = os.open(p, os.O_RDONLY)
    try:
        ebadf = attempt(fallocate, rd, 0, 0, 10)
    finally:
        os.close(rd)
    return {"first": first, "size1": size1, "zeros": zeros, "keep_size": keep, "size2": size2,
            "punch": punch, "punched": [data[:CHUNK] == b"X" * CHUNK,
                                        data[CHUNK:2 * CHUNK] == b"\0" * CHUNK,
                                        data[2 * CHUNK:] == b"X" * (2 * CHUNK)],
            "size3": size3, "punch_without_keep_size": punch_nokeep, "hole_at": hole_at,
            "grow": grow, "size4": size4, "zero_len": bad, "read_only_fd": ebadf}


@check
def check_hard_links(root: Path) -> Any:
    a, b = root / "a", root / "b"
    write_file(a, b"one")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    write_file(b, b"two")
    via_a = read_file(a)
    os.mkdir(root / "d")
    out = {"nlink": [sa.st_nlink, sb.st_nlink], "same_ino": sa.st_ino == sb.st_ino,
           "via_a": via_a.decode(), "link_exists": attempt(os.link, a, b),
           "link_dir": attempt(os.link, root / "d", root / "d2"),
           "link_missing": attempt(os.link, root / "nope", root / "x")}
    os.unlink(a)
    out["after_unlink"] = [os.stat(b).st_nlink, read_file(b).decode(), a.exists()]
    os.link(b, root / "d" / "c")
    out["cross_dir_nlink"] = os.stat(root / "d" / "c").st_nlink
    return out


@check
def check_symlinks(root: Path) -> Any:
    write_file(root / "target", b"data")
    os.symlink("target", root / "l")
    os.symlink("no/such/thing", root / "dang")
    os.symlink("l", root / "l2")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    lst = os.lstat(root / "l")
    return {"readlink": os.readlink(root / "l"), "lstat_kind": kind(lst.st_mode),
            "lstat_size": lst.st_size, "stat_kind": kind(os.stat(root / "l").st_mode),
            "read_via": read_file(root / "l2").decode(),
            "dangling_stat": attempt(os.stat, root / "dang"),
            "dangling_lstat_size": os.lstat(root / "dang").st_size,
            "loop": attempt(os.stat, root / "loop1"),
            "nofollow": attempt(os.open, root / "l", os.O_RDONLY | os.O_NOFOLLOW),
            "readlink_file": attempt(os.readlink, root / "target"),
            "exists": attempt(os.symlink, "x", root / "l"),
            "long_target": attempt(os.symlink, "x" * 4096, root / "toolong"),
            "long_ok": attempt(_symlink_len, "y" * 4000, root / "ok4000")}


def _symlink_len(target: str, p: Path) -> int:
    os.symlink(target, p)
    return len(os.readlink(p))


# --------------------------------------------------------------------------
# directories


@check
def check_mkdir_rmdir(root: Path) -> Any:
    d = root / "d"
    out = {"mkdir": attempt(os.mkdir, d, 0o755), "again": attempt(os.mkdir, d),
           "mode": oct(stat.S_IMODE(os.stat(d).st_mode))}
    write_file(d / "f", b"")
    out["rmdir_nonempty"] = attempt(os.rmdir, d)
    out["rmdir_file"] = attempt(os.rmdir, d / "f")
    out["mkdir_under_file"] = attempt(os.mkdir, d / "f" / "x")
    out["mkdir_missing_parent"] = attempt(os.mkdir, root / "no" / "x")
    os.unlink(d / "f")
    out["rmdir"] = attempt(os.rmdir, d)
    out["rmdir_missing"] = attempt(os.rmdir, d)
    out["rmdir_dot"] = attempt(os.rmdir, os.path.join(root, "."))
    out["listing"] = sorted(os.listdir(root))
    return out


@check
def check_unlink(root: Path) -> Any:
    os.mkdir(root / "d")
    write_file(root / "f", b"x")
    return {"unlink_dir": attempt(os.unlink, root / "d"),
            "unlink_file": attempt(os.unlink, root / "f"),
            "unlink_missing": attempt(os.unlink, root / "f"),
            "unlink_through_file": attempt(os.unlink, root / "d" / "x" / "y"),
            "listing": sorted(os.listdir(root))}


@check
def check_rename(root: Path) -> Any:
    write_file(root / "a", b"A")
    write_file(root / "b", b"B")
    out: dict[str, Any] = {"over_file": attempt(os.rename, root / "a", root / "b")}
    out["after"] = [read_file(root / "b").decode(), (root / "a").exists()]
    os.mkdir(root / "d1")
    write_file(root / "d1" / "inner", b"i")
    os.mkdir(root / "empty")
    out["dir_over_empty_dir"] = attempt(os.rename, root / "d1", root / "empty")
    out["moved_inner"] = read_file(root / "empty" / "inner").decode()
    os.mkdir(root / "full")
    write_file(root / "full" / "x", b"")
    out["dir_over_nonempty"] = attempt(os.rename, root / "empty", root / "full")
    out["dir_over_file"] = attempt(os.rename, root / "empty", root / "b")
    out["file_over_dir"] = attempt(os.rename, root / "b", root / "full")
    out["dir_into_itself"] = attempt(os.rename, root / "full", root / "full" / "sub")
    out["missing"] = attempt(os.rename, root / "nope", root / "x")
    out["same"] = attempt(os.rename, root / "b", root / "b")
    os.link(root / "b", root / "b2")
    out["hardlink_onto_self"] = attempt(os.rename, root / "b", root / "b2")
    out["both_exist"] = [(root / "b").exists(), (root / "b2").exists()]
    out["cross_dir"] = attempt(os.rename, root / "b2", root / "full" / "moved")
    out["listing"] = sorted(os.listdir(root))
    out["full_listing"] = sorted(os.listdir(root / "full"))
    out["nlinks"] = {n: os.stat(root / n).st_nlink for n in ("empty", "full")}
    out["root_nlink"] = os.stat(root).st_nlink
    return out


@check
def check_renameat2(root: Path) -> Any:
    write_file(root / "a", b"A")
    write_file(root / "b", b"B")
    os.mkdir(root / "d")
    write_file(root / "d" / "in", b"")
    out = {"noreplace_existing": attempt(renameat2, root / "a", root / "b", RENAME_NOREPLACE),
           "noreplace_new": attempt(renameat2, root / "a", root / "c", RENAME_NOREPLACE),
           "exchange": attempt(renameat2, root / "c", root / "b", RENAME_EXCHANGE)}
    out["after_exchange"] = [read_file(root / "b").decode(), read_file(root / "c").decode()]
    out["exchange_missing"] = attempt(renameat2, root / "c", root / "zz", RENAME_EXCHANGE)
    out["exchange_file_dir"] = attempt(renameat2, root / "c", root / "d", RENAME_EXCHANGE)
    out["kinds"] = [kind(os.lstat(root / "c").st_mode), kind(os.lstat(root / "d").st_mode)]
    out["both_flags"] = attempt(renameat2, root / "b", root / "c",
                                RENAME_NOREPLACE | RENAME_EXCHANGE)
    out["listing"] = sorted(os.listdir(root))
    return out


@check
def check_dir_nlink(root: Path) -> Any:
    d = root / "d"
    os.mkdir(d)
    seq = [os.stat(d).st_nlink]
    os.mkdir(d / "a")
    os.mkdir(d / "b")
    write_file(d / "f", b"")
    seq.append(os.stat(d).st_nlink)
    os.rmdir(d / "a")
    seq.append(os.stat(d).st_nlink)
    os.mkdir(root / "other")
    os.rename(d / "b", root / "other" / "b")
    seq.append(os.stat(d).st_nlink)
    seq.append(os.stat(root / "other").st_nlink)
    return {"nlinks": seq, "file_nlink": os.stat(d / "f").st_nlink}


@check
def check_readdir_while_deleting(root: Path) -> Any:
    pad = "p" * 40
    stable = {f"stable-{i:04d}-{pad}" for i in range(600)}
    victims = {f"victim-{i:04d}-{pad}" for i in range(600)}
    for n in sorted(stable | victims):
        os.close(os.open(root / n, os.O_CREAT | os.O_WRONLY, 0o644))
    seen: list[str] = []
    deleted = False
    with os.scandir(root) as it:
        for entry in it:
            seen.append(entry.name)
            if not deleted:
                for v in victims:
                    os.unlink(root / v)
                deleted = True
    counts: dict[str, int] = {}
    for n in seen:
        counts[n] = counts.get(n, 0) + 1
    listing = os.listdir(root)
    return {"duplicates": sorted(n for n, c in counts.items() if c > 1),
            "missing_stable": sorted(stable - set(seen)),
            "unknown": sorted(set(seen) - stable - victims),
            "listing_after": sorted(listing) == sorted(stable),
            "dot_entries_hidden": "." not in seen and ".." not in seen}


@check
def check_readdir_types(root: Path) -> Any:
    write_file(root / "f", b"")
    os.mkdir(root / "d")
    os.symlink("f", root / "l")
    os.mkfifo(root / "p")
    out = {}
    with os.scandir(root) as it:
        for e in it:
            out[e.name] = [e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False),
                           e.is_symlink()]
    return out


@check
def check_enametoolong(root: Path) -> Any:
    ok = "a" * 255
    long = "b" * 256
    return {"create_255": attempt(open_create, root / ok),
            "create_256": attempt(open_create, root / long),
            "mkdir_256": attempt(os.mkdir, root / long),
            "stat_256": attempt(os.stat, root / long),
            "symlink_256": attempt(os.symlink, "x", root / long),
            "rename_to_256": attempt(os.rename, root / ok, root / long),
            "link_to_256": attempt(os.link, root / ok, root / long),
            "listing": [len(n) for n in os.listdir(root)]}


# --------------------------------------------------------------------------
# metadata


@check
def check_xattrs(root: Path) -> Any:
    p = root / "f"
    write_file(p, b"")
    os.symlink("f", root / "l")
    out: dict[str, Any] = {
        "set": attempt(os.setxattr, p, "user.a", b"1"),
        "set_b": attempt(os.setxattr, p, "user.b", b""),
        "get": attempt(lambda: os.getxattr(p, "user.a").decode()),
        "get_empty": attempt(lambda: os.getxattr(p, "user.b").decode()),
        "list": attempt(lambda: sorted(os.listxattr(p))),
        "create_existing": attempt(os.setxattr, p, "user.a", b"2", XATTR_CREATE),
        "replace_missing": attempt(os.setxattr, p, "user.zz", b"2", XATTR_REPLACE),
        "replace": attempt(os.setxattr, p, "user.a", b"3", XATTR_REPLACE),
        "create_new": attempt(os.setxattr, p, "user.c", b"4", XATTR_CREATE),
        "get_missing": attempt(os.getxattr, p, "user.nope"),
        "remove": attempt(os.removexattr, p, "user.a"),
        "remove_missing": attempt(os.removexattr, p, "user.a"),
        "get_removed": attempt(os.getxattr, p, "user.a"),
        "big": attempt(_xattr_roundtrip_len, p, "user.big", b"v" * 4000),
        "bad_namespace": attempt(os.setxattr, p, "bogus.x", b"1"),
        "symlink_user": attempt(os.setxattr, root / "l", "user.x", b"1",
                                follow_symlinks=False),
        "name_too_long": attempt(os.setxattr, p, "user." + "n" * 256, b"1"),
    }
    out["final_list"] = sorted(os.listxattr(p))
    out["final_values"] = {n: os.getxattr(p, n).decode() for n in sorted(os.listxattr(p))}
    os.mkdir(root / "d")
    out["dir_set"] = attempt(os.setxattr, root / "d", "user.d", b"dv")
    out["dir_get"] = attempt(lambda: os.getxattr(root / "d", "user.d").decode())
    return out


def _xattr_roundtrip_len(p: Path, name: str, value: bytes) -> int:
    os.setxattr(p, name, value)
    return len(os.getxattr(p, name))


@check
def check_chmod_chown(root: Path) -> Any:
    p = root / "f"
    write_file(p, b"x")
    out: dict[str, Any] = {}
    for m in (0o640, 0o4755, 0o2755, 0o1777, 0o000):
        os.chmod(p, m)
        out[oct(m)] = oct(stat.S_IMODE(os.stat(p).st_mode))
    os.chmod(p, 0o6755)
    os.chown(p, NOBODY, NOBODY)
    st = os.stat(p)
    out["after_chown"] = [st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))]
    os.chown(p, -1, 0)
    out["chgrp_only"] = [os.stat(p).st_uid, os.stat(p).st_gid]
    os.mkdir(root / "sg", 0o755)
    os.chown(root / "sg", 0, NOBODY)
    os.chmod(root / "sg", 0o2775)
    write_file(root / "sg" / "child", b"")
    os.mkdir(root / "sg" / "subdir")
    out["setgid_inherit"] = [os.stat(root / "sg" / "child").st_gid,
                             oct(stat.S_IMODE(os.stat(root / "sg" / "subdir").st_mode)),
                             os.stat(root / "sg" / "subdir").st_gid]
    os.symlink("f", root / "l")
    os.chown(root / "l", NOBODY, NOBODY, follow_symlinks=False)
    out["lchown"] = [os.lstat(root / "l").st_uid, os.stat(root / "l").st_uid]
    out["chmod_missing"] = attempt(os.chmod, root / "nope", 0o644)
    return out


@check
def check_times(root: Path) -> Any:
    p = root / "f"
    write_file(p, b"x")
    t_a, t_m = 1_000_000_000_123_456_789, 1_100_000_000_987_654_321
    os.utime(p, ns=(t_a, t_m))
    st0 = os.stat(p)
    out: dict[str, Any] = {"utime_exact": [st0.st_atime_ns == t_a, st0.st_mtime_ns == t_m],
                           "ctime_after_set_mtime": st0.st_ctime_ns > t_m}
    time.sleep(0.02)
    fd = os.open(p, os.O_WRONLY)
    os.write(fd, b"y")
    os.close(fd)
    st1 = os.stat(p)
    out["write"] = {"mtime_changed": st1.st_mtime_ns > st0.st_mtime_ns,
                    "ctime_changed": st1.st_ctime_ns > st0.st_ctime_ns,
                    "atime_unchanged": st1.st_atime_ns == st0.st_atime_ns,
                    "ctime_ge_mtime": st1.st_ctime_ns >= st1.st_mtime_ns}
    time.sleep(0.02)
    os.chmod(p, 0o600)
    st2 = os.stat(p)
    out["chmod"] = {"ctime_changed": st2.st_ctime_ns > st1.st_ctime_ns,
                    "mtime_unchanged": st2.st_mtime_ns == st1.st_mtime_ns}
    time.sleep(0.02)
    os.utime(p)  # now
    st3 = os.stat(p)
    out["utime_now"] = {"mtime_advanced": st3.st_mtime_ns > st2.st_mtime_ns,
                        "atime_advanced": st3.st_atime_ns > st2.st_atime_ns,
                        "atime_eq_mtime": st3.st_atime_ns == st3.st_mtime_ns}
    d = root / "d"
    os.mkdir(d)
    os.utime(d, ns=(t_a, t_m))
    sd0 = os.stat(d)
    time.sleep(0.02)
    write_file(d / "new", b"")
    sd1 = os.stat(d)
    out["dir_entry_added"] = {"mtime_changed": sd1.st_mtime_ns > sd0.st_mtime_ns,
                              "ctime_changed": sd1.st_ctime_ns > sd0.st_ctime_ns}
    os.utime(d, ns=(t_a, t_m))
    time.sleep(0.02)
    os.truncate(d / "new", 10)
    out["truncate_changes_file_mtime"] = os.stat(d / "new").st_mtime_ns > sd1.st_mtime_ns
    out["truncate_leaves_dir"] = os.stat(d).st_mtime_ns == t_m
    os.utime(p, ns=(t_a, t_m))
    time.sleep(0.02)
    os.link(p, root / "p2")
    st4 = os.stat(p)
    out["link_changes_ctime_only"] = [st4.st_mtime_ns == t_m, st4.st_ctime_ns > st3.st_ctime_ns]
    return out


@check
def check_mknod_fifo(root: Path) -> Any:
    p = root / "fifo"
    os.mkfifo(p, 0o644)
    st = os.stat(p)
    rfd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
    os.write(wfd, b"through the pipe")
    data = os.read(rfd, 100)
    os.close(wfd)
    os.close(rfd)
    os.mknod(root / "node", 0o600 | stat.S_IFIFO)
    return {"kind": kind(st.st_mode), "size": st.st_size, "data": data.decode(),
            "mknod_kind": kind(os.stat(root / "node").st_mode),
            "exists": attempt(os.mkfifo, p),
            "mknod_reg": attempt(_mknod_kind, root / "reg", 0o600 | stat.S_IFREG)}


def _mknod_kind(p: Path, mode: int) -> str:
    os.mknod(p, mode)
    return kind(os.stat(p).st_mode)


@check
def check_unlinked_open_file(root: Path) -> Any:
    p = root / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"still here")
    os.unlink(p)
    st = os.fstat(fd)
    os.pwrite(fd, b"!", 10)
    data = os.pread(fd, 100, 0)
    os.ftruncate(fd, 5)
    size = os.fstat(fd).st_size
    write_file(p, b"new file")  # same name, different file
    other = read_file(p)
    os.close(fd)
    d = root / "d"
    os.mkdir(d)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(d)
    in_removed = attempt(lambda: os.close(os.open(f"/proc/self/fd/{dfd}/x",
                                                  os.O_CREAT | os.O_WRONLY, 0o644)))
    dst = os.fstat(dfd)
    os.close(dfd)
    return {"nlink": st.st_nlink, "data": data.decode(), "size_after_ftruncate": size,
            "other": other.decode(), "listing": sorted(os.listdir(root)),
            "create_in_removed_dir": in_removed, "removed_dir_nlink": dst.st_nlink}


@check
def check_o_tmpfile(root: Path) -> Any:
    try:
        fd = os.open(root, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return UNSUPPORTED
        raise
    try:
        os.write(fd, b"anonymous")
        st = os.fstat(fd)
        listing_before = sorted(os.listdir(root))
        linked = attempt(linkat_follow, f"/proc/self/fd/{fd}", root / "named")
        st2 = os.fstat(fd)
    finally:
        os.close(fd)
    fd = os.open(root, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    try:
        excl_link = attempt(linkat_follow, f"/proc/self/fd/{fd}", root / "never")
    finally:
        os.close(fd)
    return {"nlink": st.st_nlink, "kind": kind(st.st_mode),
            "perm": oct(stat.S_IMODE(st.st_mode)), "listing_before": listing_before,
            "linkat": linked, "nlink_after": st2.st_nlink,
            "content": read_file(root / "named").decode(), "excl_link": excl_link,
            "listing": sorted(os.listdir(root)),
            "on_file": attempt(os.open, root / "named", os.O_TMPFILE | os.O_RDWR, 0o600)}


def _flock_struct(type_: int, start: int, length: int) -> bytes:
    return _FLOCK.pack(type_, os.SEEK_SET, start, length, 0)


@check
def check_locks(root: Path) -> Any:
    p = root / "f"
    write_file(p, b"x" * 1000)
    fd = os.open(p, os.O_RDWR)
    parent = os.getpid()
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 100))
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_RDLCK, 200, 100))
    fcntl.flock(fd, fcntl.LOCK_EX)

    def child() -> Any:
        cfd = os.open(p, os.O_RDWR)
        got = fcntl.fcntl(cfd, fcntl.F_GETLK, _flock_struct(fcntl.F_WRLCK, 50, 10))
        t, _w, start, length, pid = _FLOCK.unpack(got)
        got2 = fcntl.fcntl(cfd, fcntl.F_GETLK, _flock_struct(fcntl.F_RDLCK, 200, 10))
        free = _FLOCK.unpack(got2)[0]
        res = {"getlk": [t == fcntl.F_WRLCK, start, length, pid == parent],
               "getlk_shared_ok": free == fcntl.F_UNLCK,
               "setlk_conflict": attempt(fcntl.fcntl, cfd, fcntl.F_SETLK,
                                         _flock_struct(fcntl.F_WRLCK, 10, 10)),
               "setlk_read_on_read": attempt(lambda: fcntl.fcntl(
                   cfd, fcntl.F_SETLK, _flock_struct(fcntl.F_RDLCK, 250, 10)) and "OK"),
               "setlk_free_range": attempt(lambda: fcntl.fcntl(
                   cfd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 500, 10)) and "OK"),
               "flock_ex_nb": attempt(fcntl.flock, cfd, fcntl.LOCK_EX | fcntl.LOCK_NB),
               "flock_sh_nb": attempt(fcntl.flock, cfd, fcntl.LOCK_SH | fcntl.LOCK_NB)}
        os.close(cfd)
        return res

    before = in_child(child)
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_UNLCK, 0, 0))
    fcntl.flock(fd, fcntl.LOCK_UN)

    def child2() -> Any:
        cfd = os.open(p, os.O_RDWR)
        res = {"setlk_after_unlock": attempt(lambda: fcntl.fcntl(
                   cfd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 0)) and "OK"),
               "flock_after_unlock": attempt(fcntl.flock, cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)}
        os.close(cfd)
        return res

    after = in_child(child2)
    own_upgrade = attempt(lambda: fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(
        fcntl.F_WRLCK, 0, 0)) and "OK")
    os.close(fd)
    return {"before": before, "after": after, "own_after_child_exit": own_upgrade}


@check
def check_locks_go_with_any_close(root: Path) -> Any:
    """POSIX: closing any descriptor of a file drops the process's record locks on it
    (a dup, a second open, a child's exit), not only the last close."""
    p = root / "f"
    write_file(p, b"x" * 100)

    def other_sees(start: int) -> Any:
        def child() -> Any:
            cfd = os.open(p, os.O_RDWR)
            got = _FLOCK.unpack(fcntl.fcntl(cfd, fcntl.F_GETLK,
                                            _flock_struct(fcntl.F_WRLCK, start, 1)))[0]
            os.close(cfd)
            return got != fcntl.F_UNLCK
        return in_child(child)

    fd = os.open(p, os.O_RDWR)
    out: dict[str, Any] = {}
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
    out["held"] = other_sees(5)
    os.close(os.dup(fd))
    out["after_dup_closed"] = other_sees(5)
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
    os.close(os.open(p, os.O_RDONLY))
    out["after_second_open_closed"] = other_sees(5)

    def child_locks() -> Any:
        cfd = os.open(p, os.O_RDWR)
        fcntl.fcntl(cfd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 50, 10))
        return "locked"

    out["child"] = in_child(child_locks)
    out["after_child_exit"] = other_sees(55)
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
    os.close(os.dup(fd))
    out["relock_after_dup_close"] = in_child(lambda: attempt(lambda: fcntl.fcntl(
        os.open(p, os.O_RDWR), fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10)) and "OK"))
    os.close(fd)
    return out


def _wait_in_setlk(pid: int, timeout: float = 20.0) -> bool:
    """Whether ``pid`` comes to sleep inside fcntl(F_SETLKW) (local or FUSE) in time."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stack") as f:
                if "fcntl_setlk" in f.read():
                    return True
        except OSError:
            return False
        time.sleep(0.01)
    return False


@check
def check_lock_waits(root: Path) -> Any:
    """F_SETLKW: a waiter sleeps until the holder unlocks; a wait that would close a
    cycle is EDEADLK at once (Linux's rule for local files)."""
    p = root / "f"
    write_file(p, b"x" * 100)
    fd = os.open(p, os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 20, 10))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            cfd = os.open(p, os.O_RDWR)
            fcntl.fcntl(cfd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
            os.write(w, b"h")
            got = attempt(fcntl.fcntl, cfd, fcntl.F_SETLKW,
                          _flock_struct(fcntl.F_WRLCK, 20, 10))
            os.write(w, b"OK" if isinstance(got, bytes) else str(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    out: dict[str, Any] = {"holding": os.read(r, 1) == b"h"}
    out["waiting"] = _wait_in_setlk(pid)
    out["deadlock"] = attempt(fcntl.fcntl, fd, fcntl.F_SETLKW,
                              _flock_struct(fcntl.F_WRLCK, 0, 10))
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_UNLCK, 20, 10))
    out["waiter"] = os.read(r, 16).decode()
    os.close(r)
    os.waitpid(pid, 0)
    out["free_after_child_exit"] = attempt(lambda: fcntl.fcntl(
        fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 30)) and "OK")
    os.close(fd)
    return out


@check
def check_copy_file_range(root: Path) -> Any:
    src, dst = root / "src", root / "dst"
    payload = bytes(range(256)) * 1024  # 256 KiB
    write_file(src, payload)
    write_file(dst, b"D" * 10)
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR)
    try:
        copied = 0
        while copied < 100_000:
            n = os.copy_file_range(s, d, 100_000 - copied, 1000 + copied, 5 + copied)
            if n == 0:
                break
            copied += n
        at_eof = os.copy_file_range(s, d, 100, len(payload), 0)
        pos = os.lseek(s, 0, os.SEEK_CUR)
        rd_only = attempt(os.copy_file_range, d, s, 10, 0, 0)
    finally:
        os.close(s)
        os.close(d)
    data = read_file(dst)
    return {"copied": copied, "at_eof": at_eof, "src_pos_unchanged": pos,
            "size": len(data), "head": data[:5].decode(),
            "body_ok": data[5:] == payload[1000:101000], "to_read_only": rd_only}


@check
def check_statvfs(root: Path) -> Any:
    before = os.statvfs(root)
    write_file(root / "big", os.urandom(4 << 20))
    os.sync()
    after = os.statvfs(root)
    fd = os.open(root / "big", os.O_RDONLY)
    fst = os.fstatvfs(fd)
    os.close(fd)
    return {"namemax": before.f_namemax, "bsize_pos": before.f_bsize > 0,
            "frsize_pos": before.f_frsize > 0,
            "order": before.f_blocks >= before.f_bfree >= before.f_bavail > 0,
            "files_order": before.f_files >= before.f_ffree,
            "bfree_dropped": after.f_bfree < before.f_bfree,
            "fstatvfs_same_fs": fst.f_blocks == after.f_blocks}


@check
def check_permissions_nonroot(root: Path) -> Any:
    """uid 65534 (no groups) against a 0700 dir, a 0755 dir and a sticky 1777 dir."""
    priv, pub, drop = root / "priv", root / "pub", root / "drop"
    os.mkdir(priv)
    os.chmod(priv, 0o700)
    write_file(priv / "secret", b"s", 0o644)
    os.mkdir(pub)
    os.chmod(pub, 0o755)
    write_file(pub / "readme", b"public")
    os.chmod(pub / "readme", 0o644)
    os.mkdir(drop)
    os.chmod(drop, 0o1777)
    write_file(drop / "roots", b"r")
    os.chmod(drop / "roots", 0o666)

    def child() -> Any:
        os.chdir(root)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        res = {
            "list_priv": attempt(lambda: sorted(os.listdir("priv"))),
            "stat_secret": attempt(lambda: os.stat("priv/secret") and "OK"),
            "open_secret": attempt(lambda: read_file(Path("priv/secret")).decode()),
            "read_pub": attempt(lambda: read_file(Path("pub/readme")).decode()),
            "write_pub": attempt(os.open, "pub/readme", os.O_WRONLY),
            "create_pub": attempt(os.open, "pub/new", os.O_WRONLY | os.O_CREAT, 0o644),
            "mkdir_pub": attempt(os.mkdir, "pub/sub"),
            "unlink_pub": attempt(os.unlink, "pub/readme"),
            "chmod_root_file": attempt(os.chmod, "pub/readme", 0o777),
            "chown_root_file": attempt(os.chown, "pub/readme", NOBODY, NOBODY),
            "utime_root_file": attempt(os.utime, "pub/readme"),
            "setxattr_root_file": attempt(os.setxattr, "pub/readme", "user.x", b"1"),
            "access_w": os.access("pub/readme", os.W_OK),
            "access_r": os.access("pub/readme", os.R_OK),
            "create_drop": attempt(lambda: open_create(Path("drop/mine"), 0, 0o600)),
            "write_roots_666": attempt(lambda: write_file(Path("drop/roots"), b"w")),
            "unlink_sticky_other": attempt(os.unlink, "drop/roots"),
            "rename_sticky_other": attempt(os.rename, "drop/roots", "drop/x"),
            "chmod_own": attempt(os.chmod, "drop/mine", 0o640),
            "chown_own_to_root": attempt(os.chown, "drop/mine", 0, 0),
            "utime_own": attempt(os.utime, "drop/mine", (1, 1)),
        }
        return res

    res = in_child(child)
    st = os.stat(drop / "mine")
    res["mine_owner"] = [st.st_uid, st.st_gid, oct(stat.S_IMODE(st.st_mode))]
    return res


def _acl_xattr(mode: int) -> bytes:
    """A minimal POSIX ACL (user::, group::, other::) in the xattr wire format."""
    return struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
        for tag, perm in ((0x01, (mode >> 6) & 7), (0x04, (mode >> 3) & 7), (0x20, mode & 7)))


@check
def check_posix_acl_minimal(root: Path) -> Any:
    """setxattr(system.posix_acl_access) with a mode-equivalent ACL, as ``cp -a`` does.

    A filesystem must either apply it to the mode bits or refuse it (EOPNOTSUPP,
    then cp falls back to chmod); accepting it silently leaves the wrong mode.
    """
    p = root / "f"
    write_file(p, b"")
    os.chmod(p, 0o600)
    res = attempt(os.setxattr, p, "system.posix_acl_access", _acl_xattr(0o654))
    if res == "EOPNOTSUPP":
        return UNSUPPORTED
    return {"set": res, "mode": oct(stat.S_IMODE(os.stat(p).st_mode))}


def _as_nobody(groups: list[int] | None = None) -> None:
    """In a forked child: become uid/gid 65534 with ``groups`` (none by default)."""
    os.setgroups(groups or [])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


#: set-ID modes tried by the suid checks: suid, sgid with group-exec, both, sgid
#: without group-exec (a mandatory-locking mark that writes leave alone)
_SETID_MODES = (0o4777, 0o2777, 0o6777, 0o2767)


def _setid_files(root: Path, prefix: str) -> list[str]:
    names = []
    for m in _SETID_MODES:
        name = f"{prefix}{m:o}"
        write_file(root / name, b"data", 0o600)
        os.chmod(root / name, m)
        names.append(name)
    return names


def _modes(root: Path, names: list[str]) -> dict[str, str]:
    return {n: oct(stat.S_IMODE(os.stat(root / n).st_mode)) for n in names}


@check
def check_setid_cleared_by_unprivileged_write(root: Path) -> Any:
    """write(2), truncate(2), ftruncate(2) and open(O_TRUNC) by uid 65534 clear S_ISUID,
    and S_ISGID where the group may execute; root's writes (CAP_FSETID) keep them."""
    ops = ("write", "pwrite_nothing", "truncate", "ftruncate", "otrunc")
    files = {op: _setid_files(root, f"{op}-") for op in ops}
    rootw = _setid_files(root, "rootw-")

    def child() -> Any:
        os.chdir(root)
        _as_nobody()
        out = {}
        for op, names in files.items():
            for n in names:
                if op == "otrunc":
                    out[n] = attempt(lambda n=n: os.close(os.open(n, os.O_WRONLY | os.O_TRUNC)))
                    continue
                if op == "truncate":
                    out[n] = attempt(os.truncate, n, 2)
                    continue
                fd = os.open(n, os.O_WRONLY)
                try:
                    if op == "write":
                        out[n] = attempt(os.pwrite, fd, b"xy", 1)
                    elif op == "pwrite_nothing":
                        out[n] = attempt(os.pwrite, fd, b"", 0)
                    else:
                        out[n] = attempt(os.ftruncate, fd, 1)
                finally:
                    os.close(fd)
        return out

    res: dict[str, Any] = {"results": in_child(child)}
    for n in rootw:
        fd = os.open(root / n, os.O_WRONLY)
        try:
            os.pwrite(fd, b"root", 0)
        finally:
            os.close(fd)
    res["modes"] = _modes(root, [n for names in files.values() for n in names] + rootw)
    return res


@check
def check_setid_cleared_by_chown(root: Path) -> Any:
    """chown clears S_ISUID (and S_ISGID with group-exec) of a file: by root, which does
    not own it, and by its owner changing only the group; a directory keeps them."""
    byroot = _setid_files(root, "root-")
    byowner = _setid_files(root, "owner-")
    for n in byroot + byowner:
        mode = stat.S_IMODE(os.stat(root / n).st_mode)
        os.chown(root / n, NOBODY, NOBODY)
        os.chmod(root / n, mode)            # chown just cleared them: set them again
    d = root / "dir"
    os.mkdir(d)
    os.chmod(d, 0o2775)
    res: dict[str, Any] = {}
    res["root_chown"] = {n: attempt(os.chown, root / n, 0, 0) for n in byroot}
    res["root_chown_dir"] = attempt(os.chown, d, NOBODY, NOBODY)

    def child() -> Any:
        os.chdir(root)
        _as_nobody()
        return {n: attempt(os.chown, n, -1, NOBODY) for n in byowner}

    res["owner_chgrp"] = in_child(child)
    res["modes"] = _modes(root, byroot + byowner + ["dir"])
    return res


@check
def check_chown_to_supplementary_group(root: Path) -> Any:
    """The owner may chgrp to a group it has only as a supplementary group, not to others;
    the new group shows in stat and in files created in a set-group-ID directory."""
    f = root / "f"
    write_file(f, b"x")
    os.chown(f, NOBODY, NOBODY)
    d = root / "d"
    os.mkdir(d)
    os.chmod(d, 0o777)
    os.chown(d, NOBODY, NOBODY)

    def child() -> Any:
        os.chdir(root)
        _as_nobody([4242, 4343])
        out = {
            "chgrp_supp": attempt(os.chown, "f", -1, 4343),
            "gid_after": os.stat("f").st_gid,
            "chgrp_other": attempt(os.chown, "f", -1, 4444),
            "chown_supp_both": attempt(os.chown, "f", NOBODY, 4242),
            "lchown_supp": attempt(os.lchown, "f", -1, NOBODY),
            "dir_chgrp_supp": attempt(os.chown, "d", -1, 4242),
            "dir_setgid": attempt(os.chmod, "d", 0o2777),
        }
        open_create(Path("d/new"))
        st = os.stat("d/new")
        out["new_in_setgid_dir"] = [st.st_uid, st.st_gid]
        os.mkdir("d/sub")
        out["subdir_mode"] = oct(stat.S_IMODE(os.stat("d/sub").st_mode))
        return out

    res = in_child(child)
    st = os.stat(f)
    res["final"] = [st.st_uid, st.st_gid]
    return res


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    """A POSIX ACL xattr value from (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


@check
def check_default_acl_inheritance(root: Path) -> Any:
    """Objects created under a directory with a default ACL take their mode from it, not
    from the umask (here 022); subdirectories inherit the default ACL."""
    d = root / "d"
    os.mkdir(d)
    os.chmod(d, 0o777)
    default = _acl([(_ACL_USER_OBJ, 7, _NO_ID), (_ACL_USER, 6, NOBODY),
                    (_ACL_GROUP_OBJ, 7, _NO_ID), (_ACL_MASK, 7, _NO_ID),
                    (_ACL_OTHER, 0, _NO_ID)])
    res: dict[str, Any] = {"set": attempt(os.setxattr, d, "system.posix_acl_default", default)}
    if res["set"] in ("EOPNOTSUPP", "ENOTSUP"):
        return UNSUPPORTED
    old = os.umask(0o022)
    try:
        open_create(d / "file", 0, 0o666)
        os.mkdir(d / "sub", 0o777)
        os.mknod(d / "fifo", stat.S_IFIFO | 0o640)
        open_create(d / "sub" / "deep", 0, 0o644)
    finally:
        os.umask(old)
    for n in ("file", "sub", "fifo", "sub/deep"):
        p = d / n
        res[n] = {"mode": oct(stat.S_IMODE(os.stat(p).st_mode)),
                  "access_acl": attempt(lambda p=p: os.getxattr(p, "system.posix_acl_access")
                                        .hex()),
                  "default_acl": attempt(lambda p=p: os.getxattr(p, "system.posix_acl_default")
                                         .hex())}
    # setfacl on an existing file: the new mode shows at once (no stale cached attrs)
    f = d / "file"
    res["setfacl"] = attempt(os.setxattr, f, "system.posix_acl_access",
                             _acl([(_ACL_USER_OBJ, 6, _NO_ID), (_ACL_GROUP_OBJ, 0, _NO_ID),
                                   (_ACL_OTHER, 4, _NO_ID)]))
    res["mode_after_setfacl"] = oct(stat.S_IMODE(os.stat(f).st_mode))
    return res


@check
def check_noatime_read(root: Path) -> Any:
    """Reading a file opened with O_NOATIME (by its owner) leaves its atime alone."""
    f = root / "f"
    write_file(f, b"data")
    os.utime(f, (1_000_000, 2_000_000))
    fd = os.open(f, os.O_RDONLY | os.O_NOATIME)
    try:
        got = os.read(fd, 10).decode()
    finally:
        os.close(fd)
    return {"read": got, "atime": os.stat(f).st_atime_ns // 10**9}


# --------------------------------------------------------------------------
# chattr flags (FS_IOC_GETFLAGS / FS_IOC_SETFLAGS), as chattr(1) sets them

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20
FS_NODUMP_FL = 0x40
FS_NOATIME_FL = 0x80
FS_COMPR_FL = 0x04


def get_flags(p: Path) -> int:
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        return int(struct.unpack_from("<I", buf)[0])
    finally:
        os.close(fd)


def set_flags(p: Path, flags: int) -> None:
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<I", flags) + bytes(4))
    finally:
        os.close(fd)


def _chattr_file_ops(root: Path, flag: int) -> Any:
    """What each operation on a file with ``flag`` (+i or +a) gives; flags removed after."""
    f = root / "f"
    write_file(f, b"data")
    os.setxattr(f, "user.pre", b"1")
    write_file(root / "other", b"o")
    if attempt(get_flags, f) in ("ENOTTY", "EOPNOTSUPP"):
        return UNSUPPORTED
    res: dict[str, Any] = {"set": attempt(set_flags, f, flag), "flags": attempt(get_flags, f)}

    def write_append() -> Any:
        fd = os.open(f, os.O_WRONLY | os.O_APPEND)
        try:
            return os.write(fd, b"+")
        finally:
            os.close(fd)

    try:
        res.update({
            "open_read": attempt(lambda: read_file(f).decode()),
            "open_write": attempt(lambda: os.close(os.open(f, os.O_WRONLY))),
            "open_rdwr": attempt(lambda: os.close(os.open(f, os.O_RDWR))),
            "open_append": attempt(write_append),
            "open_trunc": attempt(lambda: os.close(os.open(f, os.O_WRONLY | os.O_APPEND
                                                           | os.O_TRUNC))),
            "truncate": attempt(os.truncate, f, 1),
            "chmod": attempt(os.chmod, f, 0o600),
            "chown": attempt(os.chown, f, NOBODY, NOBODY),
            "touch": attempt(os.utime, f),
            "utime": attempt(os.utime, f, (1, 1)),
            "setxattr": attempt(os.setxattr, f, "user.new", b"2"),
            "removexattr": attempt(os.removexattr, f, "user.pre"),
            "link": attempt(os.link, f, root / "link"),
            "rename": attempt(os.rename, f, root / "g"),
            "rename_over": attempt(os.rename, root / "other", f),
            "unlink": attempt(os.unlink, f),
            "content": read_file(f).decode(),
        })
    finally:
        set_flags(f, 0)
    res["after"] = [get_flags(f), attempt(os.unlink, f)]
    return res


@check
def check_chattr_immutable_file(root: Path) -> Any:
    return _chattr_file_ops(root, FS_IMMUTABLE_FL)


@check
def check_chattr_append_only_file(root: Path) -> Any:
    return _chattr_file_ops(root, FS_APPEND_FL)


def _chattr_dir_ops(root: Path, flag: int) -> Any:
    """Namespace operations in and on a directory with ``flag`` (+i or +a)."""
    d = root / "d"
    d.mkdir()
    write_file(d / "c", b"c")
    write_file(root / "y", b"y")
    if attempt(get_flags, d) in ("ENOTTY", "EOPNOTSUPP"):
        return UNSUPPORTED
    res: dict[str, Any] = {"set": attempt(set_flags, d, flag), "flags": attempt(get_flags, d)}
    try:
        res.update({
            "list": attempt(lambda: sorted(os.listdir(d))),
            "read_child": attempt(lambda: read_file(d / "c").decode()),
            "write_child": attempt(write_file, d / "c", b"C"),
            "create": attempt(open_create, d / "new"),
            "create_existing": attempt(lambda: os.close(os.open(d / "c", os.O_RDONLY
                                                                | os.O_CREAT))),
            "mkdir": attempt(os.mkdir, d / "sub"),
            "symlink": attempt(os.symlink, "c", d / "s"),
            "link_in": attempt(os.link, root / "y", d / "y2"),
            "rename_in": attempt(os.rename, root / "y", d / "y"),
            "rename_within": attempt(os.rename, d / "c", d / "c2"),
            "rename_out": attempt(os.rename, d / "c", root / "c"),
            "unlink": attempt(os.unlink, d / "c"),
            "rmdir_self": attempt(os.rmdir, d),
            "rename_self": attempt(os.rename, d, root / "e"),
            "chmod_self": attempt(os.chmod, d, 0o700),
        })
    finally:
        set_flags(d, 0)
    res["after"] = sorted(os.listdir(d))
    return res


@check
def check_chattr_immutable_dir(root: Path) -> Any:
    return _chattr_dir_ops(root, FS_IMMUTABLE_FL)


@check
def check_chattr_append_only_dir(root: Path) -> Any:
    return _chattr_dir_ops(root, FS_APPEND_FL)


@check
def check_chattr_flags_roundtrip(root: Path) -> Any:
    """+d and +A are kept, an unsupported flag is refused, and only root sets +i/+a."""
    f = root / "f"
    write_file(f, b"x")
    if attempt(get_flags, f) in ("ENOTTY", "EOPNOTSUPP"):
        return UNSUPPORTED
    res: dict[str, Any] = {
        "initial": get_flags(f),
        "nodump_noatime": attempt(set_flags, f, FS_NODUMP_FL | FS_NOATIME_FL),
        "kept": get_flags(f),
        "compress": attempt(set_flags, f, FS_COMPR_FL),
        "after_compress": get_flags(f),
        "clear": attempt(set_flags, f, 0),
        "cleared": get_flags(f),
    }
    os.chown(f, NOBODY, NOBODY)

    def child() -> Any:
        os.chdir(root)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        f = Path("f")
        return {
            "owner_sets_nodump": attempt(set_flags, f, FS_NODUMP_FL),
            "owner_sets_immutable": attempt(set_flags, f, FS_IMMUTABLE_FL),
            "owner_sets_append": attempt(set_flags, f, FS_APPEND_FL),
            "flags": get_flags(f),
        }

    res["as_owner"] = in_child(child)
    other = root / "other"
    write_file(other, b"o")

    def stranger() -> Any:
        os.chdir(root)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        return attempt(set_flags, Path("other"), FS_NODUMP_FL)

    res["stranger_sets_nodump"] = in_child(stranger)
    return res
