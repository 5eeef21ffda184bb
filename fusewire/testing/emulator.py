"""An in-process emulated kernel that drives any :class:`~fusewire.Operations`.

:class:`KernelEmulator` plays the kernel's part of the FUSE protocol against
the *same* :class:`~fusewire.connection.Connection` and
:class:`~fusewire.server.dispatch.Dispatcher` a real mount uses: it sends INIT
at the chosen minor, allocates uniques like Linux (steps of 2 from 2;
INTERRUPT = target | 1; bit 63 on resend), keeps per-nodeid lookup counts
(one per entry reply and per counted READDIRPLUS entry) and gives them back
with FORGET / BATCH_FORGET, and checks every reply with
:func:`fusewire.testing.wire.decode_reply`: a reply the kernel would refuse
raises :class:`~fusewire.testing.wire.KernelRuleError` (``strict=True``, the
default) or turns into EIO like on a real mount (``strict=False``).

On top of that raw layer sits a syscall-like API (``stat``, ``open``,
``read``, ``readdir``, ``rename``, xattrs...) that resolves paths with LOOKUP
through a dentry cache, so tests read like user code and raise ``OSError``.
"""

from __future__ import annotations

import errno as _errno
import os
import stat as _stat
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fusewire.connection import Config, Request, Session
from fusewire.connection import Connection as _Connection
from fusewire.errors import RemoteProtocolError
from fusewire.opcodes.flags import (
    FATTR,
    FSYNC,
    FUSE_ROOT_ID,
    FUSE_UNIQUE_RESEND,
    InitFlag,
    NotifyCode,
    Opcode,
)
from fusewire.opcodes.table import Reply
from fusewire.operations import Operations
from fusewire.server.dispatch import Dispatcher, wanted_flags
from fusewire.structs.codec import CODECS
from fusewire.testing.wire import (
    KERNEL_FLAGS,
    DirentPlus,
    EntryWithHandle,
    KernelRuleError,
    decode_notify,
    decode_reply,
    encode_init,
    encode_request,
    make_session,
    split_reply,
)

__all__ = ["DEFAULT_FLAGS", "KernelEmulator", "NoReplyError", "Pending"]

#: What Linux 6.18 offers (flags | flags2 << 32).
DEFAULT_FLAGS = KERNEL_FLAGS
_RENAME_EXCHANGE = 2
_R = CODECS  # shorthand for record classes


class NoReplyError(KernelRuleError):
    """A request that needs a reply got none (the caller would hang forever)."""


@dataclass
class Pending:
    """A request the emulated kernel has sent and the server has read, not yet answered."""

    opcode: int
    unique: int
    nodeid: int
    arg: Any
    names: tuple[bytes, ...]
    data: Any
    ext: bytes
    uid: int
    gid: int
    pid: int
    request: Request | None = None
    error: RemoteProtocolError | None = None


@dataclass
class _Open:
    nodeid: int
    fh: int
    flags: int
    is_dir: bool


def _entry_of(decoded: Any) -> Any:
    if isinstance(decoded, tuple) and not isinstance(decoded, EntryWithHandle) and len(
            decoded) == 2 and not hasattr(decoded, "nodeid"):
        decoded = decoded[0]
    if isinstance(decoded, EntryWithHandle):
        return decoded.entry
    return decoded


