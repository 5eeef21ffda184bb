"""A path-based filesystem: mirror a directory, written against fusewire.PathOperations.

Usage: python examples/mirror.py SOURCE MOUNTPOINT [-o OPTIONS]

Every method gets a path ("/sub/file") and does the same thing to
SOURCE/sub/file with the os module.  fusewire keeps the inode table, lookup
counts, open handles and renames consistent; open files are os-level
descriptors, so a file unlinked while open stays readable through them.
When run as root, new files belong to the caller (as on a local disk).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

from fusewire import PathAdapter, PathOperations
from fusewire.server import Server

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_AT_FDCWD = -100


class Mirror(PathOperations):
    """Mirror of ``source``: every path maps to the same path below it."""

    use_ino = True          # hard links show one inode number, as on the source

    def __init__(self, source: str) -> None:
        self.source = os.path.realpath(source)

    def _real(self, path: str) -> str:
        return self.source + path if path != "/" else self.source

    def _own(self, path: str) -> None:
        """As root, give a new object to the caller (and setgid directories' group)."""
        if os.geteuid() != 0:
            return
        ctx = self.context
        gid = ctx.gid
        parent = os.stat(os.path.dirname(self._real(path)))
        if parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
        os.lchown(self._real(path), ctx.uid, gid)

    # attributes
    def getattr(self, path: str, fh: int | None = None) -> os.stat_result:
        if fh is not None:
            return os.fstat(fh)
        return os.lstat(self._real(path))

    def chmod(self, path: str, mode: int, fh: int | None = None) -> None:
        os.chmod(fh if fh is not None else self._real(path), stat.S_IMODE(mode))

    def chown(self, path: str, uid: int, gid: int, fh: int | None = None) -> None:
        if fh is not None:
            os.fchown(fh, uid, gid)
        else:
            os.lchown(self._real(path), uid, gid)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(fh if fh is not None else self._real(path), length)

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None,
                fh: int | None = None) -> None:
        if atime_ns is None or mtime_ns is None:
            st = os.lstat(self._real(path))
            atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
            mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
        os.utime(self._real(path), ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    # names
    def mknod(self, path: str, mode: int, rdev: int) -> None:
        os.mknod(self._real(path), mode, rdev)
        self._own(path)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)
        self._own(path)

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def symlink(self, path: str, target: str) -> None:
        os.symlink(target, self._real(path))
        self._own(path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if not flags:
            os.rename(self._real(old), self._real(new))
            return
        if _libc.renameat2(_AT_FDCWD, os.fsencode(self._real(old)), _AT_FDCWD,
                           os.fsencode(self._real(new)), flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def link(self, target: str, path: str) -> None:
        os.link(self._real(target), self._real(path), follow_symlinks=False)

    # files: the handle is an os-level descriptor
    def create(self, path: str, mode: int, flags: int) -> int:
        fd = os.open(self._real(path), flags | os.O_CREAT, mode)
        self._own(path)
        return fd

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    def fallocate(self, path: str, mode: int, offset: int, length: int, fh: int) -> None:
        if _libc.fallocate(fh, mode, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        return os.lseek(fh, offset, whence)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    # directories
    def readdir(self, path: str, fh: int) -> list[str]:
        return os.listdir(self._real(path))

    # filesystem, xattrs
    def statfs(self, path: str) -> os.statvfs_result:
        return os.statvfs(self._real(path))

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        os.setxattr(self._real(path), name, value, flags, follow_symlinks=False)

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self._real(path), name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._real(path), follow_symlinks=False)

    def removexattr(self, path: str, name: str) -> None:
        os.removexattr(self._real(path), name, follow_symlinks=False)


def main(argv: list[str]) -> int:
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o" and i + 1 < len(argv)]
    paths = [a for i, a in enumerate(argv) if a != "-o" and (i == 0 or argv[i - 1] != "-o")]
    if len(paths) != 2:
        sys.stderr.write("usage: python mirror.py SOURCE MOUNTPOINT [-o OPTIONS]\n")
        return 2
    source, mountpoint = paths
    if not os.path.isdir(source):
        sys.stderr.write(f"mirror.py: {source}: not a directory\n")
        return 1
    Server(PathAdapter(Mirror(source)), mountpoint, options, fsname="mirror").run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
