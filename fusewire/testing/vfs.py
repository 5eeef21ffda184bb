"""The emulated kernel's syscall-like API: paths resolved through a dentry cache.

:class:`~fusewire.testing.emulator.KernelEmulator` inherits :class:`VfsCalls`:
``stat``, ``open``, ``read``, ``readdir``, ``rename``, the xattr calls... look
names up with LOOKUP (caching dentries like the kernel), send the requests
through the emulator's raw layer and raise ``OSError`` like the system calls,
so tests read like user code.  Relative paths start at the directory set with
``chdir`` (the kernel's pinned cwd), else at the root.
"""

from __future__ import annotations

import errno as _errno
import os
import stat as _stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusewire import handles as _fh
from fusewire.connection import Session
from fusewire.opcodes.flags import (
    DRAFT_FUSE_MKOBJ_HANDLE_V3,
    FATTR,
    FSYNC,
    FUSE_ROOT_ID,
    InitFlag,
    Opcode,
)
from fusewire.structs.codec import CODECS
from fusewire.wire import EntryWithHandle, KernelRuleError

__all__ = ["VfsCalls"]

_R = CODECS  # shorthand for record classes
_RENAME_EXCHANGE = 2

_HANDLE_WRAPPERS = (EntryWithHandle, _fh.HandleEntry)


def _entry_of(decoded: Any) -> Any:
    if isinstance(decoded, tuple) and not isinstance(decoded, _HANDLE_WRAPPERS) and len(
            decoded) == 2 and not hasattr(decoded, "nodeid"):
        decoded = decoded[0]
    if isinstance(decoded, _HANDLE_WRAPPERS):
        return decoded.entry
    return decoded


@dataclass
class _Open:
    """An open file or directory of the emulated kernel (its fh and flags)."""

    nodeid: int
    fh: int
    flags: int
    is_dir: bool
    #: the inode went bad (fuse_make_bad) while this was open: every use is EIO
    bad: bool = False


