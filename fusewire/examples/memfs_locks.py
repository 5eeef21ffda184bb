"""MemFS's POSIX record locks and flock, kept in a :class:`fusewire.locks.LockTable`.

One job: the lock operations (``getlk``, ``setlk``, ``flock``, and ``flush``
dropping the closing owner's locks).  :class:`MemFSLocks` is a mixin of
:class:`fusewire.examples.memfs.MemFS`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import TYPE_CHECKING

from fusewire.examples.memfs_nodes import _err, _Handle
from fusewire.locks import LockTable, PosixLock
from fusewire.recovery_api import nothing_changed

if TYPE_CHECKING:
    from fusewire.types import Lock, RequestContext

__all__ = ["MemFSLocks"]


class MemFSLocks:
    """Lock methods of MemFS (a mixin; MemFS sets the attributes)."""

    _lock: threading.RLock
    _handles: dict[int, _Handle]
    locks: LockTable
    lock_wait_timeout: float | None

    if TYPE_CHECKING:
        def _handle(self, fh: int) -> _Handle: ...


    @property
    def _plocks(self) -> dict[int, list[PosixLock]]:
        """POSIX locks by inode (the lock table's)."""
        return self.locks.posix

    @property
    def _flocks(self) -> dict[int, dict[int, tuple[int, int]]]:
        """flock locks by inode: owner -> (op, fh) (the lock table's)."""
        return self.locks.flocks

    def getlk(self, fh: int, owner: int, lock: Lock, ctx: RequestContext) -> Lock:
        """Return the first conflicting lock of another owner, or an F_UNLCK lock."""
        with self._lock:
            ino = self._handle(fh).ino
        return self.locks.getlk(ino, owner, lock)

    def setlk(self, fh: int, owner: int, lock: Lock, sleep: bool,
              ctx: RequestContext) -> None:
        """Set, change or release a byte-range lock; EAGAIN on conflict unless ``sleep``,
        then a wait that does not hold the serving thread (see :mod:`fusewire.locks`)."""
        with self._lock:
            h = self._handle(fh)
            if lock.type != fcntl.F_UNLCK:
                acc = h.flags & os.O_ACCMODE
                need = os.O_WRONLY if lock.type == fcntl.F_WRLCK else os.O_RDONLY
                if acc != os.O_RDWR and acc != need:
                    raise _err(errno.EBADF)
        self.locks.setlk(h.ino, owner, lock, sleep, ctx, fh=fh, timeout=self.lock_wait_timeout)

    def flock(self, fh: int, owner: int, op: int, sleep: bool, ctx: RequestContext) -> None:
        """BSD flock: shared/exclusive whole-file locks per open file."""
        with self._lock:
            ino = self._handle(fh).ino
        self.locks.flock(ino, owner, op, sleep, ctx, fh=fh, timeout=self.lock_wait_timeout)

    def flush(self, fh: int, lock_owner: int = 0) -> None:
        """close(2) of a descriptor: the closing owner's POSIX locks on the file go."""
        with self._lock:
            h = self._handles.get(fh)
            if h is None or h.is_dir:
                return
            ino = h.ino
        if not self.locks.unlock_owner(ino, lock_owner):
            nothing_changed()           # no lock dropped: recovery need not journal it
