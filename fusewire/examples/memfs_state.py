"""MemFS's state for recovery by replay: the snapshot and the replay hooks.

One job: :meth:`MemFSState.dump_state` / :meth:`MemFSState.load_state` (a
pickle of plain builtin containers only) and the hooks of
:class:`fusewire.ReplayRecovery`: ``replay_started`` / ``replay_finished``,
and the file-data store that outlives the server (``recovery_fds``,
``attach_recovery_fds``, ``journal_omits_data``, ``snapshot_taken``,
``snapshot_wanted``; see :mod:`fusewire.examples.memfs_blocks`).  With the
store, a snapshot holds each file's block map, not its bytes.
:class:`MemFSState` is a mixin of :class:`fusewire.examples.memfs.MemFS`.
"""

from __future__ import annotations

import io
import pickle
import stat
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fusewire.examples.memfs_blocks import LEN_BITS, LEN_MASK, BlockStore
from fusewire.examples.memfs_nodes import _Dir, _Handle, _Inode, _xattr_bytes
from fusewire.locks import LockTable
from fusewire.opcodes.flags import Opcode

__all__ = ["MemFSState"]

_STATE_VERSION = 1
#: ask for a snapshot once this many bytes of freed blocks wait for one (plus a
#: quarter of the data): they are neither reused nor released before it
QUARANTINE_BYTES = 64 << 20
_WRITE_ONLY = frozenset({int(Opcode.WRITE)})


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Only plain builtin containers may appear in a state dump."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in MemFS state")


