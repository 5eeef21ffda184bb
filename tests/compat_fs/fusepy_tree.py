"""A fusepy-API filesystem (ours, for the tests): a nested in-memory tree.

Written exactly as a fusepy user would (``from fuse import ...``); run it with
``python -m fusewire.compat.fusepy fusepy_tree.py MOUNTPOINT [daemon]``.
Covers the path API's surface: getattr dicts with float times, readdir,
create/open/read/write/truncate/release, mkdir/rmdir, unlink, rename of
directories, symlink/readlink, link, chmod/chown, utimens, xattrs, statfs,
fuse_get_context for ownership, LoggingMixIn, FuseOSError, ENOTSUP.
"""

import logging
import os
import sys
from errno import EEXIST, ENODATA, ENOENT, ENOTEMPTY
from stat import S_IFDIR, S_IFLNK, S_IFMT, S_IFREG
from time import time

from fuse import ENOTSUP, FUSE, FuseOSError, LoggingMixIn, Operations, fuse_get_context


class Tree(LoggingMixIn, Operations):
    def __init__(self):
        self.meta = {}
        self.data = {}
        self.xattrs = {}
        self.fh = 0
        self._add("/", S_IFDIR | 0o755, nlink=2)

    def init(self, path):
        pidfile = os.environ.get("TREE_PIDFILE")
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")

    def _add(self, path, mode, nlink=1):
        uid, gid, _ = fuse_get_context()
        now = time()
        self.meta[path] = dict(st_mode=mode, st_nlink=nlink, st_size=0, st_uid=uid,
                               st_gid=gid, st_atime=now, st_mtime=now, st_ctime=now)

    def _children(self, path):
        prefix = path.rstrip("/") + "/"
        return [p for p in self.meta if p != path and p.startswith(prefix)
                and "/" not in p[len(prefix):]]

    def getattr(self, path, fh=None):
        if path not in self.meta:
            raise FuseOSError(ENOENT)
        return self.meta[path]

    def readdir(self, path, fh):
        return [".", ".."] + [os.path.basename(p) for p in self._children(path)]

    def create(self, path, mode, fi=None):
        if path in self.meta:
            raise FuseOSError(EEXIST)
        self._add(path, S_IFREG | (mode & 0o7777))
        self.data[path] = b""
        self.fh += 1
        return self.fh

    def open(self, path, flags):
        self.fh += 1
        return self.fh

    def read(self, path, size, offset, fh):
        return self.data[path][offset:offset + size]

    def write(self, path, data, offset, fh):
        old = self.data[path]
        self.data[path] = old[:offset].ljust(offset, b"\0") + data + old[offset + len(data):]
        self.meta[path]["st_size"] = len(self.data[path])
        self.meta[path]["st_mtime"] = time()
        return len(data)

    def truncate(self, path, length, fh=None):
        self.data[path] = self.data[path][:length].ljust(length, b"\0")
        self.meta[path]["st_size"] = length

    def mkdir(self, path, mode):
        self._add(path, S_IFDIR | (mode & 0o7777), nlink=2)
        self.meta[os.path.dirname(path)]["st_nlink"] += 1

    def rmdir(self, path):
        if self._children(path):
            raise FuseOSError(ENOTEMPTY)
        del self.meta[path]
        self.meta[os.path.dirname(path)]["st_nlink"] -= 1

    def unlink(self, path):
        self.meta[path]["st_nlink"] -= 1
        del self.meta[path]
        self.data.pop(path, None)

    def rename(self, old, new):
        if new in self.meta and self._children(new):
            raise FuseOSError(ENOTEMPTY)
        for table in (self.meta, self.data, self.xattrs):
            for p in [p for p in table if p == old or p.startswith(old + "/")]:
                table[new + p[len(old):]] = table.pop(p)

    def symlink(self, target, source):
        self._add(target, S_IFLNK | 0o777)
        self.data[target] = source.encode()
        self.meta[target]["st_size"] = len(source)

    def readlink(self, path):
        return self.data[path].decode()

    def link(self, target, source):
        self.meta[target] = self.meta[source]       # one dict: nlink and size shared
        self.meta[source]["st_nlink"] += 1
        self.data[target] = self.data[source]

    def chmod(self, path, mode):
        m = self.meta[path]
        m["st_mode"] = (m["st_mode"] & S_IFMT(m["st_mode"])) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        if uid != -1:
            self.meta[path]["st_uid"] = uid
        if gid != -1:
            self.meta[path]["st_gid"] = gid

    def utimens(self, path, times=None):
        now = time()
        atime, mtime = times if times else (now, now)
        self.meta[path]["st_atime"] = atime
        self.meta[path]["st_mtime"] = mtime

    def getxattr(self, path, name, position=0):
        try:
            return self.xattrs.get(path, {})[name]
        except KeyError:
            raise FuseOSError(ENODATA)

    def setxattr(self, path, name, value, options, position=0):
        if name.startswith("trusted."):
            raise FuseOSError(ENOTSUP)
        self.xattrs.setdefault(path, {})[name] = value

    def listxattr(self, path):
        return list(self.xattrs.get(path, {}))

    def removexattr(self, path, name):
        try:
            del self.xattrs.get(path, {})[name]
        except KeyError:
            raise FuseOSError(ENODATA)

    def statfs(self, path):
        return dict(f_bsize=4096, f_blocks=1000, f_bavail=600, f_bfree=600, f_files=100,
                    f_ffree=90, f_namemax=255)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if os.environ.get("TREE_DEBUG") else logging.INFO)
    daemon = len(sys.argv) > 2 and sys.argv[2] == "daemon"
    FUSE(Tree(), sys.argv[1], foreground=not daemon, allow_other=True,
         default_permissions=True, fsname="fusepy-tree", nothreads=True)
