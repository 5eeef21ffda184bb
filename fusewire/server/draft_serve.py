"""DRAFT: the dispatcher's server functions for the stable-handle profiles.

LOOKUP_HANDLE (RFC v2 and v3), MKOBJ_HANDLE, fusewire's REVALIDATE_FH and
READDIRPLUS with handles, and RFC v3's FUSE_COMPOUND.  The rows of
:data:`fusewire.opcodes.DRAFT_OPS` name these functions (``serve``); the
:class:`~fusewire.server.dispatch.Dispatcher` inherits them from
:class:`DraftServing` and binds them when INIT negotiated a profile.  Layouts:
:mod:`fusewire.handles` and docs/draft-handles.md.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fusewire import handles as _fh
from fusewire.connection import Connection, Request, encode_error, parse_request
from fusewire.errors import LocalProtocolError, RemoteProtocolError, errno_of
from fusewire.handles import PARENT_HANDLE_OPS, SessionHandles
from fusewire.opcodes.flags import (
    DRAFT_FUSE_COMPOUND,
    DRAFT_FUSE_COMPOUND_ATOMIC,
    DRAFT_FUSE_LOOKUP_HANDLE_V3,
    DRAFT_FUSE_MKOBJ_HANDLE_V3,
    FUSE_ROOT_ID,
    Opcode,
)
from fusewire.opcodes.table import OPS, OpInfo, Reply, ops_for_profile
from fusewire.operations import Operations
from fusewire.server.replies import entry_bytes, open_out_bytes, statx_bytes
from fusewire.structs.codec import CODECS
from fusewire.types import EntryAttributes, FileInfo, FUSEError, RequestContext

__all__ = ["Buffers", "DraftServing"]

log = logging.getLogger("fusewire.server.dispatch")

#: reply buffers for writev (bytes-like parts)
Buffers = list[Any]

_OUT_HDR = CODECS["out_header"].struct
_PACK_HDR = _OUT_HDR.pack
_COMPOUND_OUT = CODECS["compound_out"].struct
_IN_HEADER = CODECS["in_header"]
_ENTRY2_NODEID = CODECS["entry2_out"].head(1)


class DraftServing:
    """Mixin of the dispatcher: the draft profiles' server functions."""

    # provided by fusewire.server.dispatch.Dispatcher
    ops: Operations
    conn: Connection
    handles: SessionHandles | None
    nodes: Any  # the dispatcher's NodeTable
    _handlers: dict[int, Callable[[Request], Buffers | None]]
    _resolved: dict[int, Callable[[Request], Buffers | None]]

    if TYPE_CHECKING:
        @property
        def _lookups(self) -> list[int]: ...
        def _bind(self, code: int, row: OpInfo) -> None: ...
        def implemented(self, handler: str) -> bool: ...
        def _resolve(self, info: OpInfo) -> Callable[[Request], Buffers | None]: ...
        def _error(self, req: Request, err: int) -> Buffers | None: ...
        def _failure(self, req: Request, exc: BaseException) -> Buffers | None: ...
        def _ok(self, req: Request, *payload: Any) -> Buffers: ...
        def _ctx(self, req: Request, umask: int = 0) -> RequestContext: ...
        def _entry(self, req: Request, attr: EntryAttributes, *,
                   create: bool = False) -> bytes: ...

    # -- DRAFT: stable-handle profiles (fusewire.handles) ---------------------------

    def _install_draft(self) -> None:
        """Serve the session's stable-handle profile, if one was negotiated.

        Requests that may name their parent by handle get it checked first,
        and the profile's own opcodes are bound (rfc-v2: LOOKUP_HANDLE 54;
        rfc-v3: COMPOUND 54, LOOKUP_HANDLE 55, MKOBJ_HANDLE 56; fusewire:
        55, 56, REVALIDATE_FH 57 and READDIRPLUS with handles).  Without a
        profile nothing here runs and nothing changes.
        """
        session = self.conn.session
        if session is None or session.lookup_handle is None or self.handles is not None:
            return
        self.handles = handles = SessionHandles(self.ops, session)
        table = self._handlers
        profile = handles.profile
        name = profile.name
        if name != "rfc-v3":
            # rfc-v2: the in-arg after the names; fusewire: a FUSE_EXT_HANDLE
            for op in PARENT_HANDLE_OPS:
                fn = table.get(op)
                if fn is not None:
                    table[op] = self._with_parent(fn)
        # the profile's own rows (and any upstream row it serves differently)
        # name their server functions, as the upstream rows do
        for code, row in ops_for_profile(name).items():
            upstream = OPS.get(code)
            if row.serve is not None and (upstream is None or upstream.serve != row.serve):
                self._bind(code, row)
        self._resolved.clear()

    def _with_parent(self, fn: Callable[[Request], Buffers | None]
                     ) -> Callable[[Request], Buffers | None]:
        def checked(req: Request) -> Buffers | None:
            ext = req.ext
            if ext is not None and ext.handle:
                assert self.handles is not None
                self.handles.check_parent(req.nodeid, ext.handle)
            return fn(req)
        return checked

    def _op_readdirplus_handles(self, req: Request) -> Buffers:
        assert self.handles is not None
        a = req.arg
        token = self.handles.readdir_token(a.size, entry_bytes)
        self.ops.readdir(a.fh, a.offset, token)
        self._lookups.extend(token.counted)
        return self._ok(req, token.buf)

    def _by_handle(self, req: Request, handle: bytes) -> EntryAttributes:
        """LOOKUP_HANDLE of an object's own handle: resolve, then one counted lookup."""
        assert self.handles is not None
        inode = self.handles.resolve(handle)
        if req.nodeid and inode != req.nodeid:
            raise FUSEError(errno.ESTALE)
        attr = self.ops.lookup_inode(inode, self._ctx(req))
        if attr.st_ino != inode:
            raise LocalProtocolError(f"lookup_inode({inode}) answered st_ino {attr.st_ino}")
        return attr

    def _lookup_under_parent_handle(self, req: Request) -> tuple[SessionHandles, EntryAttributes]:
        """The RFC LOOKUP_HANDLE's lookup: the parent handle (if sent) checked first."""
        handles = self.handles
        assert handles is not None
        ext = req.ext
        if ext is not None and ext.handle:
            handles.check_parent(req.nodeid, ext.handle)
        return handles, self.ops.lookup(req.nodeid, req.names[0], self._ctx(req))

    def _op_lookup_handle_rfc_v2(self, req: Request) -> Buffers:
        """RFC v2 LOOKUP_HANDLE (54): LOOKUP with the parent's handle; entry_out + handle."""
        _, attr = self._lookup_under_parent_handle(req)
        return self._ok(req, self._entry(req, attr))

    def _op_lookup_handle_rfc_v3(self, req: Request) -> Buffers:
        """RFC v3 LOOKUP_HANDLE (55): by name (+ parent handle); entry2_out + handle.

        The posted v3 code has no use for a negative entry (it would iget
        nodeid 0), so no-such-name is ENOENT.
        """
        handles, attr = self._lookup_under_parent_handle(req)
        if not attr.st_ino:
            raise FUSEError(errno.ENOENT)
        data = handles.entry2_bytes(attr)
        self._lookups.append(attr.st_ino)
        return self._ok(req, data)

    def _mkobj_create(self, req: Request) -> tuple[FileInfo, EntryAttributes]:
        handles = self.handles
        assert handles is not None
        a = req.arg
        if a.mode & 0o170000 not in (0, 0o100000):
            raise FUSEError(errno.EINVAL)  # create-and-open: regular files only
        if req.ext is not None and req.ext.handle:
            handles.check_parent(req.nodeid, req.ext.handle)
        if not self.implemented("create"):
            raise FUSEError(errno.ENOSYS)
        fi, attr = self.ops.create(req.nodeid, req.names[0], a.mode, a.flags,
                                   self._ctx(req, a.umask))
        if attr.st_ino in (0, FUSE_ROOT_ID):
            raise LocalProtocolError(f"MKOBJ_HANDLE returned nodeid {attr.st_ino}")
        return fi, attr

    def _op_mkobj_handle_rfc_v3(self, req: Request) -> Buffers:
        """RFC v3 MKOBJ_HANDLE (56) on its own: create; entry2_out + handle, nothing open.

        The posted kernel only sends it inside an atomic compound with STATX
        and OPEN (see :meth:`_compound_mkobj`); alone it creates the file and
        releases what the filesystem opened.
        """
        handles = self.handles
        assert handles is not None
        fi, attr = self._mkobj_create(req)
        data = handles.entry2_bytes(attr)
        fh = fi.fh if isinstance(fi, FileInfo) else int(fi)
        self.ops.release(fh)
        self._lookups.append(attr.st_ino)
        return self._ok(req, data)

    def _op_lookup_handle_fw(self, req: Request) -> Buffers:
        handles = self.handles
        assert handles is not None
        name = req.names[0]
        handle = req.ext.handle if req.ext is not None else None
        if name:
            if handle:
                handles.check_parent(req.nodeid, handle)
            attr = self.ops.lookup(req.nodeid, name, self._ctx(req))
        elif handle:
            attr = self._by_handle(req, handle)
        else:
            raise FUSEError(errno.EINVAL)
        data = handles.entry2_bytes(attr)
        if attr.st_ino:
            self._lookups.append(attr.st_ino)
        return self._ok(req, data)

    def _op_mkobj_handle_fw(self, req: Request) -> Buffers:
        handles = self.handles
        assert handles is not None
        fi, attr = self._mkobj_create(req)
        data = handles.entry2_bytes(attr)
        self._lookups.append(attr.st_ino)
        return self._ok(req, data, open_out_bytes(fi))

    def _op_revalidate_fh(self, req: Request) -> Buffers:
        handles = self.handles
        assert handles is not None
        a = req.arg
        if a.flags:
            raise FUSEError(errno.EINVAL)
        inode = handles.resolve(handles.profile.parse_request_element(bytes(req.data)))
        if inode != req.nodeid:
            raise FUSEError(errno.ESTALE)
        attr = self.ops.getattr(inode, self._ctx(req))
        if attr.st_ino != inode or attr.generation != a.generation:
            raise FUSEError(errno.ESTALE)
        # No lookup is counted: the kernel keeps the references it had.  A
        # successor without a node table adopts that count, so FORGETs balance.
        missing = a.nlookup - self.nodes.counts.get(inode, 0)
        if missing > 0:
            self._lookups.extend([inode] * missing)
        session = self.conn.session
        assert session is not None
        return self._ok(req, entry_bytes(attr)[:session.sizes["entry_out"]]
                        + handles.element_for(inode))

    # -- DRAFT rfc-v3: FUSE_COMPOUND (compound series v5) -------------------------------------

    def _op_compound(self, req: Request) -> Buffers:
        """FUSE_COMPOUND: ``fuse_compound_in`` + sub-requests in, one sub-reply each out.

        Reply: ``fuse_compound_out {count, flags 0, reserved 0}`` + for each
        sub-request a complete reply (``fuse_out_header`` with the sub-request's
        unique, then its body), in order.  Non-atomic compounds run their
        sub-requests one after the other through this table, each with its
        own error; an atomic one (FUSE_COMPOUND_ATOMIC) is served only in the
        shape the posted kernel sends (MKOBJ_HANDLE + STATX + OPEN, from one
        ``create`` call), any other atomic shape is ENOSYS (the v3 kernel then
        falls back to MKNOD + OPEN).  The posted kernel puts FUSE_ROOT_ID in
        the header of the STATX and OPEN that follow a LOOKUP_HANDLE or
        MKOBJ_HANDLE ("the nodeid for the statx operation in the lookup+statx
        is set to FUSE_ROOT_ID", v3 cover letter); fusewire reads that as the
        object the earlier sub-request returned.
        """
        a = req.arg
        subs = _fh.split_compound(bytes(req.data))
        if a.count != len(subs) or not subs:
            raise FUSEError(errno.EINVAL)
        session = self.conn.session
        assert session is not None
        if a.flags & DRAFT_FUSE_COMPOUND_ATOMIC:
            shape = [s.opcode for s in subs]
            if shape != [DRAFT_FUSE_MKOBJ_HANDLE_V3, Opcode.STATX, Opcode.OPEN]:
                raise FUSEError(errno.ENOSYS)
            replies = self._compound_mkobj(subs)
        else:
            replies = []
            made: tuple[int, int] | None = None   # (nodeid, errno) of the last 55/56
            for sub in subs:
                raw, early = self._sub_target(sub, made)
                if early:
                    out: Buffers = [encode_error(sub.unique, early)]
                else:
                    out = self._run_sub(raw, session)
                if sub.opcode in (DRAFT_FUSE_LOOKUP_HANDLE_V3, DRAFT_FUSE_MKOBJ_HANDLE_V3):
                    made = self._sub_result(out)
                replies.append(b"".join(bytes(b) for b in out))
        head = _COMPOUND_OUT.pack(len(replies), 0, 0)
        return self._ok(req, head, *replies)

    @staticmethod
    def _sub_result(out: Buffers) -> tuple[int, int]:
        raw = b"".join(bytes(b) for b in out)
        _len, error, _unique = _OUT_HDR.unpack_from(raw)
        if error:
            return 0, -error
        return _ENTRY2_NODEID.unpack_from(raw, 16)[0], 0

    @staticmethod
    def _sub_target(sub: _fh.SubRequest, made: tuple[int, int] | None) -> tuple[bytes, int]:
        """A STATX/OPEN sub-request aimed at FUSE_ROOT_ID after a 55/56: the new object."""
        if made is None or sub.nodeid != FUSE_ROOT_ID or sub.opcode not in (Opcode.STATX,
                                                                           Opcode.OPEN):
            return sub.raw, 0
        nodeid, err = made
        if err:
            return sub.raw, err
        hdr = _IN_HEADER.decode(sub.raw, 0)._replace(nodeid=nodeid)
        return _IN_HEADER.struct.pack(*hdr) + sub.raw[40:], 0

    def _run_sub(self, raw: bytes, session: Any) -> Buffers:
        """One sub-request: parsed with this session's table, answered like a request."""
        try:
            sub = parse_request(self._sub_extlen(raw, session), session)
        except RemoteProtocolError as exc:
            return [encode_error(_IN_HEADER.decode(raw, 0).unique, errno_of(exc))]
        info = sub.info
        if info.reply is Reply.NONE or info.opcode in (Opcode.INIT, Opcode.INTERRUPT,
                                                       DRAFT_FUSE_COMPOUND):
            return self._error(sub, errno.EINVAL) or []
        try:
            if sub.opcode == Opcode.STATX and not self.implemented("statx"):
                return self._statx_from_getattr(sub)
            fn = self._resolved.get(sub.opcode) or self._resolve(info)
            out = fn(sub)
        except FUSEError as exc:
            out = self._error(sub, exc.errno)
        except Exception as exc:
            out = self._failure(sub, exc)
        return out or [encode_error(sub.unique, errno.EIO)]

    @staticmethod
    def _sub_extlen(raw: bytes, session: Any) -> bytes:
        """A v5 sub-request (``total_extlen`` 0) with ``total_extlen`` set for the
        extension block that follows its names, if there is one."""
        hdr = _IN_HEADER.decode(raw, 0)
        info = session.table.get(hdr.opcode)
        if info is None or not info.ext or not info.names or hdr.total_extlen:
            return raw
        pos = 40 + (session.sizes[info.request] if info.request else 0)
        for _ in range(info.names):
            z = raw.find(b"\0", pos)
            if z < 0:
                return raw
            pos = z + 1
        tail = _fh.ext_tail(raw, pos)
        return _fh.with_extlen(raw, tail) if tail else raw

    def _statx_from_getattr(self, req: Request) -> Buffers:
        """STATX for a filesystem without ``statx``: ``fuse_statx_out`` from getattr."""
        return self._ok(req, statx_bytes(self.ops.getattr(req.nodeid, self._ctx(req))))

    def _compound_mkobj(self, subs: list[_fh.SubRequest]) -> list[bytes]:
        """The atomic MKOBJ_HANDLE + STATX + OPEN of RFC v3 8/8, from one ``create`` call.

        ``create`` makes and opens the file in one step (as for CREATE), so
        either all three sub-requests succeed or none changed anything: on
        failure each sub-reply carries the error.
        """
        handles = self.handles
        session = self.conn.session
        assert handles is not None and session is not None
        mk = subs[0]
        try:
            req = parse_request(self._sub_extlen(mk.raw, session), session)
        except RemoteProtocolError as exc:
            raise FUSEError(errno_of(exc)) from None
        try:
            fi, attr = self._mkobj_create(req)
            entry = handles.entry2_bytes(attr)
        except FUSEError as exc:
            if exc.errno == errno.ENOSYS:
                raise
            return [encode_error(s.unique, exc.errno) for s in subs]
        self._lookups.append(attr.st_ino)
        parts = (entry, statx_bytes(attr), open_out_bytes(fi))
        return [_PACK_HDR(16 + len(p), 0, s.unique) + p for s, p in zip(subs, parts, strict=True)]
