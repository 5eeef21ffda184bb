"""Multi-process serving: N interpreters on cloned ``/dev/fuse`` fds.

Theory of operation (docs/design.md, "Multi-process serving")
--------------------------------------------------------------
The parent mounts and negotiates INIT alone, forks ``processes`` children,
writes the INIT reply, and supervises them (it serves no request).  The parent
clones the connection's fd once per child (FUSE_DEV_IOC_CLONE) and keeps a
copy of each clone (see :class:`_Children`); each child closes the other fds
and runs a one-thread loop with a blocking read on its clone (:func:`_blocking_loop`),
with its own copy of the interpreter and of the filesystem object (fork
copies, nothing Python-level is shared).  The kernel hands every request to
one waiting reader, so any process may see any request, and the reply goes
back through the fd that read it.

What the processes must agree on lives in one :class:`SharedTable`, a memfd
mapped ``MAP_SHARED`` by the parent before the fork:

- a **node log**: append-only records ``nodeid -> (st_dev, st_ino, file
  handle)``, written by the process that first registers an object (before
  its LOOKUP reply, so no other process can be asked about that nodeid
  first) and read by a process that meets an unknown nodeid;
- **open slots**, indexed by the fh value itself: an fh is a descriptor
  number in the upper half of the descriptor limit, the same in every
  process.  A slot records the owner process, the node, the open flags, the
  kernel passthrough backing id and a bit mask of the processes holding a
  descriptor at that number.  A process that meets an fh it does not hold
  copies the owner's descriptor with ``pidfd_getfd(2)`` (the same open file
  description: offsets, O_APPEND, unlinked files all carry over) and places
  it at the same number, so ``read(fh)`` is ``pread(fh)`` everywhere.
  RELEASE, wherever it lands, marks the slot released and bumps a release
  counter; each holder closes its copy when it next sees the counter move.
  A number is reused only once no process holds it.

Appends and slot changes are serialised by a ``lockf`` lock on the memfd
(plus a thread lock inside each process); nothing is locked on the GETATTR
or READ paths of a known node or handle.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import inspect
import logging
import mmap
import os
import resource
import selectors
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from fusewire.errors import UsageError
from fusewire.server import mount as _mount

if TYPE_CHECKING:
    from fusewire.operations import Operations
    from fusewire.server.loop import Server

__all__ = ["MAX_PROCESSES", "SharedTable", "check_processes", "default_processes",
           "serve_processes"]

log = logging.getLogger(__name__)

#: holders are a 64-bit mask
MAX_PROCESSES = 63     # serving processes 1..63; index 0 is the supervising parent

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = {"x86_64": 438, "aarch64": 438}.get(os.uname().machine, 438)
_PR_SET_PDEATHSIG = 1

_MAGIC = b"FWMP0001"
# magic, log_used, alloc_next, release_gen, slot_base, nslots, pids[64]
_HEAD = struct.Struct(f"<8sQQQQQ{MAX_PROCESSES + 1}I")
_HEAD_SIZE = 4096
_LOG_SIZE = 256 << 20                      # sparse: only written pages cost memory
_IDX_BITS = 22
_IDX_MASK = (1 << _IDX_BITS) - 1
_IDX_FULL = (1 << _IDX_BITS) * 3 // 8    # entries in both indexes together: <= 75% each
_REC = struct.Struct("<QQQI4x")           # nodeid, dev, ino, handle length
_SLOT = struct.Struct("<IIQQiII")         # state, owner, holders, nodeid, backing, kind, flags
_SLOT_SIZE = 40
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_KEY = struct.Struct("<QQ")               # st_dev, st_ino inside a log record
_SLOT_HEAD = struct.Struct("<IIQ")        # state, owner, holders
_SLOT_ID = struct.Struct("<IIQQ")         # ... and nodeid
_OFF_LOG_USED = 8
_OFF_ALLOC = 16
_OFF_RELEASE = 24
_OFF_PIDS = 48
_OFF_ENTRIES = _OFF_PIDS + 4 * (MAX_PROCESSES + 1)
# Intent rings (see SharedTable.put_intent), after the open slots: per process a
# u64 write counter and _RING entries of state, opcode, key, pid, probe count, probes.
_RING = 16
_INTENT = struct.Struct("<IIQII4q")
_INTENT_SIZE = 64
_RING_SIZE = 8 + _RING * _INTENT_SIZE
_MAX_PROBES = 4
INTENT_RUNNING = 1          #: the handler may still be running in its process
INTENT_DONE = 2             #: the handler returned (its reply may not be written)


def _hash(x: int) -> int:
    """Fibonacci hashing of a 64-bit value to an index slot."""
    return ((x * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> (64 - _IDX_BITS)

FREE, OPEN, RELEASED = 0, 1, 2


def default_processes() -> int:
    """The number ``--processes auto`` picks: one per CPU this process may run on.

    Not the default of ``--processes``: each process costs an interpreter
    (about 15-20 MiB), and on a machine whose clients need the CPUs
    themselves the benefit is at most what the bench shows.
    """
    try:
        return max(1, min(MAX_PROCESSES, len(os.sched_getaffinity(0))))
    except OSError:
        return max(1, min(MAX_PROCESSES, os.cpu_count() or 1))


def check_processes(ops: Operations, processes: int, *, capture: Any = None,
                    workers: int = 0) -> None:
    """Raise UsageError (one line) if ``ops`` cannot be served by ``processes`` processes."""
    if processes < 1 or processes > MAX_PROCESSES:
        raise UsageError(f"--processes must be between 1 and {MAX_PROCESSES}")
    if processes == 1:
        return
    name = type(ops).__name__
    if not getattr(ops, "multiprocess_safe", False):
        raise UsageError(f"{name} keeps its state in one process's memory; --processes "
                         "needs a filesystem that declares multiprocess_safe "
                         "(e.g. passthrough)")
    if capture is not None:
        raise UsageError("--capture records one process; it cannot be combined with "
                         "--processes")
    if any(inspect.iscoroutinefunction(getattr(ops, attr, None))
           for attr in dir(type(ops)) if not attr.startswith("_")):
        raise UsageError(f"{name} has async handlers; --processes serves sync handlers "
                         "only (each process runs a blocking one-thread loop)")
    if workers:
        raise UsageError("use --processes or --workers, not both (each serving process "
                         "runs one thread)")
    check = getattr(ops, "check_multiprocess", None)
    if check is not None:
        check()


def _pidfd_getfd(pidfd: int, number: int) -> int:
    fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, number, 0)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


class SharedTable:
    """The memory the serving processes share: node log and open slots (see module doc).

    Created by the parent before it forks; each process calls :meth:`become`
    with its index.  All methods are safe to call from several threads.
    """

    def __init__(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (OSError, ValueError):
                pass
        limit = soft if soft != resource.RLIM_INFINITY else 1 << 16
        limit = min(limit, 1 << 20)
        #: fh values (descriptor numbers) live in [slot_base, slot_base + nslots)
        self.slot_base = max(64, limit // 2)
        self.nslots = limit - self.slot_base
        self._layout()
        self._fd = os.memfd_create("fusewire-shared", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self.size)
        self._map = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        _HEAD.pack_into(self._map, 0, _MAGIC, 0, 1 << 63, 0, self.slot_base, self.nslots,
                        *([0] * (MAX_PROCESSES + 1)))
        self._start()

    def _layout(self) -> None:
        self._id_idx = _HEAD_SIZE + _LOG_SIZE
        self._key_idx = self._id_idx + (8 << _IDX_BITS)
        self._slots_off = self._key_idx + (8 << _IDX_BITS)
        self._intents_off = self._slots_off + self.nslots * _SLOT_SIZE
        self.size = self._intents_off + (MAX_PROCESSES + 1) * _RING_SIZE

    def _start(self) -> None:
        self.index = 0
        self._tlock = threading.RLock()
        self._pidfds: dict[int, tuple[int, int]] = {}  # process index -> (pid, pidfd)
        self.seen_release = 0
        self.become(0)

    @classmethod
    def adopt(cls, fd: int) -> SharedTable:
        """Map the table in memfd ``fd`` that a dead server group left behind.

        For recovery: the keeper holds the memfd, so the node log and the open
        slots outlive every serving process.  ``fd`` becomes the table's own
        (closed by :meth:`close`).  Raises ValueError if ``fd`` holds no table,
        OSError(EMFILE) if this process's descriptor limit cannot reach the
        slots' numbers (a successor must place handles at the same numbers).
        """
        head = os.pread(fd, _HEAD.size, 0)
        if len(head) < _HEAD.size or head[:8] != _MAGIC:
            raise ValueError("not a fusewire shared table")
        fields = _HEAD.unpack(head)
        self = cls.__new__(cls)
        self.slot_base, self.nslots = int(fields[4]), int(fields[5])
        self._layout()
        size = os.fstat(fd).st_size
        if size == self._intents_off:
            os.ftruncate(fd, self.size)    # a table from before the intent rings: add them
        elif size < self.size:
            raise ValueError("shared table truncated")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = self.slot_base + self.nslots
        if soft != resource.RLIM_INFINITY and soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise OSError(errno.EMFILE, f"descriptor limit {hard} below the shared "
                              f"table's handle numbers (up to {need})")
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        self._fd = fd
        self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self._start()
        return self

    def fileno(self) -> int:
        """The memfd holding the table (for a keeper to keep across a crash)."""
        return self._fd

    def orphan_all(self) -> list[tuple[int, int, int, int, int]]:
        """Every serving process (and the parent) died: clear them out of the table.

        Pids and holder bits go; released numbers become free; each handle still
        open (the kernel never sent its RELEASE) stays open with no holder and
        owner 0, to be reopened at the same number by the successor.  Returns
        ``(fh, nodeid, kind, flags, backing)`` of those open handles.
        """
        out = []
        with self.locked():
            m = self._map
            for index in range(MAX_PROCESSES + 1):
                _U32.pack_into(m, _OFF_PIDS + 4 * index, 0)
            for i in range(self.nslots):
                off = self._slots_off + i * _SLOT_SIZE
                state, _owner, _holders, nodeid, backing, kind, flags = _SLOT.unpack_from(
                    m, off)
                if state == OPEN:
                    _SLOT_HEAD.pack_into(m, off, OPEN, 0, 0)
                    out.append((self.slot_base + i, int(nodeid), int(kind), int(flags),
                                int(backing)))
                elif state == RELEASED:
                    _SLOT.pack_into(m, off, FREE, 0, 0, 0, -1, 0, 0)
            _U32.pack_into(m, _OFF_PIDS + 4 * self.index, os.getpid())
        self._pidfds = {}
        return out

    def node_records(self) -> dict[int, tuple[tuple[int, int], bytes]]:
        """``nodeid -> ((st_dev, st_ino), handle)`` for every node in the log (newest
        record of each nodeid): what a successor revives nodes from."""
        out: dict[int, tuple[tuple[int, int], bytes]] = {}
        with self.locked():
            m = self._map
            used = int(_U64.unpack_from(m, _OFF_LOG_USED)[0])
            rec = 0
            while rec < used:
                nodeid, dev, ino, hlen = _REC.unpack_from(m, _HEAD_SIZE + rec)
                start = _HEAD_SIZE + rec + _REC.size
                out[int(nodeid)] = ((int(dev), int(ino)), bytes(m[start:start + hlen]))
                rec += _REC.size + ((hlen + 7) & ~7)
        return out

    def close(self) -> None:
        """Unmap and close (this process's view only)."""
        for _pid, pfd in self._pidfds.values():
            try:
                os.close(pfd)
            except OSError:
                pass
        self._pidfds = {}
        self._map.close()
        os.close(self._fd)

    # -- processes -------------------------------------------------------------------

    def become(self, index: int) -> None:
        """Make this process serving process ``index`` (after fork: forget inherited state)."""
        self.index = index
        self._tlock = threading.RLock()
        for _pid, pfd in self._pidfds.values():
            try:
                os.close(pfd)
            except OSError:
                pass
        self._pidfds = {}
        _U32.pack_into(self._map, _OFF_PIDS + 4 * index, os.getpid())

    def set_pid(self, index: int, pid: int) -> None:
        """Record ``pid`` as serving process ``index`` (0: none, it died)."""
        _U32.pack_into(self._map, _OFF_PIDS + 4 * index, pid)

    def pid_of(self, index: int) -> int:
        """The pid recorded for process ``index`` (0: none)."""
        return int(_U32.unpack_from(self._map, _OFF_PIDS + 4 * index)[0])

    def _pidfd(self, index: int) -> int:
        pid = self.pid_of(index)
        if not pid:
            raise OSError(errno.ESRCH, "no such serving process")
        cached = self._pidfds.get(index)
        if cached is not None:
            if cached[0] == pid:
                return cached[1]
            os.close(cached[1])        # that process was restarted
        pfd = os.pidfd_open(pid)
        self._pidfds[index] = (pid, pfd)
        return pfd

    def copy_from(self, index: int, number: int) -> int:
        """A new descriptor for descriptor ``number`` of process ``index`` (pidfd_getfd)."""
        return _pidfd_getfd(self._pidfd(index), number)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock (and this process's thread lock)."""
        with self._tlock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # -- intents ---------------------------------------------------------------------------
    # Exactly-once mutations across processes (fusewire.recovery.intent): before a
    # namespace-changing request runs, its process writes the request key and the
    # probes of the state it changes into its own ring; a re-sent copy of that
    # request, in any process of this group or of a successor group, finds it.
    # Each ring has one writer (its process); an entry is written with state 0
    # first and its state last, so a reader never trusts a half-written entry.  A
    # ring keeps its last _RING intents: a dead process's entries survive its
    # replacement's first _RING - 1 namespace requests, and the kernel re-sends
    # the dead process's requests before the replacement is forked.

    def put_intent(self, key: int, opcode: int, probes: tuple[int, ...]) -> int:
        """Record that this process is about to run request ``key``; returns the
        entry's offset (for :meth:`intent_done`)."""
        if len(probes) > _MAX_PROBES:
            raise ValueError("too many probes")
        m = self._map
        ring = self._intents_off + self.index * _RING_SIZE
        n = int(_U64.unpack_from(m, ring)[0])
        off = ring + 8 + (n % _RING) * _INTENT_SIZE
        _U32.pack_into(m, off, 0)
        padded = tuple(probes) + (0,) * (_MAX_PROBES - len(probes))
        _INTENT.pack_into(m, off, 0, opcode, key, os.getpid(), len(probes), *padded)
        _U32.pack_into(m, off, INTENT_RUNNING)
        _U64.pack_into(m, ring, n + 1)
        return off

    def intent_done(self, off: int) -> None:
        """The handler of the intent at ``off`` returned."""
        _U32.pack_into(self._map, off, INTENT_DONE)

    def find_intent(self, key: int) -> tuple[int, int, int, tuple[int, ...]] | None:
        """``(state, pid, opcode, probes)`` of the newest intent for request ``key`` in
        any process's ring, or None."""
        m = self._map
        best: tuple[int, int, int, tuple[int, ...]] | None = None
        for index in range(MAX_PROCESSES + 1):
            ring = self._intents_off + index * _RING_SIZE
            if not _U64.unpack_from(m, ring)[0]:
                continue
            for e in range(_RING):
                off = ring + 8 + e * _INTENT_SIZE
                state, opcode, k, pid, count, *probes = _INTENT.unpack_from(m, off)
                if state and k == key:
                    best = (int(state), int(pid), int(opcode), tuple(probes[:count]))
        return best

    # -- the node log ------------------------------------------------------------------
    # Records are appended to the log; two open-addressing indexes (by nodeid
    # and by (st_dev, st_ino)) hold "record offset + 1" per entry, 0 = empty,
    # so no process keeps a copy of the log.  Everything here holds the lock.

    def _probe(self, base: int, h: int, match: Callable[[int], bool]) -> tuple[int, int]:
        """``(index slot offset, record offset or -1)``: the matching entry or the empty slot."""
        m = self._map
        i = h
        while True:
            slot = base + 8 * i
            v = int(_U64.unpack_from(m, slot)[0])
            if v == 0:
                return slot, -1
            if match(v - 1):
                return slot, v - 1
            i = (i + 1) & _IDX_MASK

    def _by_id(self, nodeid: int) -> tuple[int, int]:
        m = self._map
        return self._probe(self._id_idx, _hash(nodeid), lambda rec: int(
            _U64.unpack_from(m, _HEAD_SIZE + rec)[0]) == nodeid)

    def _by_key(self, key: tuple[int, int]) -> tuple[int, int]:
        m = self._map
        return self._probe(self._key_idx, _hash(key[0] * 0x100000001B3 ^ key[1]),
                           lambda rec: _KEY.unpack_from(m, _HEAD_SIZE + rec + 8)
                           == key)

    def _handle_at(self, rec: int) -> bytes:
        hlen = _REC.unpack_from(self._map, _HEAD_SIZE + rec)[3]
        start = _HEAD_SIZE + rec + _REC.size
        return bytes(self._map[start:start + hlen])

    def node_handle(self, nodeid: int) -> bytes | None:
        """The newest handle recorded for ``nodeid`` by any process, or None."""
        with self.locked():
            _slot, rec = self._by_id(nodeid)
            return None if rec < 0 else self._handle_at(rec)

    def known_key(self, key: tuple[int, int]) -> int | None:
        """The nodeid published for ``key``, or None."""
        with self.locked():
            _slot, rec = self._by_key(key)
            return None if rec < 0 else int(
                _U64.unpack_from(self._map, _HEAD_SIZE + rec)[0])

    def known(self, key: tuple[int, int], handle: bytes) -> bool:
        """Whether ``key`` is published with exactly ``handle``."""
        with self.locked():
            _slot, rec = self._by_key(key)
            return rec >= 0 and self._handle_at(rec) == handle

    def publish_node(self, key: tuple[int, int], nodeid: int | None, handle: bytes) -> int:
        """Record ``key``'s handle; allocate a nodeid if ``nodeid`` is None.

        If ``key`` was published before, its nodeid is kept; the record is
        appended again only if the handle differs (the inode number was
        reused by a new object: the newest record wins).  Raises
        OSError(ENOSPC) when the log or its indexes are full.
        """
        m = self._map
        with self.locked():
            key_slot, rec = self._by_key(key)
            if rec >= 0:
                if self._handle_at(rec) == handle:
                    return int(_U64.unpack_from(m, _HEAD_SIZE + rec)[0])
                nodeid = int(_U64.unpack_from(m, _HEAD_SIZE + rec)[0])
            elif nodeid is None:
                nodeid = int(_U64.unpack_from(m, _OFF_ALLOC)[0])
                _U64.pack_into(m, _OFF_ALLOC, nodeid + 1)
            used = int(_U64.unpack_from(m, _OFF_LOG_USED)[0])
            entries = int(_U64.unpack_from(m, _OFF_ENTRIES)[0])
            need = _REC.size + ((len(handle) + 7) & ~7)
            if used + need > _LOG_SIZE or entries >= _IDX_FULL:
                raise OSError(errno.ENOSPC, "shared node log full")
            base = _HEAD_SIZE + used
            _REC.pack_into(m, base, nodeid, key[0], key[1], len(handle))
            m[base + _REC.size:base + _REC.size + len(handle)] = handle
            id_slot, old = self._by_id(nodeid)
            _U64.pack_into(m, id_slot, used + 1)
            _U64.pack_into(m, key_slot, used + 1)
            _U64.pack_into(m, _OFF_LOG_USED, used + need)
            _U64.pack_into(m, _OFF_ENTRIES, entries + (rec < 0) + (old < 0))
        return nodeid

    # -- open slots ------------------------------------------------------------------------

    def _slot_off(self, fh: int) -> int:
        i = fh - self.slot_base
        if not 0 <= i < self.nslots:
            raise OSError(errno.EBADF, "not a shared handle")
        return self._slots_off + i * _SLOT_SIZE

    def slot(self, fh: int) -> tuple[int, int, int, int, int, int, int]:
        """``(state, owner, holders, nodeid, backing, kind, flags)`` of handle ``fh``."""
        return _SLOT.unpack_from(self._map, self._slot_off(fh))

    def claim(self, nodeid: int, kind: int, flags: int, free_here: Any) -> int:
        """Reserve a free handle number for a new open; ``free_here(n)`` says n is unused here."""
        with self.locked():
            m = self._map
            start = int(_U64.unpack_from(m, _OFF_RELEASE)[0]) % self.nslots
            for k in range(self.nslots):
                i = (start + k) % self.nslots
                off = self._slots_off + i * _SLOT_SIZE
                if _U32.unpack_from(m, off)[0] != FREE:
                    continue
                fh = self.slot_base + i
                if not free_here(fh):
                    continue
                _SLOT.pack_into(m, off, OPEN, self.index, 1 << self.index, nodeid, -1,
                                kind, flags)
                return fh
        raise OSError(errno.EMFILE, "no free shared handle")

    def set_backing(self, fh: int, backing_id: int) -> None:
        """Record the kernel passthrough backing id of ``fh``."""
        with self.locked():
            off = self._slot_off(fh)
            _I32.pack_into(self._map, off + 24, backing_id)

    def hold(self, fh: int) -> tuple[int, int, int, int] | None:
        """Add this process to ``fh``'s holders.

        Returns ``(owner, nodeid, kind, flags)``, or None if ``fh`` is not open.
        """
        with self.locked():
            off = self._slot_off(fh)
            state, owner, holders, nodeid, _backing, kind, flags = _SLOT.unpack_from(
                self._map, off)
            if state != OPEN:
                return None
            _U64.pack_into(self._map, off + 8, holders | (1 << self.index))
            return owner, nodeid, kind, flags

    def unhold(self, fh: int) -> None:
        """Take this process out of ``fh``'s holders (it could not place a copy)."""
        with self.locked():
            off = self._slot_off(fh)
            state, owner, holders = _SLOT_HEAD.unpack_from(self._map, off)
            holders &= ~(1 << self.index)
            if state == RELEASED and not holders:
                state = FREE
            _SLOT_HEAD.pack_into(self._map, off, state, owner, holders)

    def release(self, fh: int) -> int:
        """Mark ``fh`` released (the kernel is done with it); return its backing id or -1."""
        with self.locked():
            off = self._slot_off(fh)
            state, _owner, holders, _n, backing, _k, _f = _SLOT.unpack_from(self._map, off)
            if state != OPEN:
                return -1
            holders &= ~(1 << self.index)
            _SLOT_HEAD.pack_into(self._map, off, RELEASED if holders else FREE,
                             _owner, holders)
            _I32.pack_into(self._map, off + 24, -1)
            gen = int(_U64.unpack_from(self._map, _OFF_RELEASE)[0])
            _U64.pack_into(self._map, _OFF_RELEASE, gen + 1)
            return int(backing)

    def forget_process(self, index: int) -> None:
        """Process ``index`` died: it holds no descriptor anywhere any more."""
        bit = 1 << index
        with self.locked():
            m = self._map
            for i in range(self.nslots):
                off = self._slots_off + i * _SLOT_SIZE
                state, owner, holders = _SLOT_HEAD.unpack_from(m, off)
                if holders & bit:
                    holders &= ~bit
                    if state == RELEASED and not holders:
                        state = FREE
                    _SLOT_HEAD.pack_into(m, off, state, owner, holders)

    def released_gen(self) -> int:
        """A counter that moves whenever some handle is released."""
        return int(_U64.unpack_from(self._map, _OFF_RELEASE)[0])

    def released(self, held: list[int]) -> list[int]:
        """Of this process's ``held`` handles, those the kernel has released."""
        m = self._map
        return [fh for fh in held
                if _U32.unpack_from(m, self._slot_off(fh))[0] != OPEN]

    def drop(self, fhs: list[int]) -> None:
        """This process no longer holds ``fhs`` (released; call after closing them)."""
        with self.locked():
            for fh in fhs:
                off = self._slot_off(fh)
                state, owner, holders = _SLOT_HEAD.unpack_from(self._map, off)
                if state == OPEN:
                    continue
                holders &= ~(1 << self.index)
                _SLOT_HEAD.pack_into(self._map, off, RELEASED if holders else FREE,
                                 owner, holders)

    def opens_of(self, nodeid: int) -> list[tuple[int, int]]:
        """``(fh, owner)`` of the open handles of ``nodeid`` (a linear scan: rare path)."""
        out = []
        with self.locked():
            for i in range(self.nslots):
                off = self._slots_off + i * _SLOT_SIZE
                state, owner, _h, nid = _SLOT_ID.unpack_from(self._map, off)
                if state == OPEN and nid == nodeid:
                    out.append((self.slot_base + i, owner))
        return out


# -- serving ---------------------------------------------------------------------------------


def _answer_init(server: Server, fd: int, before_reply: Callable[[], None]) -> None:
    """Read and answer requests until INIT is negotiated (the kernel sends INIT first).

    ``before_reply`` runs once the session exists, before the INIT reply is
    written: the serving processes are there before the mount answers.
    """
    buf = bytearray(max(8192, server.config.max_write + 4096))
    view = memoryview(buf)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while server.conn.session is None:
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                sel.select(30)
                continue
            except InterruptedError:
                continue
            bufs, _lookups = server.dispatcher.dispatch(view[:n])
            if server.conn.session is not None:
                before_reply()
            if bufs is not None:
                os.writev(fd, bufs)
    finally:
        sel.close()
    server.ready.set()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _StopError(Exception):
    """Raised by the stop-signal handler to leave a blocking read."""


def _child(server: Server, index: int, table: SharedTable, parent_fd: int,
           parent_pid: int, sigmask: set[int | signal.Signals], clone: int,
           others: list[int]) -> int:
    """Body of serving process ``index`` (runs in the forked child, stop signals blocked)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        return 0
    after_fork = getattr(server.ops, "after_fork", None)
    if after_fork is not None:
        after_fork()
    # the inherited wake-up pipe is the parent's: never write to it from here
    for wfd in (server._wake_r, server._wake_w):
        os.close(wfd)
    server._wake_r = server._wake_w = -1
    stop = server._stop = threading.Event()
    reading = [False]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if reading[0]:
            raise _StopError

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    # the parent cloned our fd and keeps a copy (so a request we read stays queued on
    # it if we die); the others' clones and the original are not ours to read
    fd = clone
    for other in (parent_fd, *others):
        if other != fd:
            os.close(other)
    in_child = getattr(server, "in_child", None)
    if in_child is not None:
        in_child(table)     # e.g. a recoverable server: a dispatcher writing shared intents
    server.fd = fd
    table.become(index)
    signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
    sweep = getattr(server.ops, "sweep_shared", None)
    if sweep is not None:
        threading.Thread(target=_sweeper, args=(sweep, stop), daemon=True,
                         name="fusewire-sweep").start()
    try:
        _blocking_loop(server, fd, reading)
    except _StopError:
        pass
    return 0


#: seconds between two ``ops.sweep_shared()`` calls in each serving process
SWEEP_INTERVAL = 0.5


def _sweeper(sweep: Any, stop: threading.Event) -> None:
    """Let an idle process give up what other processes released (a helper thread)."""
    while not stop.wait(SWEEP_INTERVAL):
        try:
            sweep()
        except Exception:
            log.exception("sweep_shared raised")


def _blocking_loop(server: Server, fd: int, reading: list[bool]) -> None:
    """Read, dispatch, write, with a blocking read (see below) until unmount or stop.

    A blocking read(2) of /dev/fuse waits as an *exclusive* waiter: a new
    request wakes one of the N processes.  A poll/select waiter (the
    single-process loop, which needs its wake-up pipe) is woken for every
    request, so N polling processes would all wake for each request and
    all but one go back to sleep empty-handed.  A stop signal raises
    :class:`_StopError` out of the read (``reading`` says when that is safe);
    during a request it only sets the stop flag, checked after the reply.
    """
    os.set_blocking(fd, True)
    buf = bytearray(max(8192, server.config.max_write + 4096))
    view = memoryview(buf)
    readv = os.readv
    writev = os.writev
    dispatcher = server.dispatcher
    dispatch = dispatcher.dispatch
    stop = server._stop
    while not stop.is_set():
        reading[0] = True
        try:
            n = readv(fd, [buf])
        except OSError as exc:
            reading[0] = False
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                continue
            if exc.errno == errno.ENODEV:
                server.unmounted = True
                return
            if exc.errno == errno.ECONNABORTED:
                return
            raise
        reading[0] = False
        bufs, lookups = dispatch(view[:n])
        if bufs is None:
            continue
        try:
            writev(fd, bufs)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                server.unmounted = True
                return
            if exc.errno != errno.ENOENT:
                log.error("reply write failed: %s", exc)
            dispatcher.rollback(lookups)
        if dispatcher.fatal is not None:
            return


#: restarts of dead serving processes over the life of a mount
MAX_RESTARTS = 10


class _Children:
    """The forked serving processes: start, watch (report, restart), stop."""

    def __init__(self, server: Server, table: SharedTable, fd: int, processes: int,
                 clones: list[int], resend_on_death: bool = False) -> None:
        self.server = server
        self.table = table
        self.fd = fd
        #: the fd of each process, cloned here and kept open here: a dead process's
        #: unanswered requests stay on it (not failed) until a RESEND re-queues them
        self.clones = {index: clones[index - 1] for index in range(1, processes + 1)}
        self.resend_on_death = resend_on_death
        self.parent_pid = os.getpid()
        self.pids: dict[int, int] = {}        # index -> pid
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.restarts = 0
        self.dead: set[int] = set()
        self.watchers: list[threading.Thread] = []
        for index in range(1, processes + 1):
            self.pids[index] = self._spawn(index)

    def _spawn(self, index: int) -> int:
        # signals stay blocked across the fork until the child has its own
        # handlers and wake-up pipe (the inherited ones would wake the parent)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self.table.set_pid(index, pid)
        else:                 # pragma: no cover - runs in the child
            code = 1
            try:
                code = _child(self.server, index, self.table, self.fd, self.parent_pid,
                              blocked, self.clones[index], list(self.clones.values()))
            except BaseException:
                log.exception("serving process %d failed", index)
            finally:
                os._exit(code)
        return pid

    def watch(self) -> None:
        """One thread per child, each waiting for its pid."""
        for index in self.pids:
            t = threading.Thread(target=self._watch, args=(index,), daemon=True,
                                 name=f"fusewire-watch-{index}")
            t.start()
            self.watchers.append(t)

    def _watch(self, index: int) -> None:
        while True:
            pid = self.pids[index]
            try:
                # wait without reaping, so that the pid cannot be reused by an
                # unrelated process while the table still names it
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                self.table.set_pid(index, 0)
                self.table.forget_process(index)
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                return
            if self.stopping.is_set():
                return
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                self.server.stop()      # unmounted (ENODEV): the others end the same way
                return
            how = (f"exit status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status)
                   else f"signal {signal.Signals(os.WTERMSIG(status)).name}")
            requeued = self.resend_on_death and self._resend()
            with self.lock:
                if self.stopping.is_set():
                    return
                if not requeued:
                    # closing our copy ends what it had read (ECONNABORTED to the
                    # callers) instead of leaving it unanswered on a clone no one reads
                    self._reclone(index)
                restart = self.restarts < MAX_RESTARTS
                if restart:
                    self.restarts += 1
                    self.pids[index] = self._spawn(index)
            fate = "were re-sent" if requeued else "failed"
            if restart:
                log.error("fusewire: serving process %d (pid %d) died (%s); its in-flight "
                          "requests %s; restarted as pid %d", index, pid, how, fate,
                          self.pids[index])
                continue
            with self.lock:
                self.dead.add(index)
                left = len(self.pids) - len(self.dead)
            log.error("fusewire: serving process %d (pid %d) died (%s); its in-flight "
                      "requests %s; not restarted (%d restarts used), %d left", index,
                      pid, how, fate, MAX_RESTARTS, left)
            if not left:
                self.server.stop()
            return

    def _reclone(self, index: int) -> None:
        """Replace process ``index``'s clone by a fresh one (the old one is closed)."""
        old = self.clones[index]
        try:
            self.clones[index] = _mount.clone_fd(self.fd)
        except OSError as exc:      # the connection is gone: the replacement ends at once
            log.error("fusewire: cannot clone the fuse fd: %s", exc)
            self.clones[index] = os.dup(old)
        os.close(old)

    def _resend(self) -> bool:
        """Re-queue every request read and not answered (NOTIFY_RESEND, 7.40).

        The dead process's clone is still open here, so what it had read is
        still on the kernel's processing list of that clone, not failed; RESEND
        moves the processing lists of every clone back to the pending queue,
        where any process reads them.  (Requests a live process is working on
        are re-sent too: its reply then finds nothing and is dropped, and the
        re-sent copy runs again, as after a whole-server crash.)
        """
        try:
            self.server.notify_resend()
        except Exception as exc:
            log.error("fusewire: NOTIFY_RESEND failed: %s", exc)
            return False
        return True

    def stop(self) -> None:
        """SIGTERM every child by pid, wait, SIGKILL what is left after 5 s."""
        with self.lock:
            self.stopping.set()
            pids = dict(self.pids)
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for t in self.watchers:
            t.join(5)
        for t, pid in zip(self.watchers, pids.values(), strict=True):
            if t.is_alive():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                t.join(5)


def serve_processes(server: Server, processes: int, *, install_signals: bool = True,
                    table: SharedTable | None = None, clones: list[int] | None = None,
                    on_shared: Callable[[SharedTable, list[int]], None] | None = None,
                    resend_on_death: bool = False,
                    on_started: Callable[[], None] | None = None) -> None:
    """Answer INIT, fork ``processes`` serving children, supervise them; stop them at the end.

    Called by :meth:`Server.serve` when the server was built with
    ``processes > 1``.  This process serves no request itself (a poll
    waiter here would wake for every request; see :func:`_blocking_loop`).
    A child that dies is reported on the log (its in-flight requests fail
    with ECONNABORTED; the others keep serving) and restarted, until
    :data:`MAX_RESTARTS` restarts were used (a crash loop ends there).  The
    children stop on unmount, on SIGTERM/SIGINT, or when this process exits.

    Recovery (:mod:`fusewire.recovery.takeover`) passes the ``table`` and the
    ``clones`` a dead server group left in the keeper (reused: process i reads
    ``clones[i-1]``), ``on_shared(table, clones)`` to hand new ones to the
    keeper before any request is served, and ``resend_on_death`` (a dead
    process's unanswered requests are re-sent instead of failed); ``on_started()`` runs
    once INIT is answered and every process is forked; ``server.in_child()``, if it
    exists, runs first thing in each serving process.
    """
    fd = server.fd if server.fd is not None else server.mount()
    old: dict[signal.Signals, Any] = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        # from now on, not only once serve() runs: a SIGTERM while the children
        # start must still stop them and unmount
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, server._on_signal)
    try:
        _serve_processes(server, processes, fd, table, clones, on_shared, resend_on_death,
                         on_started)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _serve_processes(server: Server, processes: int, fd: int, table: SharedTable | None,
                     clones: list[int] | None,
                     on_shared: Callable[[SharedTable, list[int]], None] | None,
                     resend_on_death: bool,
                     on_started: Callable[[], None] | None = None) -> None:
    if table is None:
        table = SharedTable()
    clones = list(clones or [])[:processes]
    while len(clones) < processes:
        clones.append(_mount.clone_fd(fd))
    if on_shared is not None:
        on_shared(table, clones)
    attach = getattr(server.ops, "attach_shared", None)
    if attach is not None:
        attach(table)
    kids: list[_Children] = []
    shared = table

    def start() -> None:
        kids.append(_Children(server, shared, fd, processes, clones, resend_on_death))

    try:
        if server.conn.session is None:
            _answer_init(server, fd, start)
        else:
            start()
            server.ready.set()
        kids[0].watch()
        if on_started is not None and server.conn.session is not None:
            on_started()
        server._stop.wait()     # a stop signal, or the watchers: unmounted / none left
    finally:
        if kids:
            kids[0].stop()
        for clone in (kids[0].clones.values() if kids else clones):
            try:
                os.close(clone)
            except OSError:
                pass
        try:
            server.ops.destroy()
        except Exception:
            log.exception("destroy raised")
