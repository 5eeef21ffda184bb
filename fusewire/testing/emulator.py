"""An in-process emulated kernel that drives any :class:`~fusewire.Operations`.

:class:`KernelEmulator` plays the kernel's part of the FUSE protocol against
the *same* :class:`~fusewire.connection.Connection` and
:class:`~fusewire.server.dispatch.Dispatcher` a real mount uses: it sends INIT
at the chosen minor, allocates uniques like Linux (steps of 2 from 2;
INTERRUPT = target | 1; bit 63 on resend), keeps per-nodeid lookup counts
(one per entry reply and per counted READDIRPLUS entry) and gives them back
with FORGET / BATCH_FORGET, and checks every reply with
:func:`fusewire.wire.decode_reply`: a reply the kernel would refuse
raises :class:`~fusewire.wire.KernelRuleError` (``strict=True``, the
default) or turns into EIO like on a real mount (``strict=False``).

On top of that raw layer sits a syscall-like API (:mod:`fusewire.testing.vfs`,
inherited: ``stat``, ``open``,
``read``, ``readdir``, ``rename``, xattrs...) that resolves paths with LOOKUP
through a dentry cache, so tests read like user code and raise ``OSError``.
Relative paths start at the directory set with :meth:`KernelEmulator.chdir`
(the kernel's pinned cwd), else at the root.

Draft stable-handle profiles (``lookup_handle="rfc-v2"``, ``"rfc-v3"`` or
``"fusewire"``, see docs/draft-handles.md): the emulated kernel behaves like
the posted RFC kernels for the RFC profiles: it never offers bit 43 (their
``fuse_new_init`` ORs the opcode value into the offer) and enables the
feature when the INIT reply sets it (rfc-v2: with ``0 < max_handle_sz <=
128``); rfc-v2 looks names up with LOOKUP_HANDLE (54) and sends the parent's
handle after the names, checking handle sizes as the posted kernel does
(``1 <= size < max_handle_sz``); rfc-v3 sends LOOKUP_HANDLE + STATX and
(atomic) MKOBJ_HANDLE + STATX + OPEN as FUSE_COMPOUND (54) exactly as the v5
compound code builds them, and expects upstream sizes everywhere else.  The
``fusewire`` profile is fusewire's own extension (the kernel offers bit 43,
REVALIDATE_FH, handles on every entry reply and READDIRPLUS).  Each inode's
handle and generation are stored like ``fuse_iget``; a different handle or
generation for a known nodeid makes the old inode bad.
:meth:`KernelEmulator.restart` hands the connection to a successor
dispatcher and revalidates: the RFC profiles re-look every cached dentry up
(``fuse_dentry_revalidate``: nodeid and handle compared), the fusewire
profile asks REVALIDATE_FH (or LOOKUP_HANDLE of the stored handle) per
inode; inodes that fail are made bad like the kernel's ``fuse_make_bad``:
their open files and cwd fail with EIO and their dentries are looked up again.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import os
import stat as _stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fusewire import handles as _fh
from fusewire.connection import Config, Request, Session, encode_error
from fusewire.connection import Connection as _Connection
from fusewire.errors import RemoteProtocolError, errno_of
from fusewire.opcodes.flags import (
    DRAFT_FUSE_COMPOUND,
    DRAFT_FUSE_COMPOUND_ATOMIC,
    DRAFT_FUSE_LOOKUP_HANDLE_V2,
    DRAFT_FUSE_LOOKUP_HANDLE_V3,
    DRAFT_FUSE_MKOBJ_HANDLE_V3,
    DRAFT_FUSE_REVALIDATE_FH,
    FUSE_MAX_HANDLE_SZ,
    FUSE_ROOT_ID,
    FUSE_UNIQUE_RESEND,
    InitFlag,
    NotifyCode,
    Opcode,
)
from fusewire.opcodes.table import Reply, Trailing
from fusewire.operations import Operations
from fusewire.server.dispatch import Dispatcher, wanted_flags
from fusewire.structs.codec import CODECS
from fusewire.testing.procserver import NoReplyError, ProcessServer, from_state, serve_child
from fusewire.testing.vfs import _HANDLE_WRAPPERS, VfsCalls, _entry_of, _Open
from fusewire.wire import (
    KERNEL_FLAGS,
    KernelRuleError,
    ReplySizeError,
    decode_notify,
    decode_reply,
    decode_sub_reply,
    encode_init,
    encode_request,
    make_session,
    split_reply,
)

__all__ = ["DEFAULT_FLAGS", "KernelEmulator", "NoReplyError", "Pending", "ProcessServer",
           "RestartReport", "from_state", "serve_child"]

#: What Linux 6.18 offers (flags | flags2 << 32).
DEFAULT_FLAGS = KERNEL_FLAGS
_R = CODECS  # shorthand for record classes
_OUT_HEADER = CODECS["out_header"].struct


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
    #: the message as sent (what a server in another process reads)
    raw: bytes = b""


@dataclass
class RestartReport:
    """What :meth:`KernelEmulator.restart` did."""

    #: nodeid -> 0 (still the same object) or the errno that made it bad
    revalidated: dict[int, int]
    #: requests the dead server had read and not answered, re-sent (bit 63)
    resent: list[Pending]

    @property
    def bad(self) -> list[int]:
        """The nodeids that failed revalidation."""
        return sorted(n for n, err in self.revalidated.items() if err)


def _handle_of(decoded: Any) -> bytes | None:
    if isinstance(decoded, tuple) and len(decoded) == 2 and not isinstance(
            decoded, _HANDLE_WRAPPERS) and isinstance(decoded[0], _fh.HandleEntry):
        decoded = decoded[0]
    if isinstance(decoded, _fh.HandleEntry):
        return decoded.handle
    return None


class KernelEmulator(VfsCalls):
    """The kernel side of one FUSE connection, in process.

    ``ops`` is served through a fresh Connection + Dispatcher (or pass
    ``dispatcher=`` to drive an existing one).  ``minor`` and ``flags`` are
    what the emulated kernel offers in INIT.  ``lookup_handle`` is the draft
    stable-handle profile the emulated kernel implements (it then offers
    HAS_LOOKUP_HANDLE); unless ``config`` says otherwise the server is
    configured for the same profile.
    """

    def __init__(self, ops: Operations, minor: int = 45, flags: int = DEFAULT_FLAGS,
                 lookup_handle: str | None = None, *, config: Config | None = None,
                 strict: bool = True, umask: int = 0o022, uid: int | None = None,
                 gid: int | None = None, pid: int | None = None,
                 dispatcher: Dispatcher | None = None) -> None:
        self.ops = ops
        rfc = lookup_handle in ("rfc-v2", "rfc-v3")
        if dispatcher is None:
            # the posted RFC kernels never offer bit 43: a server must assert it
            base = config or Config(lookup_handle=lookup_handle, assert_lookup_handle=rfc)
            want = wanted_flags(ops, base.want)
            conn = _Connection(Config(**{**base.__dict__, "want": want}))
            dispatcher = Dispatcher(ops, conn)
        self.dispatcher = dispatcher
        #: a server in another process serving instead of ``dispatcher`` (restart)
        self.server: ProcessServer | None = None
        self.conn = dispatcher.conn
        if lookup_handle == "rfc-v3" and minor == 45:
            minor = 46   # RFC v3 6/8: FUSE_KERNEL_MINOR_VERSION 46
        self.offered_minor = minor
        if lookup_handle == "fusewire":
            flags |= InitFlag.HAS_LOOKUP_HANDLE
        elif rfc:
            # RFC v2 3/6, v3 6/8 fuse_new_init: "| FUSE_LOOKUP_HANDLE" (the opcode)
            flags |= (DRAFT_FUSE_LOOKUP_HANDLE_V2 if lookup_handle == "rfc-v2"
                      else DRAFT_FUSE_LOOKUP_HANDLE_V3)
        self.offered_flags = flags if minor >= 36 else flags & 0xFFFFFFFF
        #: the draft profile this kernel implements (negotiated: ``session.lookup_handle``)
        self.kernel_profile = lookup_handle
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
        #: DRAFT profiles: the handle and generation the kernel stores per inode
        self.inode_handles: dict[int, bytes] = {}
        self.generations: dict[int, int] = {}
        #: nodeids whose kernel inode is bad (fuse_make_bad) until a new one replaces it
        self.bad: set[int] = set()
        #: (nodeid, old generation, new generation) seen in entry replies
        self.stale_detected: list[tuple[int, int, int]] = []
        #: rfc-v3: nodeids fuse_iget got without a handle (the posted code's pr_err/WARN)
        self.null_handle_warnings: list[int] = []
        #: rfc-v3: whether the kernel gave up on create-and-open (fc->no_create)
        self.no_create = False
        #: the pinned working directory (chdir), if any
        self.cwd: _Open | None = None
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
        # rfc-v2's INIT reply has max_handle_sz where the others have padding
        probe = make_session(self.offered_minor, 0,
                             "rfc-v2" if self.kernel_profile == "rfc-v2" else None)
        out = decode_reply(probe, Opcode.INIT, None, body, check=self.strict)
        major, minor = out.major, out.minor
        if major != 7 or minor > self.offered_minor:
            raise KernelRuleError(f"INIT reply speaks {major}.{minor}")
        flags = out.flags
        if minor >= 36 and flags & InitFlag.INIT_EXT:
            flags |= out.flags2 << 32
        replied = flags
        flags &= self.offered_flags  # the kernel ignores flags it did not offer
        profile = None
        if self.kernel_profile == "fusewire" and flags & InitFlag.HAS_LOOKUP_HANDLE:
            profile = "fusewire"
        elif self.kernel_profile in ("rfc-v2", "rfc-v3") and minor >= 36 and \
                replied & InitFlag.HAS_LOOKUP_HANDLE:
            # process_init_reply tests the reply's bit, whatever was offered
            profile = self.kernel_profile
            flags |= InitFlag.HAS_LOOKUP_HANDLE
        max_handle_sz = 0
        if profile == "rfc-v2":
            # RFC v2 3/6: enabled only with 0 < max_handle_sz <= FUSE_MAX_HANDLE_SZ
            max_handle_sz = out.max_handle_sz
            if not 0 < max_handle_sz <= FUSE_MAX_HANDLE_SZ:
                profile, max_handle_sz = None, 0
                flags &= ~InitFlag.HAS_LOOKUP_HANDLE
        self.session = dataclasses.replace(make_session(minor, flags, profile),
                                           max_handle_sz=max_handle_sz)
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
               pid: int | None = None, handle: bytes | None = None) -> Pending:
        """Send a request and let the server *read* it (not answer yet).

        In a draft profile, requests that name a parent carry its stored
        handle (v2: as ``data`` unless given; v3: appended to ``ext``);
        ``handle`` overrides the stored one (``b""``: none).
        """
        assert self.session is not None
        if nodeid and nodeid != FUSE_ROOT_ID and nodeid in self.forgotten and \
                nodeid not in self.nlookup:
            raise KernelRuleError(f"emulator would use forgotten nodeid {nodeid}")
        row = self.session.table.get(opcode)
        # draft rows are gated by HAS_LOOKUP_HANDLE, not by the minor
        if row is not None and row.draft is None and row.since > self.minor:
            raise KernelRuleError(f"{row.name} does not exist at 7.{self.minor}")
        if self.session.lookup_handle is not None and row is not None:
            data, ext = self._with_handle(opcode, row.trailing, nodeid, data, ext, handle)
        background = row is not None and row.background
        p = Pending(opcode, self.next_unique(), nodeid, arg, tuple(names), data, ext,
                    0 if background else (self.uid if uid is None else uid),
                    0 if background else (self.gid if gid is None else gid),
                    0 if background else (self.pid if pid is None else pid))
        self._receive(p)
        return p

    def _with_handle(self, opcode: int, trailing: Trailing, nodeid: int, data: Any,
                     ext: bytes, handle: bytes | None) -> tuple[Any, bytes]:
        assert self.session is not None
        profile = _fh.PROFILES[self.session.lookup_handle or ""]
        if trailing is Trailing.HANDLE:  # rfc-v2: the parent's fuse_file_handle in-arg
            if handle is None:
                handle = self.inode_handles.get(nodeid)
            # RFC v2 4/6: sent when the kernel holds a handle for the parent
            # (not for the root: its inode predates the INIT reply)
            if not data and handle is not None:
                data = _fh.request_element(self.session, handle)
            return data, ext
        if profile.name != "fusewire":
            return data, ext
        if handle is None and (opcode in _fh.PARENT_HANDLE_OPS
                               or opcode in (profile.lookup_opcode, profile.mkobj_opcode)):
            handle = self.inode_handles.get(nodeid)
        if handle and self.minor >= 38:  # v3: FUSE_EXT_HANDLE extension
            ext = bytes(ext) + _fh.ext_handle(handle)
        return data, ext

    def _encode(self, p: Pending) -> bytes:
        assert self.session is not None
        return encode_request(self.session, p.opcode, p.unique, p.nodeid, uid=p.uid,
                              gid=p.gid, pid=p.pid, arg=p.arg, names=p.names, data=p.data,
                              ext=p.ext)

    def _receive(self, p: Pending) -> None:
        msg = self._encode(p)
        p.raw = msg
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
        if self.server is not None:
            bufs, _ = self.server.dispatch(msg)
        else:
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
        if self.server is not None:
            bufs, _lookups = self.server.dispatch(p.raw)
        elif p.request is not None:
            bufs, _lookups = self.dispatcher.handle(p.request)
        else:
            assert p.error is not None
            exc = p.error
            if exc.unique is None or not exc.needs_reply:
                bufs = None
            else:
                bufs = [encode_error(exc.unique, errno_of(exc))]
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
            decoded = self._decode(p, body)
        except KernelRuleError:
            if self.strict:
                raise
            return _errno.EIO, None
        self._count(p, decoded)
        return 0, decoded

    def _decode(self, p: Pending, body: bytes) -> Any:
        assert self.session is not None
        return decode_reply(self.session, p.opcode, p.arg, body)

    def _count(self, p: Pending, decoded: Any) -> None:
        assert self.session is not None
        row = self.session.table.get(p.opcode)
        if row is None:
            return
        counts = p.opcode != DRAFT_FUSE_REVALIDATE_FH  # revalidation keeps the count
        if row.reply in (Reply.ENTRY, Reply.ENTRY_OPEN):
            e = _entry_of(decoded)
            if e.nodeid:
                if counts:
                    self._add_lookup(e.nodeid)
                self._remember(e.nodeid, e.generation, _handle_of(decoded))
        elif row.reply is Reply.DIRENTSPLUS:
            for d in decoded:
                if d.entry.nodeid and d.dirent.name not in (b".", b".."):
                    self._add_lookup(d.entry.nodeid)
                    self._remember(d.entry.nodeid, d.entry.generation,
                                   getattr(d, "handle", None))

    def _remember(self, nodeid: int, generation: int, handle: bytes | None) -> None:
        """Store what an entry reply says about the inode ``nodeid`` (kernel: fuse_iget).

        RFC profiles also compare handles like the posted ``fuse_iget``: an
        inode that has a handle and gets another (rfc-v3: or none, as from
        LINK, whose reply has no handle in v3) is made bad and replaced.  (The
        posted v2 ``fuse_iget`` copies the new handle in before comparing, so
        there only the dentry revalidation catches a mismatch; the emulator
        applies the comparison the patch means.)
        """
        assert self.session is not None
        profile = self.session.lookup_handle
        old = self.generations.get(nodeid)
        stored = self.inode_handles.get(nodeid)
        if profile == "rfc-v3" and handle is None and nodeid != FUSE_ROOT_ID and \
                stored is None:
            self.null_handle_warnings.append(nodeid)   # "NULL file handle for nodeid"
        changed = False
        if profile in ("rfc-v2", "rfc-v3") and old is not None and stored is not None:
            # fuse_file_handle_is_equal (v2: a reply without a handle matches anything)
            changed = (handle != stored if profile == "rfc-v3"
                       else bool(handle) and handle != stored)
        if nodeid in self.bad:
            # a new inode replaces the bad one; what still holds the old stays bad
            self.bad.discard(nodeid)
        elif old is not None and (old != generation or changed):
            # fuse_stale_inode / another handle: the nodeid now names another object
            self.stale_detected.append((nodeid, old, generation))
            self._flag_bad_users(nodeid)
            if changed:
                self.inode_handles.pop(nodeid, None)
                stored = None
        self.generations[nodeid] = generation
        if profile == "rfc-v3":
            if stored is None and handle is not None:
                self.inode_handles[nodeid] = handle   # fi->fh is set once
            return
        if handle is not None:
            if handle:
                self.inode_handles[nodeid] = handle
            else:
                self.inode_handles.pop(nodeid, None)

    def _add_lookup(self, nodeid: int) -> None:
        self.nlookup[nodeid] = self.nlookup.get(nodeid, 0) + 1
        self.forgotten.discard(nodeid)

    def request(self, opcode: int, nodeid: int = 0, *, arg: Any = None,
                names: Sequence[bytes] = (), data: Any = b"", ext: bytes = b"",
                uid: int | None = None, gid: int | None = None,
                pid: int | None = None, handle: bytes | None = None) -> tuple[int, Any]:
        """Send one request and wait for its reply: (errno or 0, decoded reply)."""
        p = self.submit(opcode, nodeid, arg=arg, names=names, data=data, ext=ext, uid=uid,
                        gid=gid, pid=pid, handle=handle)
        return self.complete(p)

    def _call(self, opcode: int, nodeid: int, **kw: Any) -> Any:
        if opcode in self.enosys:
            raise OSError(_errno.ENOSYS, os.strerror(_errno.ENOSYS))
        if nodeid in self.bad:  # fuse_is_bad(): nothing is sent for a bad inode
            raise OSError(_errno.EIO, os.strerror(_errno.EIO))
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
        self.inode_handles.pop(nodeid, None)
        self.generations.pop(nodeid, None)
        for key in [k for k, v in self.dcache.items() if v == nodeid or k[0] == nodeid]:
            del self.dcache[key]
            self._stale.discard(key)

    def _in_use(self, nodeid: int) -> bool:
        if self.cwd is not None and self.cwd.nodeid == nodeid and not self.cwd.bad:
            return True
        return any(h.nodeid == nodeid and not h.bad for h in self._handles.values())

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

    # -- rfc-v3: FUSE_COMPOUND as the posted kernel builds it ----------------------------------

    def compound(self, subs: Sequence[tuple[int, int, bytes]], flags: int = 0, *,
                 out_sizes: Sequence[int] | None = None) -> tuple[int, list[_fh.SubReply]]:
        """Send one FUSE_COMPOUND of ``(opcode, nodeid, in-args)`` sub-requests.

        Built like the v5 series' ``fuse_compound_send``: each sub-request is a
        ``fuse_in_header`` with len, opcode, nodeid, uid, gid, pid (unique and
        total_extlen 0) + its in-args; ``result_size`` adds up what each
        reserves for its reply (``out_sizes``, default
        :data:`~fusewire.handles.V3_OUT_SIZES`).  Returns (the outer
        errno or 0, the sub-replies the kernel reads).
        """
        sizes = list(out_sizes) if out_sizes is not None else [
            _fh.V3_OUT_SIZES[op] for op, _n, _b in subs]
        raw = [_fh.encode_sub_request(op, nodeid, body, uid=self.uid, gid=self.gid,
                                      pid=self.pid) for op, nodeid, body in subs]
        arg = _R["compound_in"].record(count=len(subs), flags=flags,
                                       result_size=sum(sizes), padding=0, reserved=0)
        err, body = self.request(DRAFT_FUSE_COMPOUND, 0, arg=arg, data=b"".join(raw))
        if err:
            return err, []
        try:
            return 0, _fh.decode_compound_reply(body, len(subs), sizes)
        except _fh.HandleWireError as exc:
            if self.strict:
                raise ReplySizeError(str(exc)) from None
            return _errno.EIO, []

    @staticmethod
    def statx_v3() -> bytes:
        """The STATX in-args of RFC v3 5/8 ``fuse_statx_init`` (no file, sync default)."""
        return _R["statx_in"].struct.pack(0, 0, 0, 0, _fh.STATX_MASK_V3)

    def lookup_handle_v3(self, parent: int, name: bytes, *,
                         parent_handle: bool = True) -> _fh.HandleEntry:
        """RFC v3 6/8 ``do_lookup_handle_statx``: LOOKUP_HANDLE + STATX, one compound.

        LOOKUP_HANDLE: name, NUL, and when the kernel holds a handle for
        ``parent`` (and ``parent_handle``: revalidation passes none) a
        FUSE_EXT_HANDLE extension; STATX on FUSE_ROOT_ID (the posted
        placeholder).  On success the entry counts one lookup and the inode
        gets the handle (``fuse_iget``).  Raises OSError like the syscall.
        """
        if parent in self.bad:
            raise OSError(_errno.EIO, os.strerror(_errno.EIO))
        body = name + b"\0"
        stored = self.inode_handles.get(parent) if parent_handle else None
        if stored is not None:
            body += _fh.ext_handle(stored)
        err, subs = self.compound([(DRAFT_FUSE_LOOKUP_HANDLE_V3, parent, body),
                                   (Opcode.STATX, FUSE_ROOT_ID, self.statx_v3())])
        if not err and len(subs) < 2:
            err = _errno.EIO
        if not err:
            err = -subs[0].error or -subs[1].error
        if err:
            raise OSError(err, os.strerror(err))
        try:
            entry = _fh.decode_v3_entry(subs[0].body)
        except _fh.HandleWireError as exc:
            raise ReplySizeError(str(exc)) from None
        if entry.entry.nodeid == 0:
            raise OSError(_errno.ENOENT, os.strerror(_errno.ENOENT))
        self._add_lookup(entry.entry.nodeid)
        self._remember(entry.entry.nodeid, entry.entry.generation, entry.handle)
        return entry

    def mkobj_v3(self, parent: int, name: bytes, flags: int, mode: int) -> int | None:
        """RFC v3 8/8 ``fuse_mkobj_statx_open``: MKOBJ_HANDLE + STATX + OPEN, atomic.

        Returns an emulator handle, or None after ENOSYS (the kernel sets
        ``no_create`` and falls back to MKNOD + OPEN).
        """
        create = _R["create_in"].record(flags=flags & ~os.O_NOCTTY, mode=mode,
                                        umask=self.umask, open_flags=0)
        body = _R["create_in"].struct.pack(*create) + name + b"\0" + self._ext()
        stored = self.inode_handles.get(parent)
        if stored is not None:
            body += _fh.ext_handle(stored)
        # "XXX flags handling": open_in.flags is FOPEN_KEEP_CACHE minus O_CREAT/O_EXCL/O_NOCTTY
        oflags = 2 & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        if not self.has(InitFlag.ATOMIC_O_TRUNC):
            oflags &= ~os.O_TRUNC
        open_in = _R["open_in"].struct.pack(oflags, 0)
        err, subs = self.compound([(DRAFT_FUSE_MKOBJ_HANDLE_V3, parent, body),
                                   (Opcode.STATX, FUSE_ROOT_ID, self.statx_v3()),
                                   (Opcode.OPEN, FUSE_ROOT_ID, open_in)],
                                  DRAFT_FUSE_COMPOUND_ATOMIC)
        if err == _errno.ENOSYS:
            self.no_create = True
            return None
        if not err and len(subs) < 3:
            err = _errno.EIO
        for sub in subs[:3]:
            if not err and sub.error:
                err = -sub.error
        if err:
            raise OSError(err, os.strerror(err))
        try:
            entry = _fh.decode_v3_entry(subs[0].body)
        except _fh.HandleWireError as exc:
            raise ReplySizeError(str(exc)) from None
        sx = decode_sub_reply(Opcode.STATX, subs[1].body)
        nodeid = entry.entry.nodeid
        if not _stat.S_ISREG(sx.stat.mode) or nodeid in (0, FUSE_ROOT_ID):
            raise OSError(_errno.EIO, os.strerror(_errno.EIO))
        oo = decode_sub_reply(Opcode.OPEN, subs[2].body)
        self._add_lookup(nodeid)
        self._remember(nodeid, entry.entry.generation, entry.handle)
        self._created(parent, name, entry)
        return self._new_handle(nodeid, oo.fh, flags & ~(os.O_CREAT | os.O_EXCL), False)

    def _revalidate_dentries(self) -> dict[int, int]:
        """RFC profiles after a restart: ``fuse_dentry_revalidate`` on every cached name.

        rfc-v2 sends LOOKUP_HANDLE (54) with the parent's handle; rfc-v3 the
        LOOKUP_HANDLE + STATX compound without one (``do_reval_lookup``).  A
        lookup that fails, names another nodeid or brings another handle
        invalidates the dentry (the kernel forgets the one lookup the server
        just counted); another handle for the same nodeid makes the inode
        bad.  Returns nodeid -> 0 or the errno.
        """
        assert self.session is not None
        profile = self.session.lookup_handle
        out: dict[int, int] = {}
        for (parent, name), nodeid in list(self.dcache.items()):
            if self.dcache.get((parent, name)) != nodeid or parent in self.bad:
                continue
            stored = self.inode_handles.get(nodeid)
            err, got, handle = 0, 0, None
            try:
                if profile == "rfc-v3":
                    e = self._reval_v3(parent, name)
                    got, handle = e.entry.nodeid, e.handle
                else:
                    err, decoded = self.request(DRAFT_FUSE_LOOKUP_HANDLE_V2, parent,
                                                names=(name,))
                    if not err:
                        got, handle = _entry_of(decoded).nodeid, _handle_of(decoded)
            except OSError as exc:
                err = exc.errno or _errno.EIO
            if not err and got == 0:
                err = _errno.ENOENT
            if not err:
                equal = (handle == stored if profile == "rfc-v3"
                         else not handle or handle == stored)
                if got == nodeid and equal:
                    out[nodeid] = 0
                    continue
                if got == nodeid and stored is None and profile == "rfc-v3":
                    # fi->fh is NULL (a plain MKNOD/MKDIR reply made the inode): the
                    # dentry is invalidated and the next lookup's fuse_iget adopts the
                    # handle (its FORGET and that LOOKUP cancel out)
                    self.inode_handles[nodeid] = handle if handle is not None else b""
                    out[nodeid] = 0
                    continue
                err = _errno.ESTALE
                if got in self.nlookup:
                    self.forget(got, 1)
                if got == nodeid:
                    out[nodeid] = err
                    self.make_bad(nodeid)
                    continue
            out[nodeid] = err
            self._drop_dentry((parent, name))
        return out

    def _reval_v3(self, parent: int, name: bytes) -> _fh.HandleEntry:
        """The v3 revalidation compound: like :meth:`lookup_handle_v3`, stored nothing."""
        body = name + b"\0"
        err, subs = self.compound([(DRAFT_FUSE_LOOKUP_HANDLE_V3, parent, body),
                                   (Opcode.STATX, FUSE_ROOT_ID, self.statx_v3())])
        if not err and len(subs) < 2:
            err = _errno.EIO
        if not err:
            err = -subs[0].error or -subs[1].error
        if err:
            raise OSError(err, os.strerror(err))
        entry = _fh.decode_v3_entry(subs[0].body)
        if entry.entry.nodeid:
            self._add_lookup(entry.entry.nodeid)   # fi->nlookup++ on success
        return entry

    # -- server restart (DRAFT stable-handle profiles) ---------------------------------------

    def chdir(self, path: str | bytes) -> int:
        """Make ``path`` the working directory: the kernel pins its inode; relative
        paths start there.  Returns its nodeid."""
        nodeid = self.resolve(path)
        attr = self._call(Opcode.GETATTR, nodeid, arg=_R["getattr_in"].zero()).attr
        if not _stat.S_ISDIR(attr.mode):
            raise OSError(_errno.ENOTDIR, os.strerror(_errno.ENOTDIR))
        self.cwd = _Open(nodeid, 0, 0, True)
        return nodeid

    def restart(self, dispatcher: Dispatcher | ProcessServer, *,
                revalidate: str | None = "revalidate_fh") -> RestartReport:
        """A successor server takes the connection over; serve through ``dispatcher``.

        ``dispatcher`` must continue this session (its Connection restored
        from ``export_state()``, as recovery does): a kernel sends no second
        INIT.  A :class:`ProcessServer` puts the successor in another
        process (``emu.server``).  In a draft profile every cached inode but
        the root is then revalidated (``revalidate``: ``"revalidate_fh"`` or
        ``"lookup_handle"``; None skips it), failures made bad; finally the
        requests the old server read and never answered are re-sent with bit
        63 (NOTIFY_RESEND) for the caller to :meth:`complete`.
        """
        if dispatcher.conn.session is None:
            raise ValueError("the successor must continue the session (Connection.restore)")
        if isinstance(dispatcher, ProcessServer):
            self.server = dispatcher
        else:
            self.server = None
            self.dispatcher = dispatcher
        self.conn = dispatcher.conn
        assert self.session is not None
        revalidated: dict[int, int] = {}
        if revalidate is not None and self.session.lookup_handle in ("rfc-v2", "rfc-v3"):
            revalidated = self._revalidate_dentries()
        elif revalidate is not None and self.session.lookup_handle is not None:
            for nodeid in sorted(self.nlookup):
                if nodeid != FUSE_ROOT_ID and nodeid in self.nlookup:
                    revalidated[nodeid] = self.revalidate(nodeid, revalidate)
        return RestartReport(revalidated, self.resend_pending())

    def revalidate(self, nodeid: int, method: str = "revalidate_fh") -> int:
        """``fusewire`` profile: ask whether ``nodeid`` still names the object the kernel knows.

        ``method`` "revalidate_fh" sends REVALIDATE_FH (stored handle,
        generation and lookup count; no lookup is counted); "lookup_handle"
        sends LOOKUP_HANDLE of the stored handle (one more lookup) and compares
        nodeid and generation.  Returns 0, or the errno after which the inode
        was made bad (ESTALE without a stored handle: there is nothing to ask).
        The RFC profiles have neither (see :meth:`restart`).
        """
        assert self.session is not None
        profile = _fh.PROFILES[self.session.lookup_handle or ""]
        if profile.revalidate_opcode is None:
            raise ValueError(f"{profile.name} has no revalidation by handle")
        handle = self.inode_handles.get(nodeid)
        gen = self.generations.get(nodeid)
        err = _errno.ESTALE
        decoded: Any = None
        if handle and gen is not None:
            if method == "revalidate_fh":
                arg = _R["revalidate_fh_in"].record(generation=gen,
                                                    nlookup=self.nlookup.get(nodeid, 0),
                                                    flags=0, padding=0)
                err, decoded = self.request(profile.revalidate_opcode, nodeid, arg=arg,
                                            data=_fh.request_element(self.session, handle))
            elif method == "lookup_handle":
                err, decoded = self.request(profile.lookup_opcode, nodeid, names=(b"",),
                                            handle=handle)
            else:
                raise ValueError(f"unknown revalidation method {method!r}")
            if not err:
                e = _entry_of(decoded)
                if e.nodeid != nodeid or e.generation != gen:
                    err = _errno.ESTALE  # fuse_stale_inode: another object now
        if err:
            self.make_bad(nodeid)
        return err

    def make_bad(self, nodeid: int) -> None:
        """Like ``fuse_make_bad``: the inode ``nodeid`` is dead.

        Open files and a cwd on it fail with EIO from now on, its dentries
        are dropped (a path walk looks the name up again and may find a new
        object), and the kernel's references are given back with FORGET.
        """
        self.bad.add(nodeid)
        self._flag_bad_users(nodeid)
        for key in [k for k, v in self.dcache.items() if v == nodeid]:
            del self.dcache[key]
            self._stale.discard(key)
        n = self.nlookup.get(nodeid, 0)
        if n:
            self.forget(nodeid, n)

    def _flag_bad_users(self, nodeid: int) -> None:
        for o in self._handles.values():
            if o.nodeid == nodeid:
                o.bad = True
        if self.cwd is not None and self.cwd.nodeid == nodeid:
            self.cwd.bad = True

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
