"""An in-memory filesystem on pyfuse3's API, for bench/run.py.

Usage: python pyfuse3_memfs.py MOUNTPOINT [--debug]

The same logic as the other bench peers (memfs_ll.c, fusepy_memfs.py,
mfusepy_memfs.py): a dict of inodes, a bytearray per regular file, a dict of
names per directory, and entry/attribute timeouts of 0 so that every stat()
reaches the server. A directory listing is a snapshot of the names taken at
opendir; READDIR offsets index into it. SIGTERM or SIGINT unmounts and exits.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyfuse3
import trio
from pyfuse3 import FUSEError

ROOT = pyfuse3.ROOT_INODE


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
    nlookup: int = 0
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    parent: int = ROOT


class MemFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self) -> None:
        super().__init__()
        now = time.time_ns()
        root = Inode(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), nlink=2,
                     atime_ns=now, mtime_ns=now, ctime_ns=now)
        self.inodes: dict[int, Inode] = {ROOT: root}
        self.next_ino = ROOT + 1
        self.listings: dict[int, tuple[Inode, list[bytes]]] = {}
        self.next_fh = 1

    # -- helpers ---------------------------------------------------------

    def _get(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def _dir(self, ino: int) -> Inode:
        node = self._get(ino)
        if not stat.S_ISDIR(node.mode):
            raise FUSEError(errno.ENOTDIR)
        return node

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 1
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        attr.st_mode = node.mode
        attr.st_nlink = node.nlink
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.st_rdev = 0
        size = 4096 if stat.S_ISDIR(node.mode) else len(node.data)
        attr.st_size = size
        attr.st_blksize = 4096
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = node.atime_ns
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        return attr

    def _maybe_free(self, node: Inode) -> None:
        if node.nlookup == 0 and node.nlink == 0 and node.ino != ROOT:
            del self.inodes[node.ino]

    def _make(self, parent_ino: int, name: bytes, mode: int,
              ctx: pyfuse3.RequestContext) -> Inode:
        parent = self._dir(parent_ino)
        if name in parent.children:
            raise FUSEError(errno.EEXIST)
        if len(name) > 255:
            raise FUSEError(errno.ENAMETOOLONG)
        now = time.time_ns()
        node = Inode(self.next_ino, mode & ~(ctx.umask & 0o777), ctx.uid, ctx.gid,
                     atime_ns=now, mtime_ns=now, ctime_ns=now, parent=parent_ino)
        self.next_ino += 1
        if stat.S_ISDIR(mode):
            node.nlink = 2
            parent.nlink += 1
        self.inodes[node.ino] = node
        parent.children[name] = node.ino
        parent.mtime_ns = parent.ctime_ns = now
        node.nlookup += 1
        return node

    def _remove(self, parent_ino: int, name: bytes, want_dir: bool) -> None:
        parent = self._dir(parent_ino)
        try:
            node = self.inodes[parent.children[name]]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None
        is_dir = stat.S_ISDIR(node.mode)
        if want_dir and not is_dir:
            raise FUSEError(errno.ENOTDIR)
        if not want_dir and is_dir:
            raise FUSEError(errno.EISDIR)
        if is_dir and node.children:
            raise FUSEError(errno.ENOTEMPTY)
        del parent.children[name]
        now = time.time_ns()
        parent.mtime_ns = parent.ctime_ns = node.ctime_ns = now
        if is_dir:
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
        self._maybe_free(node)

    # -- metadata --------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._dir(parent_inode)
        if name == b".":
            node = parent
        elif name == b"..":
            node = self._get(parent.parent)
        else:
            ino = parent.children.get(name)
            if ino is None:
                raise FUSEError(errno.ENOENT)
            node = self.inodes[ino]
        node.nlookup += 1
        return self._attr(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, nlookup in inode_list:
            node = self.inodes.get(ino)
            if node is not None:
                node.nlookup = max(0, node.nlookup - nlookup)
                self._maybe_free(node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._get(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._get(inode)
        now = time.time_ns()
        if fields.update_size:
            if stat.S_ISDIR(node.mode):
                raise FUSEError(errno.EISDIR)
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
            node.mtime_ns = now
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now
        return self._attr(node)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            raise FUSEError(errno.EPERM)
        return self._attr(self._make(parent_inode, name, mode, ctx))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._make(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx))

    async def unlink(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> None:
        self._remove(parent_inode, name, want_dir=False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._remove(parent_inode, name, want_dir=True)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise FUSEError(errno.EINVAL)
        src = self._dir(parent_inode_old)
        dst = self._dir(parent_inode_new)
        ino = src.children.get(name_old)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        node = self.inodes[ino]
        old = dst.children.get(name_new)
        if old == ino:
            return
        if old is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            self._remove(parent_inode_new, name_new,
                         want_dir=stat.S_ISDIR(self.inodes[old].mode))
        del src.children[name_old]
        dst.children[name_new] = ino
        if stat.S_ISDIR(node.mode) and src is not dst:
            src.nlink -= 1
            dst.nlink += 1
            node.parent = dst.ino
        now = time.time_ns()
        node.ctime_ns = src.mtime_ns = src.ctime_ns = dst.mtime_ns = dst.ctime_ns = now

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 1 << 28
        st.f_files = len(self.inodes) + (1 << 20)
        st.f_ffree = st.f_favail = 1 << 20
        st.f_namemax = 255
        return st

    # -- files -----------------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self._make(parent_inode, name, stat.S_IFREG | (mode & 0o7777), ctx)
        return pyfuse3.FileInfo(fh=node.ino), self._attr(node)

    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._get(inode)
        if stat.S_ISDIR(node.mode):
            raise FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            node.data.clear()
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self._get(fh).data[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._get(fh)
        data = node.data
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    # -- directories -----------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._dir(inode)
        fh = self.next_fh
        self.next_fh += 1
        self.listings[fh] = (node, list(node.children))
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Entry i of the snapshot has next_id i + 1; "." and ".." are left to the kernel.
        directory, names = self.listings[fh]
        children = directory.children
        inodes = self.inodes
        for i in range(start_id, len(names)):
            name = names[i]
            node = inodes.get(children.get(name, 0))
            if node is None:  # removed since opendir
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 1):
                return
            node.nlookup += 1

    async def releasedir(self, fh: int) -> None:
        self.listings.pop(fh, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output")
    args = parser.parse_args()

    options = {"fsname=pyfuse3_memfs", "subtype=pyfuse3_memfs"}
    if args.debug:
        options.add("debug")
    pyfuse3.init(MemFS(), args.mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


async def _serve() -> None:
    async with trio.open_nursery() as nursery:

        async def run_loop() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()  # unmounted from outside

        nursery.start_soon(run_loop)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                break


if __name__ == "__main__":
    main()