class KernelEmulator:
    """The kernel side of one FUSE connection, in process.

    ``ops`` is served through a fresh Connection + Dispatcher (or pass
    ``dispatcher=`` to drive an existing one).  ``minor`` and ``flags`` are
    what the emulated kernel offers in INIT.
    """

    def __init__(self, ops: Operations, minor: int = 45, flags: int = DEFAULT_FLAGS,
                 lookup_handle: str | None = None, *, config: Config | None = None,
                 strict: bool = True, umask: int = 0o022, uid: int | None = None,
                 gid: int | None = None, pid: int | None = None,
                 dispatcher: Dispatcher | None = None) -> None:
        self.ops = ops
        if dispatcher is None:
            base = config or Config(lookup_handle=lookup_handle)
            want = wanted_flags(ops, base.want)
            conn = _Connection(Config(**{**base.__dict__, "want": want}))
            dispatcher = Dispatcher(ops, conn)
        self.dispatcher = dispatcher
        self.conn = dispatcher.conn
        self.offered_minor = minor
        self.offered_flags = flags if minor >= 36 else flags & 0xFFFFFFFF
        self.strict = strict
        self.umask = umask
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.pid = os.getpid() if pid is None else pid
        self._unique = 0
        #: the kernel's view of the session (from the INIT reply)
        self.session: Session | None = None
        #: lookup counts per nodeid, as the kernel holds them
        self.nlookup: dict[int, int] = {}
        #: nodeids whose count went back to 0 (the emulator never sends them again)
        self.forgotten: set[int] = set()
        #: dentry cache: (parent nodeid, name) -> nodeid
        self.dcache: dict[tuple[int, bytes], int] = {}
        self._stale: set[tuple[int, bytes]] = set()
        self.enosys: set[int] = set()
        self.pending: dict[int, Pending] = {}
        self._handles: dict[int, _Open] = {}
        self._next_handle = 3
        #: every message sent: (opcode, unique, nodeid)
        self.history: list[tuple[int, int, int]] = []
        #: number of replies received per opcode
        self.replies: dict[int, int] = {}
        #: test hook: rewrite a reply's bytes before the emulator checks them
        self.reply_filter: Callable[[Pending, bytes], bytes] | None = None
        self.max_read = 128 * 1024
        self.dirbuf = 4096
        self._init()

    # -- uniques and INIT ----------------------------------------------------------

    def next_unique(self) -> int:
        """Allocate a unique as Linux does: 2, 4, 6..."""
        self._unique += 2
        return self._unique

    def _init(self) -> None:
        unique = self.next_unique()
        msg = encode_init(self.offered_minor, self.offered_flags, unique=unique)
        self.history.append((Opcode.INIT, unique, 0))
        bufs, _ = self.dispatcher.dispatch(msg)
        if bufs is None:
            raise NoReplyError("INIT got no reply")
        error, got_unique, body = split_reply(b"".join(bytes(b) for b in bufs))
        if got_unique != unique:
            raise KernelRuleError(f"INIT reply for unique {got_unique:#x}, sent {unique:#x}")
        if error:
            raise OSError(-error, "INIT refused: " + os.strerror(-error))
        if len(body) < 8:
            raise KernelRuleError(f"INIT reply of {len(body)} bytes")
        major, minor = struct.unpack_from("<II", body)
        if major != 7 or minor > self.offered_minor:
            raise KernelRuleError(f"INIT reply speaks {major}.{minor}")
        expected = 64 if minor >= 23 else 24
        if len(body) > 64 or (len(body) != expected and self.strict and minor >= 5):
            raise KernelRuleError(f"INIT reply of {len(body)} bytes at 7.{minor}",
                                  _errno.EINVAL)
        out = _R["init_out"].decode(body + bytes(64 - len(body)))
        flags = out.flags
        if minor >= 36 and flags & InitFlag.INIT_EXT:
            flags |= out.flags2 << 32
        flags &= self.offered_flags | InitFlag.HAS_LOOKUP_HANDLE
        server = self.conn.session
        profile = server.lookup_handle if server is not None else None
        self.session = make_session(minor, flags, profile)
        self.replies[Opcode.INIT] = 1

    @property
    def minor(self) -> int:
        """The negotiated minor."""
        assert self.session is not None
        return self.session.minor

    def has(self, flag: InitFlag) -> bool:
        """Whether ``flag`` was negotiated."""
        assert self.session is not None
        return bool(self.session.flags & flag)

    # -- raw requests ------------------------------------------------------------------

    def submit(self, opcode: int, nodeid: int = 0, *, arg: Any = None,
               names: Sequence[bytes] = (), data: Any = b"", ext: bytes = b"",
               uid: int | None = None, gid: int | None = None,
               pid: int | None = None) -> Pending:
        """Send a request and let the server *read* it (not answer yet)."""
        assert self.session is not None
        if nodeid and nodeid != FUSE_ROOT_ID and nodeid in self.forgotten and \
                nodeid not in self.nlookup:
            raise KernelRuleError(f"emulator would use forgotten nodeid {nodeid}")
        row = self.session.table.get(opcode)
        if row is not None and row.since > self.minor:
            raise KernelRuleError(f"{row.name} does not exist at 7.{self.minor}")
        background = opcode in (Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.RELEASE,
                                Opcode.RELEASEDIR, Opcode.INTERRUPT)
        p = Pending(opcode, self.next_unique(), nodeid, arg, tuple(names), data, ext,
                    0 if background else (self.uid if uid is None else uid),
                    0 if background else (self.gid if gid is None else gid),
                    0 if background else (self.pid if pid is None else pid))
        self._receive(p)
        return p

    def _encode(self, p: Pending) -> bytes:
        assert self.session is not None
        return encode_request(self.session, p.opcode, p.unique, p.nodeid, uid=p.uid,
                              gid=p.gid, pid=p.pid, arg=p.arg, names=p.names, data=p.data,
                              ext=p.ext)

    def _receive(self, p: Pending) -> None:
        msg = self._encode(p)
        self.history.append((p.opcode, p.unique, p.nodeid))
        try:
            p.request = self.conn.receive(msg)
            p.error = None
        except RemoteProtocolError as exc:
            p.request = None
            p.error = exc
        self.pending[p.unique & ~FUSE_UNIQUE_RESEND] = p

    def resend_pending(self) -> list[Pending]:
        """Like NOTIFY_RESEND: re-send every read-but-unanswered request with bit 63 set."""
        out = []
        for p in list(self.pending.values()):
            p.unique |= FUSE_UNIQUE_RESEND
            self._receive(p)
            out.append(p)
        return out

    def send_interrupt(self, unique: int) -> bytes | None:
        """Send INTERRUPT for the request ``unique``; return the optional reply bytes."""
        assert self.session is not None
        iu = unique | 1
        msg = encode_request(self.session, Opcode.INTERRUPT, iu, 0,
                             arg=_R["interrupt_in"].record(unique=unique))
        self.history.append((Opcode.INTERRUPT, iu, 0))
        bufs, _ = self.dispatcher.dispatch(msg)
        if bufs is None:
            return None
        raw = b"".join(bytes(b) for b in bufs)
        _error, got, body = split_reply(raw)
        if got != iu or body:
            raise KernelRuleError(f"bad INTERRUPT reply {raw!r}", _errno.EINVAL)
        return raw

    def complete(self, p: Pending) -> tuple[int, Any]:
        """Let the server answer ``p``; check the reply; return (errno or 0, decoded)."""
        assert self.session is not None
        self.pending.pop(p.unique & ~FUSE_UNIQUE_RESEND, None)
        row = self.session.table.get(p.opcode)
        no_reply = row is not None and row.reply is Reply.NONE
        if p.request is not None:
            bufs, _lookups = self.dispatcher.handle(p.request)
        else:
            assert p.error is not None
            exc = p.error
            if exc.unique is None or not exc.needs_reply:
                bufs = None
            else:
                bufs = [struct.pack("<IiQ", 16, -exc.errno_hint, exc.unique)]
        if no_reply:
            if bufs is not None:
                raise KernelRuleError(f"{row.name if row else p.opcode} got a reply "
                                      "(the kernel answers ENOENT)", _errno.ENOENT)
            return 0, None
        if bufs is None:
            raise NoReplyError(f"request {p.opcode} {p.unique:#x} got no reply")
        raw = b"".join(bytes(b) for b in bufs)
        if self.reply_filter is not None:
            raw = self.reply_filter(p, raw)
        self.replies[p.opcode] = self.replies.get(p.opcode, 0) + 1
        try:
            error, got, body = split_reply(raw)
            if got != p.unique:
                raise KernelRuleError(f"reply unique {got:#x} != request {p.unique:#x}",
                                      _errno.ENOENT)
            if error:
                if -error == _errno.ENOSYS and row is not None and row.enosys_cached:
                    self.enosys.add(p.opcode)
                return -error, None
            decoded = decode_reply(self.session, p.opcode, p.arg, body)
        except KernelRuleError:
            if self.strict:
                raise
            return _errno.EIO, None
        self._count(p, decoded)
        return 0, decoded

    def _count(self, p: Pending, decoded: Any) -> None:
        assert self.session is not None
        row = self.session.table.get(p.opcode)
        if row is None:
            return
        if row.reply in (Reply.ENTRY, Reply.ENTRY_OPEN):
            e = _entry_of(decoded)
            if e.nodeid:
                self._add_lookup(e.nodeid)
        elif row.reply is Reply.DIRENTSPLUS:
            for d in decoded:
                assert isinstance(d, DirentPlus)
                if d.entry.nodeid and d.dirent.name not in (b".", b".."):
                    self._add_lookup(d.entry.nodeid)

    def _add_lookup(self, nodeid: int) -> None:
        self.nlookup[nodeid] = self.nlookup.get(nodeid, 0) + 1
        self.forgotten.discard(nodeid)

    def request(self, opcode: int, nodeid: int = 0, *, arg: Any = None,
                names: Sequence[bytes] = (), data: Any = b"", ext: bytes = b"",
                uid: int | None = None, gid: int | None = None,
                pid: int | None = None) -> tuple[int, Any]:
        """Send one request and wait for its reply: (errno or 0, decoded reply)."""
        p = self.submit(opcode, nodeid, arg=arg, names=names, data=data, ext=ext, uid=uid,
                        gid=gid, pid=pid)
        return self.complete(p)

    def _call(self, opcode: int, nodeid: int, **kw: Any) -> Any:
        if opcode in self.enosys:
            raise OSError(_errno.ENOSYS, os.strerror(_errno.ENOSYS))
        err, decoded = self.request(opcode, nodeid, **kw)
        if err:
            raise OSError(err, os.strerror(err))
        return decoded

    # -- lookup counting -------------------------------------------------------------------

    def forget(self, nodeid: int, n: int | None = None) -> None:
        """Send FORGET(nodeid, n) (default: the whole count)."""
        have = self.nlookup.get(nodeid, 0)
        n = have if n is None else n
        if n <= 0 or n > have:
            raise ValueError(f"cannot forget {n} of nodeid {nodeid} (count {have})")
        self.request(Opcode.FORGET, nodeid, arg=_R["forget_in"].record(nlookup=n))
        self._dropped(nodeid, n)

    def batch_forget(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Send one BATCH_FORGET with several (nodeid, nlookup) pairs."""
        items = list(pairs)
        for nodeid, n in items:
            if n <= 0 or n > self.nlookup.get(nodeid, 0):
                raise ValueError(f"cannot forget {n} of nodeid {nodeid}")
        self.request(Opcode.BATCH_FORGET, 0, data=items)
        for nodeid, n in items:
            self._dropped(nodeid, n)

    def _forget_many(self, nodeids: Iterable[int]) -> None:
        pairs = [(n, self.nlookup[n]) for n in nodeids if self.nlookup.get(n)]
        if len(pairs) == 1:
            self.forget(*pairs[0])
        elif pairs:
            self.batch_forget(pairs)

    def _dropped(self, nodeid: int, n: int) -> None:
        left = self.nlookup.get(nodeid, 0) - n
        if left > 0:
            self.nlookup[nodeid] = left
            return
        self.nlookup.pop(nodeid, None)
        self.forgotten.add(nodeid)
        for key in [k for k, v in self.dcache.items() if v == nodeid or k[0] == nodeid]:
            del self.dcache[key]
            self._stale.discard(key)

    def _in_use(self, nodeid: int) -> bool:
        return any(h.nodeid == nodeid for h in self._handles.values())

    def evict_all(self) -> None:
        """Like ``drop_caches``: drop every dentry and forget every unused inode."""
        self.dcache.clear()
        self._stale.clear()
        self._forget_many([n for n in list(self.nlookup) if not self._in_use(n)])

    def inc_epoch(self) -> None:
        """Like NOTIFY_INC_EPOCH: every cached name is re-looked-up on next use."""
        self._stale = set(self.dcache)

    def prune(self, nodeids: Iterable[int]) -> None:
        """Like NOTIFY_PRUNE: forget the given inodes now unless they are open."""
        victims = [n for n in nodeids if n in self.nlookup and not self._in_use(n)]
        for key in [k for k, v in self.dcache.items() if v in victims]:
            del self.dcache[key]
        self._forget_many(victims)

    def receive_notification(self, buf: bytes) -> int:
        """Apply a notification as the kernel would; return its write() errno (0: ok)."""
        try:
            code, rec, extra = decode_notify(buf, self.minor)
        except KernelRuleError as exc:
            return exc.errno
        if code == NotifyCode.INC_EPOCH:
            self.inc_epoch()
        elif code == NotifyCode.PRUNE:
            self.prune(extra)
        elif code == NotifyCode.RESEND:
            self.resend_pending()
        elif code in (NotifyCode.INVAL_ENTRY, NotifyCode.DELETE):
            if rec.parent != FUSE_ROOT_ID and rec.parent not in self.nlookup:
                return _errno.ENOENT
            key = (rec.parent, bytes(extra))
            if code == NotifyCode.DELETE and self.dcache.get(key, rec.child) != rec.child:
                self._drop_dentry(key)
                return _errno.ENOENT
            self._drop_dentry(key)
        elif code in (NotifyCode.INVAL_INODE, NotifyCode.STORE):
            ino = rec.ino if code == NotifyCode.INVAL_INODE else rec.nodeid
            if ino != FUSE_ROOT_ID and ino not in self.nlookup:
                return _errno.ENOENT
        return 0

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
        if cached is not None:
            return cached
        e = _entry_of(self._call(Opcode.LOOKUP, parent, names=(name,)))
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

    def resolve(self, path: str | bytes) -> int:
        """The nodeid of ``path`` (LOOKUP per uncached component)."""
        node = FUSE_ROOT_ID
        for comp in self._split(path):
            node = self._lookup(node, comp)
        return node

    def _parent(self, path: str | bytes) -> tuple[int, bytes]:
        parts = self._split(path)
        if not parts:
            raise OSError(_errno.EBUSY, "the root has no parent")
        node = FUSE_ROOT_ID
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
        o = self._handles[h]
        arg = _R["getattr_in"].record(getattr_flags=1, dummy=0, fh=o.fh)
        return self._call(Opcode.GETATTR, o.nodeid, arg=arg).attr

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
        if Opcode.CREATE not in self.enosys:
            arg = _R["create_in"].record(flags=flags & ~os.O_NOCTTY, mode=mode,
                                         umask=self.umask, open_flags=0)
            err, decoded = self.request(Opcode.CREATE, parent, arg=arg, names=(name,),
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
            return struct.pack("<II", 8, 0)
        return b""

    def read(self, h: int, size: int, off: int = 0) -> bytes:
        """pread: READ requests of at most ``max_read`` until ``size`` or a short read."""
        o = self._handles[h]
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
        o = self._handles[h]
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
        o = self._handles[h]
        op = Opcode.FSYNCDIR if o.is_dir else Opcode.FSYNC
        if op in self.enosys:
            return
        arg = _R["fsync_in"].record(fh=o.fh, fsync_flags=FSYNC.FDATASYNC if datasync else 0,
                                    padding=0)
        err, _ = self.request(op, o.nodeid, arg=arg)
        if err and err != _errno.ENOSYS:
            raise OSError(err, os.strerror(err))

    def close(self, h: int) -> None:
        """close(2): FLUSH then RELEASE (RELEASEDIR for directories)."""
        o = self._handles.pop(h)
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
        o = self._handles[h]
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
            name = r.dirent.name if isinstance(r, DirentPlus) else r.name
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