class VfsCalls:
    """Mixin of the emulator: path resolution and the syscall-like calls."""

    # provided by fusewire.testing.emulator.KernelEmulator
    session: Session | None
    umask: int
    dcache: dict[tuple[int, bytes], int]
    _stale: set[tuple[int, bytes]]
    enosys: set[int]
    nlookup: dict[int, int]
    bad: set[int]
    no_create: bool
    cwd: _Open | None
    _handles: dict[int, _Open]
    _next_handle: int
    max_read: int
    dirbuf: int

    if TYPE_CHECKING:
        @property
        def minor(self) -> int: ...
        def has(self, flag: InitFlag) -> bool: ...
        def request(self, opcode: int, nodeid: int = 0, *, arg: Any = None,
                    names: Sequence[bytes] = (), data: Any = b"", ext: bytes = b"",
                    uid: int | None = None, gid: int | None = None,
                    pid: int | None = None, handle: bytes | None = None
                    ) -> tuple[int, Any]: ...
        def _call(self, opcode: int, nodeid: int, **kw: Any) -> Any: ...
        def forget(self, nodeid: int, n: int | None = None) -> None: ...
        def _in_use(self, nodeid: int) -> bool: ...
        def lookup_handle_v3(self, parent: int, name: bytes, *,
                             parent_handle: bool = True) -> _fh.HandleEntry: ...
        def mkobj_v3(self, parent: int, name: bytes, flags: int, mode: int
                     ) -> int | None: ...

    # -- path resolution -------------------------------------------------------------------

    @staticmethod
    def _split(path: str | bytes) -> list[bytes]:
        p = os.fsencode(path)
        parts = [c for c in p.split(b"/") if c and c != b"."]
        if b".." in parts:
            raise ValueError("'..' in emulator paths is not supported")
        return parts

    def _lookup(self, parent: int, name: bytes) -> int:
        key = (parent, name)
        if key in self._stale:
            self._stale.discard(key)
            self._drop_dentry(key)
        cached = self.dcache.get(key)
        if cached is not None and cached in self.bad:
            # fuse_dentry_revalidate: a dentry of a bad inode is invalid; look it up again
            self.dcache.pop(key, None)
            cached = None
        if cached is not None:
            return cached
        op: int = Opcode.LOOKUP
        assert self.session is not None
        profile = self.session.lookup_handle
        if profile == "rfc-v3":
            e = self.lookup_handle_v3(parent, name).entry
            self.dcache[key] = e.nodeid
            return int(e.nodeid)
        if profile is not None:
            op = _fh.PROFILES[profile].lookup_opcode  # names go by LOOKUP_HANDLE
        e = _entry_of(self._call(op, parent, names=(name,)))
        if e.nodeid == 0:
            raise OSError(_errno.ENOENT, os.strerror(_errno.ENOENT))
        self.dcache[key] = e.nodeid
        return int(e.nodeid)

    def _drop_dentry(self, key: tuple[int, bytes]) -> None:
        nodeid = self.dcache.pop(key, None)
        self._stale.discard(key)
        if nodeid is None:
            return
        if nodeid not in self.dcache.values() and not self._in_use(nodeid) and \
                nodeid in self.nlookup:
            self.forget(nodeid)

    def _start(self, path: str | bytes) -> int:
        """Where a path walk starts: the root, or the cwd for a relative path."""
        cwd = self.cwd
        if cwd is None or os.fsencode(path).startswith(b"/"):
            return FUSE_ROOT_ID
        if cwd.bad:
            raise OSError(_errno.EIO, os.strerror(_errno.EIO))
        return cwd.nodeid

    def resolve(self, path: str | bytes) -> int:
        """The nodeid of ``path`` (LOOKUP per uncached component)."""
        node = self._start(path)
        for comp in self._split(path):
            node = self._lookup(node, comp)
        return node

    def _parent(self, path: str | bytes) -> tuple[int, bytes]:
        parts = self._split(path)
        if not parts:
            raise OSError(_errno.EBUSY, "the root has no parent")
        node = self._start(path)
        for comp in parts[:-1]:
            node = self._lookup(node, comp)
        return node, parts[-1]

    def _created(self, parent: int, name: bytes, decoded: Any) -> int:
        e = _entry_of(decoded)
        self.dcache[(parent, name)] = e.nodeid
        self._stale.discard((parent, name))
        return int(e.nodeid)

    # -- syscall-like API ------------------------------------------------------------------

    def lookup(self, path: str | bytes) -> int:
        """Resolve ``path``; return its nodeid."""
        return self.resolve(path)

    def stat(self, path: str | bytes) -> Any:
        """GETATTR: the ``fuse_attr`` record (ino, size, mode, nlink...)."""
        nodeid = self.resolve(path)
        return self._call(Opcode.GETATTR, nodeid, arg=_R["getattr_in"].zero()).attr

    def fstat(self, h: int) -> Any:
        """GETATTR with FUSE_GETATTR_FH."""
        o = self._open_handle(h)
        arg = _R["getattr_in"].record(getattr_flags=1, dummy=0, fh=o.fh)
        return self._call(Opcode.GETATTR, o.nodeid, arg=arg).attr

    def _open_handle(self, h: int) -> _Open:
        o = self._handles[h]
        if o.bad:  # the inode went bad under the open file
            raise OSError(_errno.EIO, os.strerror(_errno.EIO))
        return o

    def _new_handle(self, nodeid: int, fh: int, flags: int, is_dir: bool) -> int:
        h = self._next_handle
        self._next_handle += 1
        self._handles[h] = _Open(nodeid, fh, flags, is_dir)
        return h

    def _setattr(self, nodeid: int, valid: int, **fields: int) -> Any:
        arg = _R["setattr_in"].zero()._replace(valid=valid, **fields)
        return self._call(Opcode.SETATTR, nodeid, arg=arg).attr

    def open(self, path: str | bytes, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
        """Open (or with O_CREAT create) ``path``; return an emulator handle."""
        if flags & os.O_CREAT:
            parent, name = self._parent(path)
            try:
                nodeid = self._lookup(parent, name)
            except OSError as exc:
                if exc.errno != _errno.ENOENT:
                    raise
                return self._create(parent, name, flags, mode)
            if flags & os.O_EXCL:
                raise OSError(_errno.EEXIST, os.strerror(_errno.EEXIST))
        else:
            nodeid = self.resolve(path)
        oflags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        if oflags & os.O_TRUNC and not self.has(InitFlag.ATOMIC_O_TRUNC):
            self._setattr(nodeid, FATTR.SIZE, size=0)
            oflags &= ~os.O_TRUNC
        is_dir = bool(flags & os.O_DIRECTORY)
        op = Opcode.OPENDIR if is_dir else Opcode.OPEN
        if op in self.enosys:
            return self._new_handle(nodeid, 0, oflags, is_dir)
        arg = _R["open_in"].record(flags=oflags, open_flags=0)
        out = self._call(op, nodeid, arg=arg)
        return self._new_handle(nodeid, out.fh, oflags, is_dir)

    def _create(self, parent: int, name: bytes, flags: int, mode: int) -> int:
        mode = _stat.S_IFREG | (mode & 0o7777 & ~self.umask)
        assert self.session is not None
        create_op: int = Opcode.CREATE
        if self.session.lookup_handle == "rfc-v3" and not self.no_create:
            got = self.mkobj_v3(parent, name, flags, mode)
            if got is not None:
                return got
        if self.session.lookup_handle == "fusewire":
            create_op = DRAFT_FUSE_MKOBJ_HANDLE_V3  # create-and-open
        if create_op not in self.enosys and not self.no_create:
            arg = _R["create_in"].record(flags=flags & ~os.O_NOCTTY, mode=mode,
                                         umask=self.umask, open_flags=0)
            err, decoded = self.request(create_op, parent, arg=arg, names=(name,),
                                        ext=self._ext())
            if not err:
                entry, oo = decoded
                nodeid = self._created(parent, name, entry)
                return self._new_handle(nodeid, oo.fh, flags & ~(os.O_CREAT | os.O_EXCL),
                                        False)
            if err != _errno.ENOSYS:
                raise OSError(err, os.strerror(err))
        arg = _R["mknod_in"].record(mode=mode, rdev=0, umask=self.umask, padding=0)
        decoded = self._call(Opcode.MKNOD, parent, arg=arg, names=(name,), ext=self._ext())
        nodeid = self._created(parent, name, decoded)
        oflags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC)
        out = self._call(Opcode.OPEN, nodeid, arg=_R["open_in"].record(flags=oflags,
                                                                        open_flags=0))
        return self._new_handle(nodeid, out.fh, oflags, False)

    def create(self, path: str | bytes, mode: int = 0o644,
               flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
        """creat(2): create (or truncate) and open ``path``; return a handle."""
        return self.open(path, flags | os.O_CREAT, mode)

    def _ext(self) -> bytes:
        if self.minor >= 36 and self.has(InitFlag.SECURITY_CTX):
            # an empty FUSE_EXT secctx block: fuse_secctx_header {size 8, nr_secctx 0}
            return _R["secctx_header"].struct.pack(8, 0)
        return b""

    def read(self, h: int, size: int, off: int = 0) -> bytes:
        """pread: READ requests of at most ``max_read`` until ``size`` or a short read."""
        o = self._open_handle(h)
        out = bytearray()
        while len(out) < size:
            n = min(self.max_read, size - len(out))
            arg = _R["read_in"].record(fh=o.fh, offset=off + len(out), size=n, read_flags=0,
                                       lock_owner=0, flags=o.flags, padding=0)
            data = self._call(Opcode.READ, o.nodeid, arg=arg)
            out += data
            if len(data) < n:
                break
        return bytes(out)

    def write(self, h: int, data: bytes, off: int = 0) -> int:
        """pwrite: WRITE requests of at most max_write; return the bytes written."""
        assert self.session is not None
        o = self._open_handle(h)
        done = 0
        step = self.session.max_write
        while done < len(data) or (not data and done == 0):
            chunk = bytes(data[done:done + step])
            arg = _R["write_in"].record(fh=o.fh, offset=off + done, size=len(chunk),
                                        write_flags=0, lock_owner=0, flags=o.flags,
                                        padding=0)
            n = self._call(Opcode.WRITE, o.nodeid, arg=arg, data=chunk).size
            if n > len(chunk):
                raise KernelRuleError(f"WRITE answered {n} for {len(chunk)} bytes")
            done += n
            if n < len(chunk) or not data:
                break
        return done

    def fsync(self, h: int, datasync: bool = False) -> None:
        """FSYNC (or FSYNCDIR); ENOSYS is remembered and then means success."""
        o = self._open_handle(h)
        op = Opcode.FSYNCDIR if o.is_dir else Opcode.FSYNC
        if op in self.enosys:
            return
        arg = _R["fsync_in"].record(fh=o.fh, fsync_flags=FSYNC.FDATASYNC if datasync else 0,
                                    padding=0)
        err, _ = self.request(op, o.nodeid, arg=arg)
        if err and err != _errno.ENOSYS:
            raise OSError(err, os.strerror(err))

    def close(self, h: int) -> None:
        """close(2): FLUSH then RELEASE (RELEASEDIR for directories).

        A file whose inode went bad closes without a request (the server
        cannot name it).
        """
        o = self._handles.pop(h)
        if o.bad:
            return
        if not o.is_dir and Opcode.FLUSH not in self.enosys:
            err, _ = self.request(Opcode.FLUSH, o.nodeid,
                                  arg=_R["flush_in"].record(fh=o.fh, unused=0, padding=0,
                                                            lock_owner=0))
            if err and err != _errno.ENOSYS:
                self._release(o)
                raise OSError(err, os.strerror(err))
        self._release(o)

    def _release(self, o: _Open) -> None:
        op = Opcode.RELEASEDIR if o.is_dir else Opcode.RELEASE
        if o.is_dir and Opcode.OPENDIR in self.enosys:
            return
        if not o.is_dir and Opcode.OPEN in self.enosys:
            return
        self.request(op, o.nodeid, arg=_R["release_in"].record(fh=o.fh, flags=o.flags,
                                                               release_flags=0,
                                                               lock_owner=0))

    def readdir_entries(self, path: str | bytes) -> list[Any]:
        """OPENDIR, READDIR(PLUS) until an empty reply, RELEASEDIR: the raw records."""
        plus = self.minor >= 21 and self.has(InitFlag.DO_READDIRPLUS)
        op = Opcode.READDIRPLUS if plus else Opcode.READDIR
        nodeid = self.resolve(path)
        h = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        o = self._open_handle(h)
        records: list[Any] = []
        off = 0
        try:
            while True:
                arg = _R["read_in"].record(fh=o.fh, offset=off, size=self.dirbuf,
                                           read_flags=0, lock_owner=0, flags=0, padding=0)
                got = self._call(op, nodeid, arg=arg)
                if not got:
                    break
                for r in got:
                    if plus:
                        d = r.dirent
                        if r.entry.nodeid and d.name not in (b".", b".."):
                            self.dcache[(nodeid, d.name)] = r.entry.nodeid
                            self._stale.discard((nodeid, d.name))
                    else:
                        d = r
                    off = d.off
                records.extend(got)
        finally:
            self.close(h)
        return records

    def readdir(self, path: str | bytes, with_dots: bool = False) -> list[bytes]:
        """The names in a directory (without "." and ".." unless asked)."""
        names = []
        for r in self.readdir_entries(path):
            name = r.dirent.name if hasattr(r, "dirent") else r.name
            if with_dots or name not in (b".", b".."):
                names.append(name)
        return names

    def mkdir(self, path: str | bytes, mode: int = 0o755) -> int:
        """MKDIR; return the new nodeid."""
        parent, name = self._parent(path)
        arg = _R["mkdir_in"].record(mode=mode & 0o7777 & ~self.umask, umask=self.umask)
        decoded = self._call(Opcode.MKDIR, parent, arg=arg, names=(name,), ext=self._ext())
        return self._created(parent, name, decoded)

    def mknod(self, path: str | bytes, mode: int, rdev: int = 0) -> int:
        """MKNOD; return the new nodeid."""
        parent, name = self._parent(path)
        arg = _R["mknod_in"].record(mode=mode & ~self.umask, rdev=rdev, umask=self.umask,
                                    padding=0)
        decoded = self._call(Opcode.MKNOD, parent, arg=arg, names=(name,), ext=self._ext())
        return self._created(parent, name, decoded)

    def _remove(self, op: int, path: str | bytes) -> None:
        parent, name = self._parent(path)
        if (parent, name) in self._stale:
            self._lookup(parent, name)
        self._call(op, parent, names=(name,))
        self._drop_dentry((parent, name))

    def rmdir(self, path: str | bytes) -> None:
        """RMDIR."""
        self._remove(Opcode.RMDIR, path)

    def unlink(self, path: str | bytes) -> None:
        """UNLINK."""
        self._remove(Opcode.UNLINK, path)

    def rename(self, old: str | bytes, new: str | bytes, flags: int = 0) -> None:
        """RENAME (flags 0) or RENAME2."""
        op_parent, op_name = self._parent(old)
        np_parent, np_name = self._parent(new)
        if flags:
            if self.minor < 23 or Opcode.RENAME2 in self.enosys:
                raise OSError(_errno.EINVAL, os.strerror(_errno.EINVAL))
            arg = _R["rename2_in"].record(newdir=np_parent, flags=flags, padding=0)
            self._call(Opcode.RENAME2, op_parent, arg=arg, names=(op_name, np_name))
        else:
            self._call(Opcode.RENAME, op_parent, arg=_R["rename_in"].record(newdir=np_parent),
                       names=(op_name, np_name))
        okey, nkey = (op_parent, op_name), (np_parent, np_name)
        if okey == nkey:
            return
        moved = self.dcache.pop(okey, None)
        self._stale.discard(okey)
        if flags & _RENAME_EXCHANGE:
            other = self.dcache.pop(nkey, None)
            self._stale.discard(nkey)
            if other is not None:
                self.dcache[okey] = other
        else:
            self._drop_dentry(nkey)
        if moved is not None:
            self.dcache[nkey] = moved

    def symlink(self, target: str | bytes, path: str | bytes) -> int:
        """SYMLINK (names: the entry name, then the target); return the nodeid."""
        parent, name = self._parent(path)
        decoded = self._call(Opcode.SYMLINK, parent, names=(name, os.fsencode(target)),
                             ext=self._ext())
        return self._created(parent, name, decoded)

    def readlink(self, path: str | bytes) -> bytes:
        """READLINK."""
        return bytes(self._call(Opcode.READLINK, self.resolve(path)))

    def link(self, old: str | bytes, new: str | bytes) -> int:
        """LINK (header nodeid = the new parent); return the nodeid."""
        nodeid = self.resolve(old)
        parent, name = self._parent(new)
        decoded = self._call(Opcode.LINK, parent, arg=_R["link_in"].record(oldnodeid=nodeid),
                             names=(name,))
        return self._created(parent, name, decoded)

    def truncate(self, path: str | bytes, size: int) -> Any:
        """SETATTR(SIZE | LOCKOWNER) like truncate(2); return the new attr."""
        return self._setattr(self.resolve(path), FATTR.SIZE | FATTR.LOCKOWNER, size=size)

    def chmod(self, path: str | bytes, mode: int) -> Any:
        """SETATTR(MODE) with the file type bits kept, like chmod(2)."""
        nodeid = self.resolve(path)
        cur = self._call(Opcode.GETATTR, nodeid, arg=_R["getattr_in"].zero()).attr
        return self._setattr(nodeid, FATTR.MODE, mode=(cur.mode & ~0o7777) | (mode & 0o7777))

    def setxattr(self, path: str | bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        """SETXATTR."""
        arg = _R["setxattr_in"].record(size=len(value), flags=flags, setxattr_flags=0,
                                       padding=0)
        self._call(Opcode.SETXATTR, self.resolve(path), arg=arg, names=(name,), data=value)

    def _xattr(self, op: int, nodeid: int, names: tuple[bytes, ...], size: int | None) -> Any:
        if size is not None:
            return self._call(op, nodeid, arg=_R["getxattr_in"].record(size=size, padding=0),
                              names=names)
        while True:
            probe = self._call(op, nodeid, arg=_R["getxattr_in"].record(size=0, padding=0),
                               names=names)
            if probe.size == 0:
                return b""
            try:
                return self._call(op, nodeid,
                                  arg=_R["getxattr_in"].record(size=probe.size, padding=0),
                                  names=names)
            except OSError as exc:
                if exc.errno != _errno.ERANGE:
                    raise

    def getxattr(self, path: str | bytes, name: bytes, size: int | None = None) -> Any:
        """GETXATTR with the size probe (size 0 first) unless ``size`` is given."""
        return self._xattr(Opcode.GETXATTR, self.resolve(path), (name,), size)

    def listxattr(self, path: str | bytes) -> list[bytes]:
        """LISTXATTR with the size probe; the names."""
        raw = self._xattr(Opcode.LISTXATTR, self.resolve(path), (), None)
        return [n for n in bytes(raw).split(b"\0") if n]

    def removexattr(self, path: str | bytes, name: bytes) -> None:
        """REMOVEXATTR."""
        self._call(Opcode.REMOVEXATTR, self.resolve(path), names=(name,))

    def statfs(self, path: str | bytes = "/") -> Any:
        """STATFS: the kstatfs record."""
        return self._call(Opcode.STATFS, self.resolve(path)).st

    def access(self, path: str | bytes, mask: int) -> None:
        """ACCESS (ENOSYS is remembered and then means success)."""
        if Opcode.ACCESS in self.enosys:
            return
        err, _ = self.request(Opcode.ACCESS, self.resolve(path),
                              arg=_R["access_in"].record(mask=mask, padding=0))
        if err and err != _errno.ENOSYS:
            raise OSError(err, os.strerror(err))

    def open_handles(self) -> int:
        """How many emulator handles are open."""
        return len(self._handles)
