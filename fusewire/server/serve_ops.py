"""The server function of every upstream opcode: a request in, an Operations call, reply bytes out.

Each opcode row of :data:`fusewire.opcodes.OPS` names its function here in
its ``serve`` field (``_op_lookup``...); the dispatcher binds them from the
rows.  Each function reads the request's typed record (``req.arg``), calls
the :class:`~fusewire.Operations` method, and encodes the reply body with
the structs derived from the schemas (:data:`~fusewire.structs.codec.CODECS`)
for the row's ``reply``/``reply_struct``; GETATTR and LOOKUP pack header and
body in one fused format and retire the request themselves (the hot path).
A value of the wrong type fails here and becomes EIO (the dispatcher's
errno policy).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fusewire.connection import Connection, Pairs, Request
from fusewire.errors import LocalProtocolError
from fusewire.handles import SessionHandles
from fusewire.opcodes.flags import (
    FATTR,
    FSYNC,
    FUSE_ROOT_ID,
    GETATTR,
    LK,
    RELEASE,
    WRITE,
    Opcode,
)
from fusewire.operations import Operations
from fusewire.readdir import ReaddirToken
from fusewire.server.draft_serve import Buffers
from fusewire.server.replies import (
    attr_fields,
    attr_out_bytes,
    entry_bytes,
    open_out_bytes,
    statx_bytes,
)
from fusewire.structs.codec import CODECS
from fusewire.structs.records import (
    AccessIn,
    BatchForgetIn,
    BmapIn,
    CopyFileRangeIn,
    CreateIn,
    FallocateIn,
    FlushIn,
    ForgetIn,
    FsyncIn,
    GetattrIn,
    GetxattrIn,
    InitIn,
    InterruptIn,
    IoctlIn,
    LinkIn,
    LkIn,
    LseekIn,
    MkdirIn,
    MknodIn,
    NotifyRetrieveIn,
    OpenIn,
    PollIn,
    ReadIn,
    ReleaseIn,
    Rename2In,
    RenameIn,
    SetattrIn,
    SetxattrIn,
    StatxIn,
    SyncfsIn,
    WriteIn,
)
from fusewire.types import (
    EntryAttributes,
    FUSEError,
    Lock,
    Pending,
    RequestContext,
    SetattrFields,
)
from fusewire.types import timeout_parts as _ts

__all__ = ["OpServing"]

log = logging.getLogger("fusewire.server.dispatch")

#: FUSE_WRITE_KILL_SUIDGID as a plain int (tested on every WRITE)
_WRITE_KILL_SUIDGID = int(WRITE.KILL_SUIDGID)

_ENTRY = CODECS["entry_out"].struct
_ATTR_OUT = CODECS["attr_out"].struct
_OPEN_OUT = CODECS["open_out"].struct
_WRITE_OUT = CODECS["write_out"].struct
_LSEEK_OUT = CODECS["lseek_out"].struct
_COPY_OUT_64 = CODECS["copy_file_range_out"].struct
_IOCTL_OUT = CODECS["ioctl_out"].struct
_POLL_OUT = CODECS["poll_out"].struct
_BMAP_OUT = CODECS["bmap_out"].struct
_LK_OUT = CODECS["lk_out"].struct
_STATFS_OUT = CODECS["statfs_out"].struct
_GETXATTR_OUT = CODECS["getxattr_out"].struct
_OUT_HDR = CODECS["out_header"].struct
_PACK_HDR = _OUT_HDR.pack
_STATX_OUT = CODECS["statx_out"].struct
_COMPOUND_OUT = CODECS["compound_out"].struct
_IN_HEADER = CODECS["in_header"]
_ENTRY2_NODEID = CODECS["entry2_out"].head(1)
#: fuse_out_header and a full-size fuse_attr_out packed in one call (the GETATTR
#: fast path: one bytes object, no list of parts to size up)
_HDR_ATTR_OUT = struct.Struct(_OUT_HDR.format + _ATTR_OUT.format.lstrip("<="))
_HDR_ATTR_OUT_SIZE = _HDR_ATTR_OUT.size
_HDR_ENTRY = struct.Struct(_OUT_HDR.format + _ENTRY.format.lstrip("<="))
_HDR_ENTRY_SIZE = _HDR_ENTRY.size
_NS = 1_000_000_000
_U64 = 0xFFFFFFFFFFFFFFFF
_RESEND_MASK = (1 << 63) - 1
_LK_OFFSET_MAX = (1 << 63) - 1
# Flag bits as plain ints: ``int & IntFlag`` builds an IntFlag (~1 µs) per use, a
# plain ``&`` costs ~10 ns; these are tested on every SETATTR, RELEASE and FSYNC.
_ATIME = int(FATTR.ATIME)
_ATIME_NOW = int(FATTR.ATIME_NOW)
_MTIME = int(FATTR.MTIME)
_MTIME_NOW = int(FATTR.MTIME_NOW)
_ATIME_ANY = _ATIME | _ATIME_NOW
_MTIME_ANY = _MTIME | _MTIME_NOW
_F_CTIME = int(FATTR.CTIME)
_F_MODE = int(FATTR.MODE)
_F_UID = int(FATTR.UID)
_F_GID = int(FATTR.GID)
_F_SIZE = int(FATTR.SIZE)
_F_KILL_SUIDGID = int(FATTR.KILL_SUIDGID)
_F_FH = int(FATTR.FH)
_FLOCK_UNLOCK = int(RELEASE.FLOCK_UNLOCK)
_FDATASYNC = int(FSYNC.FDATASYNC)
_READDIRPLUS = int(Opcode.READDIRPLUS)


def _data(value: Any, handler: str) -> bytes | bytearray | memoryview:
    """``value`` if it can go to writev as reply data with ``len()`` its size in bytes.

    A ``str``, a list or any other object is a TypeError here, where the
    dispatcher turns it into EIO, instead of in ``writev``.
    """
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, memoryview):
        if value.itemsize == 1 and value.ndim == 1 and value.c_contiguous:
            return value
        return value.tobytes()
    raise TypeError(f"{handler}() must return bytes, not {type(value).__name__}")


class OpServing:
    """The :class:`~fusewire.server.dispatch.Dispatcher`'s opcode functions (a mixin)."""

    if TYPE_CHECKING:
        ops: Operations
        conn: Connection
        nodes: Any
        pending: dict[int, Pending]
        handles: SessionHandles | None
        initialized: bool
        init_error: BaseException | None
        fatal: BaseException | None
        aloop: Any
        _private_loop: Any
        _tasks: set[Any]
        _tls: Any
        async_handlers: frozenset[str]
        _flush_owner: bool
        _retire: Callable[[int], None]

        @property
        def _lookups(self) -> list[int]: ...
        def implemented(self, handler: str) -> bool: ...
        def _install_draft(self) -> None: ...
        def _ok(self, req: Request[Any, Any], *payload: Any) -> Buffers: ...
        def _ctx(self, req: Request[Any, Any], umask: int = 0) -> RequestContext: ...

    def _entry(self, req: Request[Any, Any], attr: EntryAttributes, *,
               create: bool = False) -> bytes:
        if create and attr.st_ino in (0, FUSE_ROOT_ID):
            raise LocalProtocolError(f"{req.info.name} returned nodeid {attr.st_ino}")
        data = entry_bytes(attr)
        session = self.conn.session
        assert session is not None
        size = session.sizes["entry_out"]
        if size != 128:
            data = data[:size]
        if session.lookup_handle is not None:
            data += self._handle_suffix(req.opcode, attr)
        if attr.st_ino:
            self._tls.lookups.append(attr.st_ino)
        return data

    def _handle_suffix(self, opcode: int, attr: EntryAttributes) -> bytes:
        """DRAFT: the ``fuse_file_handle`` element that follows an entry_out, if any."""
        if self.handles is None:
            self._install_draft()
        assert self.handles is not None
        if opcode not in self.handles.profile.handle_replies:
            return b""
        return self.handles.element_for(attr.st_ino)

    def _attr_reply(self, req: Request[Any, Any], a: EntryAttributes) -> Buffers:
        session = self.conn.session
        assert session is not None
        size = session.sizes["attr_out"]
        if size != 104:
            return self._ok(req, attr_out_bytes(a)[:size])
        # The hot path (GETATTR at 7.9+): header and attr_out in one pack.
        unique = req.unique
        self._retire(unique)
        t = a.attr_timeout
        if t > 0:
            whole = int(t)
            return [_HDR_ATTR_OUT.pack(_HDR_ATTR_OUT_SIZE, 0, unique, whole,
                                       int((t - whole) * _NS), 0, *attr_fields(a))]
        return [_HDR_ATTR_OUT.pack(_HDR_ATTR_OUT_SIZE, 0, unique, 0, 0, 0, *attr_fields(a))]

    # -- INIT and library-handled opcodes -----------------------------------------

    def _op_init(self, req: Request[InitIn, bytes]) -> Buffers:
        bufs = self.conn.initialize(req)
        if self.conn.session is not None and not self.initialized:
            self.initialized = True
            self._install_draft()
            try:
                self.ops.init()
            except Exception as exc:
                # INIT is answered with an error, which leaves the connection
                # unusable: stop serving (the server raises from ``fatal``)
                self.init_error = self.fatal = exc
                raise
        return bufs

    def _op_destroy(self, req: Request[None, bytes]) -> Buffers:
        self.ops.destroy()
        return self._ok(req)

    def _op_interrupt(self, req: Request[InterruptIn, bytes]) -> Buffers | None:
        # The connection already marked the target (or keeps the mark until the
        # target arrives); a deferred target is told now.  A reply is optional.
        self.conn.forget_inflight(req.unique)
        p = self.pending.get(req.arg.unique & _RESEND_MASK)
        if p is not None:
            p.interrupt()
        return None

    def _op_notify_reply(self, req: Request[NotifyRetrieveIn, memoryview]) -> None:
        callback = getattr(self.ops.notifier, "retrieve_reply", None)
        if callback is not None:
            callback(req.unique, req.nodeid, req.arg.offset, bytes(req.data))

    # -- names and attributes -------------------------------------------------------

    def _op_lookup(self, req: Request[None, bytes]) -> Buffers:
        a = self.ops.lookup(req.nodeid, req.names[0], self._ctx(req))
        session = self.conn.session
        assert session is not None
        if session.sizes["entry_out"] != 128 or session.lookup_handle is not None:
            return self._ok(req, self._entry(req, a))
        # The hot path: header and a full-size entry_out in one pack.
        if a.st_ino:
            self._tls.lookups.append(a.st_ino)
        unique = req.unique
        self._retire(unique)
        ev, evn = _ts(a.entry_timeout)
        av, avn = _ts(a.attr_timeout)
        return [_HDR_ENTRY.pack(_HDR_ENTRY_SIZE, 0, unique, a.st_ino, a.generation, ev, av,
                                evn, avn, *attr_fields(a))]

    def _op_forget(self, req: Request[ForgetIn | BatchForgetIn, bytes | Pairs]) -> None:
        arg, data = req.arg, req.data
        pairs: Pairs
        if isinstance(arg, ForgetIn):
            pairs = ((req.nodeid, arg.nlookup),)
        else:               # BATCH_FORGET: the parser checked count against the pairs
            pairs = data if isinstance(data, tuple) else ()
        given = []
        for nodeid, nlookup in pairs:
            taken = self.nodes.forget(nodeid, nlookup)
            if taken:
                given.append((nodeid, taken))
        if given:
            try:
                forget: Callable[..., Any] = self.ops.forget
                result = forget(given)
                if "forget" in self.async_handlers:
                    self._background(result)
            except Exception:
                log.exception("forget raised")
        return None

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine nobody waits for (an async ``forget``); log what it raises."""
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("forget raised")

        loop = self.aloop
        if loop is None:
            if self._private_loop is None:
                import asyncio

                self._private_loop = asyncio.new_event_loop()
            self._private_loop.run_until_complete(run())
            return
        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    _op_batch_forget = _op_forget

    def _op_getattr(self, req: Request[GetattrIn, bytes]) -> Buffers:
        return self._attr_reply(req, self.ops.getattr(req.nodeid, self._ctx(req)))

    def _op_setattr(self, req: Request[SetattrIn, bytes]) -> Buffers:
        a = req.arg
        valid = a.valid
        now = time.time_ns()
        attr = EntryAttributes(req.nodeid, st_mode=a.mode, st_uid=a.uid, st_gid=a.gid,
                               st_size=a.size)
        fields = SetattrFields(
            update_atime=bool(valid & _ATIME_ANY),
            update_mtime=bool(valid & _MTIME_ANY),
            update_ctime=bool(valid & _F_CTIME),
            update_mode=bool(valid & _F_MODE), update_uid=bool(valid & _F_UID),
            update_gid=bool(valid & _F_GID), update_size=bool(valid & _F_SIZE),
            atime_now=bool(valid & _ATIME_NOW), mtime_now=bool(valid & _MTIME_NOW),
            kill_suidgid=bool(valid & _F_KILL_SUIDGID),
        )
        attr.st_atime_ns = now if fields.atime_now else a.atime * _NS + a.atimensec
        attr.st_mtime_ns = now if fields.mtime_now else a.mtime * _NS + a.mtimensec
        attr.st_ctime_ns = a.ctime * _NS + a.ctimensec if fields.update_ctime else now
        fh = a.fh if valid & _F_FH else None
        new = self.ops.setattr(req.nodeid, attr, fields, fh, self._ctx(req))
        return self._attr_reply(req, new)

    def _op_readlink(self, req: Request[None, bytes]) -> Buffers:
        return self._ok(req, _data(self.ops.readlink(req.nodeid, self._ctx(req)), "readlink"))

    def _op_statx(self, req: Request[StatxIn, bytes]) -> Buffers:
        a = req.arg
        fh = a.fh if a.getattr_flags & GETATTR.FH else None
        st = self.ops.statx(req.nodeid, fh, a.sx_flags, a.sx_mask, self._ctx(req))
        return self._ok(req, statx_bytes(st))

    # -- creating and removing names -------------------------------------------------

    def _op_mknod(self, req: Request[MknodIn, bytes]) -> Buffers:
        a = req.arg
        attr = self.ops.mknod(req.nodeid, req.names[0], a.mode, a.rdev,
                              self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_mkdir(self, req: Request[MkdirIn, bytes]) -> Buffers:
        a = req.arg
        attr = self.ops.mkdir(req.nodeid, req.names[0], a.mode, self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_symlink(self, req: Request[None, bytes]) -> Buffers:
        name, target = req.names
        attr = self.ops.symlink(req.nodeid, name, target, self._ctx(req))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_unlink(self, req: Request[None, bytes]) -> Buffers:
        self.ops.unlink(req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req)

    def _op_rmdir(self, req: Request[None, bytes]) -> Buffers:
        self.ops.rmdir(req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req)

    def _op_rename(self, req: Request[RenameIn | Rename2In, bytes]) -> Buffers:
        a = req.arg
        flags = a.flags if isinstance(a, Rename2In) else 0
        self.ops.rename(req.nodeid, req.names[0], a.newdir, req.names[1], flags,
                        self._ctx(req))
        return self._ok(req)

    _op_rename2 = _op_rename

    def _op_link(self, req: Request[LinkIn, bytes]) -> Buffers:
        attr = self.ops.link(req.arg.oldnodeid, req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req, self._entry(req, attr, create=True))

    def _op_create(self, req: Request[CreateIn, bytes]) -> Buffers:
        a = req.arg
        fi, attr = self.ops.create(req.nodeid, req.names[0], a.mode, a.flags,
                                   self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True), open_out_bytes(fi))

    def _op_tmpfile(self, req: Request[CreateIn, bytes]) -> Buffers:
        a = req.arg
        fi, attr = self.ops.tmpfile(req.nodeid, a.mode, a.flags, self._ctx(req, a.umask))
        return self._ok(req, self._entry(req, attr, create=True), open_out_bytes(fi))

    # -- files -------------------------------------------------------------------------

    def _op_open(self, req: Request[OpenIn, bytes]) -> Buffers:
        fi = self.ops.open(req.nodeid, req.arg.flags, self._ctx(req))
        return self._ok(req, open_out_bytes(fi))

    def _op_read(self, req: Request[ReadIn, bytes]) -> Buffers:
        a = req.arg
        data = self.ops.read(a.fh, a.offset, a.size)
        kind = type(data)
        if kind is not bytes and kind is not bytearray:
            data = _data(data, "read")
        if len(data) > a.size:
            raise LocalProtocolError(f"read returned {len(data)} bytes for size {a.size}")
        return self._ok(req, data)

    def _op_write(self, req: Request[WriteIn, memoryview]) -> Buffers:
        a = req.arg
        if a.write_flags & _WRITE_KILL_SUIDGID:
            self.ops.write_kill_suidgid(a.fh, self._ctx(req))
        n = self.ops.write(a.fh, a.offset, req.data)
        if n > len(req.data):
            raise LocalProtocolError(f"write returned {n} for {len(req.data)} bytes")
        return self._ok(req, _WRITE_OUT.pack(n, 0))

    def _op_flush(self, req: Request[FlushIn, bytes]) -> Buffers:
        a = req.arg
        if self._flush_owner:
            self.ops.flush(a.fh, a.lock_owner)
        else:
            self.ops.flush(a.fh)
        return self._ok(req)

    def _op_release(self, req: Request[ReleaseIn, bytes]) -> Buffers:
        a = req.arg
        if a.release_flags & _FLOCK_UNLOCK and self.implemented("flock"):
            try:
                self.ops.flock(a.fh, a.lock_owner, fcntl.LOCK_UN, False, self._ctx(req))
            except FUSEError:
                pass
        self.ops.release(a.fh)
        return self._ok(req)

    def _op_fsync(self, req: Request[FsyncIn, bytes]) -> Buffers:
        self.ops.fsync(req.arg.fh, bool(req.arg.fsync_flags & _FDATASYNC))
        return self._ok(req)

    def _op_fallocate(self, req: Request[FallocateIn, bytes]) -> Buffers:
        a = req.arg
        self.ops.fallocate(a.fh, a.mode, a.offset, a.length, self._ctx(req))
        return self._ok(req)

    def _op_lseek(self, req: Request[LseekIn, bytes]) -> Buffers:
        a = req.arg
        # loff_t travels as u64: a negative offset from the caller arrives >= 2**63
        offset = a.offset - (1 << 64) if a.offset >> 63 else a.offset
        off = self.ops.lseek(a.fh, offset, a.whence, self._ctx(req))
        return self._ok(req, _LSEEK_OUT.pack(off))

    def _op_copy_file_range(self, req: Request[CopyFileRangeIn, bytes]) -> Buffers:
        a = req.arg
        n = self.ops.copy_file_range(a.fh_in, a.off_in, a.nodeid_out, a.fh_out, a.off_out,
                                     a.len, a.flags, self._ctx(req))
        if n > a.len:
            raise LocalProtocolError(f"copy_file_range returned {n} for len {a.len}")
        if req.opcode == Opcode.COPY_FILE_RANGE:
            return self._ok(req, _WRITE_OUT.pack(min(n, 0xFFFFFFFF), 0))
        return self._ok(req, _COPY_OUT_64.pack(n))

    _op_copy_file_range_64 = _op_copy_file_range

    def _op_ioctl(self, req: Request[IoctlIn, memoryview]) -> Buffers:
        a = req.arg
        result, out = self.ops.ioctl(a.fh, a.cmd, a.arg, bytes(req.data), a.out_size, a.flags,
                                     self._ctx(req))
        data = _data(out, "ioctl")
        if len(data) > a.out_size:
            raise LocalProtocolError(f"ioctl returned {len(data)} bytes > out_size {a.out_size}")
        return self._ok(req, _IOCTL_OUT.pack(result, 0, 0, 0), data)

    def _op_poll(self, req: Request[PollIn, bytes]) -> Buffers:
        a = req.arg
        revents = self.ops.poll(a.fh, a.kh, a.events, a.flags, self._ctx(req))
        return self._ok(req, _POLL_OUT.pack(revents, 0))

    def _op_bmap(self, req: Request[BmapIn, bytes]) -> Buffers:
        a = req.arg
        block = self.ops.bmap(req.nodeid, a.blocksize, a.block, self._ctx(req))
        return self._ok(req, _BMAP_OUT.pack(block))

    # -- locks ---------------------------------------------------------------------------

    def _op_getlk(self, req: Request[LkIn, bytes]) -> Buffers:
        a = req.arg
        lk = a.lk
        got = self.ops.getlk(a.fh, a.owner, Lock(lk.start, lk.end, lk.type, lk.pid),
                             self._ctx(req))
        return self._ok(req, _LK_OUT.pack(got.start, got.end, got.type, got.pid))

    def _op_setlk(self, req: Request[LkIn, bytes]) -> Buffers:
        a = req.arg
        lk = a.lk
        sleep = req.opcode == Opcode.SETLKW
        if a.lk_flags & LK.FLOCK:
            op = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX}.get(
                lk.type, fcntl.LOCK_UN)
            self.ops.flock(a.fh, a.owner, op, sleep, self._ctx(req))
        else:
            self.ops.setlk(a.fh, a.owner, Lock(lk.start, lk.end, lk.type, lk.pid), sleep,
                           self._ctx(req))
        return self._ok(req)

    _op_setlkw = _op_setlk

    # -- directories ---------------------------------------------------------------------

    def _op_opendir(self, req: Request[OpenIn, bytes]) -> Buffers:
        fh = self.ops.opendir(req.nodeid, self._ctx(req))
        return self._ok(req, _OPEN_OUT.pack(fh, 0, 0))

    def _op_readdir(self, req: Request[ReadIn, bytes]) -> Buffers:
        a = req.arg
        plus = req.opcode == _READDIRPLUS
        token = ReaddirToken(a.size, plus, entry_bytes if plus else None)
        self.ops.readdir(a.fh, a.offset, token)
        self._lookups.extend(token.counted)
        return self._ok(req, token.buf)

    _op_readdirplus = _op_readdir

    def _op_releasedir(self, req: Request[ReleaseIn, bytes]) -> Buffers:
        self.ops.releasedir(req.arg.fh)
        return self._ok(req)

    def _op_fsyncdir(self, req: Request[FsyncIn, bytes]) -> Buffers:
        self.ops.fsyncdir(req.arg.fh, bool(req.arg.fsync_flags & _FDATASYNC))
        return self._ok(req)

    # -- filesystem-wide -------------------------------------------------------------------

    def _op_statfs(self, req: Request[None, bytes]) -> Buffers:
        s = self.ops.statfs(self._ctx(req))
        body = _STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                s.f_bsize, s.f_namemax, s.f_frsize, 0, 0, 0, 0, 0, 0, 0)
        session = self.conn.session
        assert session is not None
        return self._ok(req, body[:session.sizes["statfs_out"]])

    def _op_syncfs(self, req: Request[SyncfsIn, bytes]) -> Buffers:
        self.ops.syncfs(self._ctx(req))
        return self._ok(req)

    def _op_access(self, req: Request[AccessIn, bytes]) -> Buffers:
        if not self.ops.access(req.nodeid, req.arg.mask, self._ctx(req)):
            raise FUSEError(errno.EACCES)
        return self._ok(req)

    # -- xattrs ------------------------------------------------------------------------------

    def _op_setxattr(self, req: Request[SetxattrIn, memoryview]) -> Buffers:
        self.ops.setxattr(req.nodeid, req.names[0], bytes(req.data), req.arg.flags,
                          self._ctx(req))
        return self._ok(req)

    def _xattr_reply(self, req: Request[Any, Any],
                     value: bytes | bytearray | memoryview) -> Buffers:
        size = req.arg.size
        if size == 0:
            return self._ok(req, _GETXATTR_OUT.pack(len(value), 0))
        if len(value) > size:
            raise FUSEError(errno.ERANGE)
        return self._ok(req, value)

    def _op_getxattr(self, req: Request[GetxattrIn, bytes]) -> Buffers:
        return self._xattr_reply(req, _data(self.ops.getxattr(req.nodeid, req.names[0],
                                                              self._ctx(req)), "getxattr"))

    def _op_listxattr(self, req: Request[GetxattrIn, bytes]) -> Buffers:
        names = self.ops.listxattr(req.nodeid, self._ctx(req))
        return self._xattr_reply(req, b"".join(n + b"\0" for n in names))

    def _op_removexattr(self, req: Request[None, bytes]) -> Buffers:
        self.ops.removexattr(req.nodeid, req.names[0], self._ctx(req))
        return self._ok(req)