class MemFSState:
    """Snapshot and replay hooks of MemFS (a mixin; MemFS sets the attributes)."""

    _lock: threading.RLock
    _generation: int
    _inodes: dict[int, _Inode]
    _handles: dict[int, _Handle]
    _nopen: dict[int, int]
    _next_ino: int
    _next_fh: int
    _used: int
    _linkable: set[int]
    _iflags: dict[int, int]
    _replaying: bool
    _store: BlockStore | None
    locks: LockTable
    max_bytes: int
    max_inodes: int

    if TYPE_CHECKING:
        def _maybe_free(self, node: _Inode) -> None: ...

    def dump_state(self) -> bytes:
        """Serialize the whole filesystem: tree, data, counts, open handles and locks."""
        with self._lock:
            inodes = []
            for n in self._inodes.values():
                # the bytearrays themselves: pickled at once, under the lock (no
                # copy); with a block store, the block map only
                chunks = None if n.chunks is None else dict(n.chunks)
                dirstate = None
                if n.dir is not None:
                    dirstate = (n.dir.parent, n.dir.next_cookie,
                                [(name, ino, cookie)
                                 for name, ino, cookie in n.dir.iter_after(0)])
                inodes.append((n.ino, n.mode, n.nlink, n.uid, n.gid, n.rdev, n.size,
                               n.atime, n.mtime, n.ctime, n.btime, n.nlookup,
                               chunks, dirstate, n.target,
                               None if n.xattrs is None else dict(n.xattrs)))
            state = {
                "version": _STATE_VERSION,
                "generation": self._generation,
                "next_ino": self._next_ino,
                "next_fh": self._next_fh,
                "max_bytes": self.max_bytes,
                "max_inodes": self.max_inodes,
                "inodes": inodes,
                "handles": [(fh, h.ino, h.flags, h.is_dir) for fh, h in self._handles.items()],
                "linkable": sorted(self._linkable),
                **self.locks.export(),
                "iflags": dict(self._iflags),
                # blocks ever handed out; those no file uses are free in the snapshot
                "blocks": None if self._store is None else self._store.hwm,
            }
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def replay_started(self) -> None:
        """Keep unlinked inodes until :meth:`replay_finished` (the log has no FORGETs)."""
        with self._lock:
            self._replaying = True

    def replay_finished(self, lookups: Mapping[int, int],
                        changed: Collection[int] | None = None) -> None:
        """Take the kernel's lookup counts; free unlinked inodes nothing holds."""
        with self._lock:
            self._replaying = False
            inodes = self._inodes
            if changed is None:
                for ino, node in inodes.items():
                    node.nlookup = lookups.get(ino, 0)
            else:
                for ino in changed:
                    found = inodes.get(ino)
                    if found is not None:
                        found.nlookup = lookups.get(ino, 0)
            for node in [n for n in inodes.values() if n.nlink == 0]:
                self._maybe_free(node)

    def load_state(self, data: bytes) -> None:
        """Replace this filesystem's contents with a :meth:`dump_state` blob."""
        state = _NoGlobalsUnpickler(io.BytesIO(data)).load()
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("not a MemFS state of a supported version")
        inodes: dict[int, _Inode] = {}
        used = 0
        hwm = state.get("blocks")
        if hwm is None and self._store is not None and any(n[12] for n in state["inodes"]):
            raise ValueError("the MemFS state keeps file data on the heap, this "
                             "filesystem keeps it in a memfd (recovery_fds)")
        in_use: set[int] = set()
        for (ino, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, btime,
             nlookup, chunks, dirstate, target, xattrs) in state["inodes"]:
            n = _Inode(ino, mode, uid, gid, 0)
            n.nlink, n.size = nlink, size
            n.atime, n.mtime, n.ctime, n.btime = atime, mtime, ctime, btime
            n.nlookup, n.xattrs = nlookup, xattrs
            if xattrs:
                used += _xattr_bytes(xattrs)
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                n.data = rdev
            elif target is not None:
                n.data = target
            if chunks is not None and hwm is not None:
                n.data = dict(chunks)           # block << LEN_BITS | length
                used += sum(c & LEN_MASK for c in chunks.values())
                in_use.update(c >> LEN_BITS for c in chunks.values())
            elif chunks is not None:
                # chunks are pickled bytearrays: take them as they are (no copy)
                n.data = {i: c if isinstance(c, bytearray) else bytearray(c)
                          for i, c in chunks.items()}
                used += sum(len(c) for c in chunks.values())
            if dirstate is not None:
                parent, next_cookie, entries = dirstate
                d = _Dir(parent)
                for name, child, cookie in entries:
                    d.add(name, child, cookie)
                d.next_cookie = next_cookie
                n.data = d
            inodes[ino] = n
        with self._lock:
            self._generation = state["generation"]
            self._next_ino = state["next_ino"]
            self._next_fh = state["next_fh"]
            self.max_bytes = state["max_bytes"]
            self.max_inodes = state["max_inodes"]
            self._inodes = inodes
            self._used = used
            self._handles = {fh: _Handle(ino, flags, is_dir)
                             for fh, ino, flags, is_dir in state["handles"]}
            self._nopen = {}
            for h in self._handles.values():
                self._nopen[h.ino] = self._nopen.get(h.ino, 0) + 1
            self._linkable = set(state["linkable"])
            self._iflags = dict(state.get("iflags") or {})
            self.locks.load(state["plocks"], state["flocks"])
            if hwm is not None:
                if self._store is None:
                    self._store = BlockStore()      # the memfd comes with attach
                self._store.reset(hwm, in_use)
            elif self._store is not None and not any(n.chunks for n in inodes.values()):
                self._store.reset(0, set())

    # -- file data that outlives the server (fusewire.ReplayRecovery) -----------------

    def recovery_fds(self) -> Sequence[int]:
        """The first server of a recoverable mount: keep file data in a memfd (from
        now on), which the keeper holds for every successor."""
        with self._lock:
            if self._store is None:
                if any(n.chunks for n in self._inodes.values()):
                    return ()       # data on the heap already: it stays there
                self._store = BlockStore()
                self._store.attach(None)
            assert self._store.fd is not None
            return (self._store.fd,)

    def attach_recovery_fds(self, fds: Sequence[int]) -> None:
        """A successor: map the memfd the first server created (before or after the
        snapshot is loaded)."""
        if not fds:
            return
        with self._lock:
            if self._store is None:
                self._store = BlockStore()
            self._store.attach(fds[0])

    def journal_omits_data(self) -> Collection[int]:
        """WRITE data is in the memfd: the journal records a WRITE's header only."""
        return _WRITE_ONLY if self._store is not None else ()

    def snapshot_taken(self) -> None:
        """The last :meth:`dump_state` is the journal's base now: freed blocks go
        back to the kernel and may be reused (see memfs_blocks)."""
        with self._lock:
            if self._store is not None:
                self._store.commit()

    def snapshot_wanted(self) -> bool:
        """Ask for a snapshot when freed blocks waiting for one pass a bound."""
        store = self._store
        return store is not None and (
            store.quarantined_bytes() > QUARANTINE_BYTES + self._used // 4)
