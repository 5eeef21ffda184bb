import errno, stat, sys
from fusewire import Operations, EntryAttributes, FileInfo, FUSEError
from fusewire.server import Server

HELLO = b"hello, world\n"

class Hello(Operations):
    def _attr(self, inode):
        if inode == 1:
            return EntryAttributes(1, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if inode == 2:
            return EntryAttributes(2, st_mode=stat.S_IFREG | 0o444, st_size=len(HELLO))
        raise FUSEError(errno.ENOENT)

    def lookup(self, parent_inode, name, ctx):
        if parent_inode == 1 and name == b"hello":
            return self._attr(2)          # the kernel now holds one lookup of inode 2
        raise FUSEError(errno.ENOENT)

    def getattr(self, inode, ctx):
        return self._attr(inode)

    def opendir(self, inode, ctx):
        return 0

    def readdir(self, fh, start_id, token):
        entries = [(b".", 1), (b"..", 1), (b"hello", 2)]
        for i, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not token.add(name, self._attr(inode), i):   # i: cookie to resume after
                break

    def open(self, inode, flags, ctx):
        return FileInfo(fh=inode, keep_cache=True)

    def read(self, fh, off, size):
        return HELLO[off:off + size]

Server(Hello(), sys.argv[1], "fsname=hello").run()   # Ctrl-C or umount to stop
