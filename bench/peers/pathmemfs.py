"""In-memory filesystem logic for the path-based peers (fusepy and mfusepy).

The same logic as pyfuse3_memfs.py and memfs_ll.c (a dict of inodes, a
bytearray per regular file, a dict of names per directory), behind the
path-based method signatures that fusepy and mfusepy share. Errors are raised
as plain OSError, which both libraries turn into -errno. Times are integer
nanoseconds (the libraries' ``use_ns``). File handles are inode numbers, so
read and write never walk a path.

fusepy_memfs.py and mfusepy_memfs.py combine PathMemFS with their library's
Operations class and start the mount.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any

ROOT = 1


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int = 1
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    data: bytearray = field(default_factory=bytearray)
    children: dict[str, int] = field(default_factory=dict)


class PathMemFS:
    """Path-based in-memory filesystem; mix in before the library's Operations."""

    use_ns = True

    def __init__(self) -> None:
        now = time.time_ns()
        root = Inode(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), nlink=2,
                     atime_ns=now, mtime_ns=now, ctime_ns=now)
        self.inodes: dict[int, Inode] = {ROOT: root}
        self.next_ino = ROOT + 1
        # The libraries run several worker threads: mutations take this lock.
        self._mutex = threading.Lock()

    # -- helpers ---------------------------------------------------------

    def _node(self, path: str) -> Inode:
        node = self.inodes[ROOT]
        if path == "/":
            return node
        try:
            for part in path[1:].split("/"):
                node = self.inodes[node.children[part]]
        except KeyError:
            raise _error(errno.ENOENT) from None
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rpartition("/")
        parent = self._node(head or "/")
        if not stat.S_ISDIR(parent.mode):
            raise _error(errno.ENOTDIR)
        return parent, name

    def _make(self, path: str, mode: int) -> Inode:
        uid, gid = os.getuid(), os.getgid()
        with self._mutex:
            parent, name = self._parent(path)
            if name in parent.children:
                raise _error(errno.EEXIST)
            if len(name.encode()) > 255:
                raise _error(errno.ENAMETOOLONG)
            now = time.time_ns()
            node = Inode(self.next_ino, mode, uid, gid,
                         atime_ns=now, mtime_ns=now, ctime_ns=now)
            self.next_ino += 1
            if stat.S_ISDIR(mode):
                node.nlink = 2
                parent.nlink += 1
            self.inodes[node.ino] = node
            parent.children[name] = node.ino
            parent.mtime_ns = parent.ctime_ns = now
            return node

    def _remove(self, path: str, want_dir: bool) -> None:
        with self._mutex:
            parent, name = self._parent(path)
            ino = parent.children.get(name)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.inodes[ino]
            is_dir = stat.S_ISDIR(node.mode)
            if want_dir and not is_dir:
                raise _error(errno.ENOTDIR)
            if not want_dir and is_dir:
                raise _error(errno.EISDIR)
            if is_dir and node.children:
                raise _error(errno.ENOTEMPTY)
            del parent.children[name]
            now = time.time_ns()
            parent.mtime_ns = parent.ctime_ns = node.ctime_ns = now
            if is_dir:
                parent.nlink -= 1
                node.nlink = 0
            else:
                node.nlink -= 1
            # The high-level library keeps a path for open files on its own
            # (hidden rename or hard_remove), so an unlinked inode goes now.
            if node.nlink == 0:
                del self.inodes[ino]

    # -- metadata --------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        node = self.inodes.get(fh) if fh else None
        if node is None:
            node = self._node(path)
        size = 4096 if stat.S_ISDIR(node.mode) else len(node.data)
        return {
            "st_ino": node.ino,
            "st_mode": node.mode,
            "st_nlink": node.nlink,
            "st_uid": node.uid,
            "st_gid": node.gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_atime": node.atime_ns,
            "st_mtime": node.mtime_ns,
            "st_ctime": node.ctime_ns,
        }

    def chmod(self, path: str, mode: int, fh: int | None = None) -> int:
        node = self._node(path)
        node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        node.ctime_ns = time.time_ns()
        return 0

    def chown(self, path: str, uid: int, gid: int, fh: int | None = None) -> int:
        node = self._node(path)
        if uid != -1:
            node.uid = uid
        if gid != -1:
            node.gid = gid
        node.ctime_ns = time.time_ns()
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        node = self._node(path)
        now = time.time_ns()
        node.atime_ns, node.mtime_ns = times if times else (now, now)
        node.ctime_ns = now
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        node = self.inodes.get(fh) if fh else None
        if node is None:
            node = self._node(path)
        if stat.S_ISDIR(node.mode):
            raise _error(errno.EISDIR)
        with self._mutex:
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            node.mtime_ns = node.ctime_ns = time.time_ns()
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        if not stat.S_ISREG(mode):
            raise _error(errno.EPERM)
        self._make(path, mode)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._make(path, stat.S_IFDIR | (mode & 0o7777))
        return 0

    def unlink(self, path: str) -> int:
        self._remove(path, want_dir=False)
        return 0

    def rmdir(self, path: str) -> int:
        self._remove(path, want_dir=True)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        with self._mutex:
            src, name = self._parent(old)
            dst, newname = self._parent(new)
            ino = src.children.get(name)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.inodes[ino]
            target = dst.children.get(newname)
        if target == ino:
            return 0
        if target is not None:
            self._remove(new, want_dir=stat.S_ISDIR(self.inodes[target].mode))
        with self._mutex:
            del src.children[name]
            dst.children[newname] = ino
            if stat.S_ISDIR(node.mode) and src is not dst:
                src.nlink -= 1
                dst.nlink += 1
            now = time.time_ns()
            node.ctime_ns = src.mtime_ns = src.ctime_ns = dst.mtime_ns = dst.ctime_ns = now
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 1 << 28,
            "f_bfree": 1 << 28,
            "f_bavail": 1 << 28,
            "f_files": len(self.inodes) + (1 << 20),
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }

    # -- files -----------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        return self._make(path, stat.S_IFREG | (mode & 0o7777)).ino

    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if stat.S_ISDIR(node.mode):
            raise _error(errno.EISDIR)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            with self._mutex:
                node.data.clear()
        return node.ino

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self.inodes.get(fh) or self._node(path)
        return bytes(node.data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        node = self.inodes.get(fh) or self._node(path)
        with self._mutex:
            buf = node.data
            if offset > len(buf):
                buf.extend(bytes(offset - len(buf)))
            buf[offset:offset + len(data)] = data
            node.mtime_ns = node.ctime_ns = time.time_ns()
        return len(data)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    # -- directories -----------------------------------------------------

    def readdir(self, path: str, fh: int) -> list[str]:
        node = self._node(path)
        if not stat.S_ISDIR(node.mode):
            raise _error(errno.ENOTDIR)
        return [".", "..", *node.children]
