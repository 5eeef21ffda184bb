"""MemFS's file data in a memfd that outlives the server: fixed blocks and a free list.

One job: a store of fixed-size blocks (:data:`~fusewire.examples.memfs_nodes.CHUNK_SIZE`)
in one sparse memfd, mapped shared.  A recoverable mount's keeper holds the
memfd (``ReplayRecovery.recovery_fds``), so a successor maps the very bytes
the dead server wrote and the journal only records *which* blocks a file
uses, never their contents.

A file's chunk map (``_Inode.data``) maps a chunk index to an int,
``block << LEN_BITS | length``: the block number and how many of its bytes
are valid.  Bytes of a block past its length are undefined (they read as
zeros, and a write past the length zeroes the gap first).

Allocation is deterministic, so that a successor replaying the journal hands
out the same block numbers the dead server did: the lowest free block first,
else a new one past the highest ever used (``hwm``).  The free list only
changes at a *snapshot*: a block freed after the last snapshot is
quarantined, neither reused nor given back to the kernel, until the next
snapshot is the journal's base (:meth:`BlockStore.commit`).  Only then is
it punched out of the memfd (its memory returned) and put on the free list.
So a replay from any snapshot still in use never finds a block reused under
it, and a freed block's bytes stay intact until no journal can name them.
"""

from __future__ import annotations

import heapq
import logging
import mmap
import os

from fusewire.examples.memfs_nodes import CHUNK_SIZE

__all__ = ["LEN_BITS", "LEN_MASK", "BlockStore"]

log = logging.getLogger("fusewire.examples.memfs")

#: a chunk's int: ``block << LEN_BITS | length`` (length up to CHUNK_SIZE)
LEN_BITS = 17
LEN_MASK = (1 << LEN_BITS) - 1
#: the mapping grows in steps of at least this many bytes
_GROW = 64 << 20
_NAME = "fusewire-memfs-data"


class BlockStore:
    """Fixed-size blocks in one memfd (see the module doc)."""

    def __init__(self, fd: int | None = None) -> None:
        #: the memfd (None until :meth:`attach`: a warm spare loads block maps first)
        self.fd: int | None = None
        self.map: mmap.mmap | None = None
        self.size = 0
        #: blocks ever handed out: every block below is in use, free or quarantined
        self.hwm = 0
        self.free: list[int] = []           # a heap: the lowest free block first
        #: blocks freed since the last snapshot (see the module doc)
        self.quarantine: list[int] = []
        if fd is not None:
            self.attach(fd)

    def attach(self, fd: int | None) -> None:
        """Map ``fd`` (a memfd a previous server filled), or a new empty memfd."""
        if fd is None:
            fd = os.memfd_create(_NAME, os.MFD_CLOEXEC)
        self.close()
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self._map_at_least(max(self.hwm * CHUNK_SIZE, 1))

    def _map_at_least(self, need: int) -> None:
        if self.map is not None and need <= self.size:
            return
        assert self.fd is not None
        if need > self.size:
            size = max(need, self.size * 2, _GROW)
            size = -(-size // CHUNK_SIZE) * CHUNK_SIZE
            if self.map is not None:
                # ftruncate + mremap: the pages stay mapped (no faults again, and
                # the process's RSS keeps counting them)
                self.map.resize(size)
                self.size = size
                return
            os.ftruncate(self.fd, size)         # sparse: holes cost no memory
            self.size = size
        self.map = mmap.mmap(self.fd, self.size)

    def mapped(self) -> mmap.mmap:
        """The mapping; a store that was never attached gets a new, empty memfd (the
        data a previous server kept is lost: logged)."""
        m = self.map
        if m is None:
            if self.hwm:
                log.error("memfs: no data memfd was handed over: %d block(s) of file "
                          "data are lost (they read as zeros)", self.hwm)
            self.attach(None)
            m = self.map
            assert m is not None
        return m

    def close(self) -> None:
        """Unmap (the fd is the caller's, or the keeper's)."""
        if self.map is not None:
            self.map.close()
            self.map = None

    # -- allocation ---------------------------------------------------------------------

    def alloc(self) -> int:
        """A block number: the lowest free one, else a new one past the high-water mark."""
        if self.free:
            return heapq.heappop(self.free)
        b = self.hwm
        if (b + 1) * CHUNK_SIZE > self.size or self.map is None:
            self.mapped()
            self._map_at_least((b + 1) * CHUNK_SIZE)
        self.hwm = b + 1
        return b

    def release(self, block: int) -> None:
        """``block`` is no longer used; it is quarantined until the next snapshot."""
        self.quarantine.append(block)

    def quarantined_bytes(self) -> int:
        """Bytes held by blocks freed since the last snapshot."""
        return len(self.quarantine) * CHUNK_SIZE

    def commit(self) -> None:
        """A snapshot is now the journal's base: punch the quarantined blocks out of
        the memfd (their memory goes back) and make them allocatable."""
        q = self.quarantine
        if not q:
            return
        q.sort()
        m = self.map
        if m is not None:
            start = prev = q[0]
            for b in [*q[1:], -2]:
                if b != prev + 1:
                    try:
                        m.madvise(mmap.MADV_REMOVE, start * CHUNK_SIZE,
                                  (prev - start + 1) * CHUNK_SIZE)
                    except OSError as exc:      # memory is kept, nothing else changes
                        log.warning("memfs: could not release freed blocks: %s", exc)
                    start = b
                prev = b
        self.free.extend(q)
        heapq.heapify(self.free)
        self.quarantine = []

    def reset(self, hwm: int, used: set[int]) -> None:
        """Loaded from a snapshot: ``hwm`` blocks, those not in ``used`` free."""
        self.hwm = hwm
        self.free = [b for b in range(hwm) if b not in used]   # ascending: a heap
        self.quarantine = []
        if self.map is not None:
            self._map_at_least(hwm * CHUNK_SIZE)
