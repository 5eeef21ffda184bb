"""A fusepy-API loopback (ours, for the tests), written like fusepy's example:
``__call__`` prefixes the source directory, methods are os functions, and
unused operations are set to None.  ``raw_fi`` mode: open/create get a
file-info object and set ``fi.fh`` themselves.

``python -m fusewire.compat.fusepy fusepy_mirror.py SOURCE MOUNTPOINT``
"""

import os
import sys
from errno import EACCES
from threading import Lock

import mfusepy
from mfusepy import FUSE, FuseOSError, Operations


class Mirror(Operations):
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.rwlock = Lock()

    def __call__(self, op, path, *args):
        return super().__call__(op, self.root + path, *args)

    def access(self, path, mode):
        if not os.access(path, mode):
            raise FuseOSError(EACCES)

    chmod = os.chmod
    chown = os.chown

    def create(self, path, mode, fi):
        fi.fh = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
        fi.direct_io = 1
        return 0

    def open(self, path, fi):
        fi.fh = os.open(path, fi.flags)
        return 0

    def getattr(self, path, fh=None):
        st = os.lstat(path)
        return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode",
                                                  "st_mtime", "st_nlink", "st_size", "st_uid",
                                                  "st_ino")}

    def read(self, path, size, offset, fi):
        with self.rwlock:
            return os.pread(fi.fh, size, offset)

    def write(self, path, data, offset, fi):
        with self.rwlock:
            return os.pwrite(fi.fh, data, offset)

    def release(self, path, fi):
        os.close(fi.fh)

    def flush(self, path, fi):
        return 0

    def fsync(self, path, datasync, fi):
        os.fsync(fi.fh)

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(path)]

    readlink = os.readlink
    mkdir = os.mkdir
    mknod = os.mknod
    rmdir = os.rmdir
    unlink = os.unlink

    def rename(self, old, new):
        os.rename(old, self.root + new)

    def link(self, target, source):
        os.link(self.root + source, target)

    def symlink(self, target, source):
        os.symlink(source, target)

    def truncate(self, path, length, fh=None):
        os.truncate(path, length)

    def utimens(self, path, times=None):
        os.utime(path, times)

    def statfs(self, path):
        stv = os.statvfs(path)
        return {key: getattr(stv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                                   "f_favail", "f_ffree", "f_files", "f_frsize",
                                                   "f_namemax")}

    getxattr = None
    listxattr = None
    opendir = None
    releasedir = None


if __name__ == "__main__":
    assert mfusepy.ENOATTR
    FUSE(Mirror(sys.argv[1]), sys.argv[2], foreground=True, raw_fi=True, use_ino=True)
