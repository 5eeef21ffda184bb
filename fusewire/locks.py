"""A lock table for filesystems that serve locks themselves: POSIX record locks and flock.

A filesystem whose ``setlk``/``getlk``/``flock`` handlers are implemented
(so the kernel sends the locks to the server: ``FUSE_POSIX_LOCKS``,
``FUSE_FLOCK_LOCKS``) keeps one :class:`LockTable` and calls it with the
inode of the handle::

    def setlk(self, fh, owner, lock, sleep, ctx):
        self.locks.setlk(self.ino_of(fh), owner, lock, sleep, ctx, fh=fh)

    def flush(self, fh, lock_owner):          # every close(2)
        self.locks.unlock_owner(self.ino_of(fh), lock_owner)

    def release(self, fh):                    # the last close of an open file
        self.locks.release(self.ino_of(fh), fh)

Semantics (as Linux gives them for local files):

- POSIX record locks belong to a lock owner (the kernel's id of the locking
  process's file table); an owner's ranges on one inode never overlap:
  locking part of a range splits it, same-type neighbours merge, and a
  conflicting type replaces the overlap.  F_GETLK reports the first
  conflicting range of another owner with its holder's pid.
- Every lock an owner holds on a file goes when it closes *any* descriptor
  of that file: the kernel sends FLUSH with that owner on each close and the
  filesystem calls :meth:`LockTable.unlock_owner` from ``flush``.
- flock locks belong to the open file (the kernel's owner for flock is the
  ``struct file``); converting is not atomic (the old lock is dropped, then
  the new one is waited for); the last close releases it.
- A blocking request (F_SETLKW, LOCK_EX without LOCK_NB) that conflicts
  becomes a waiter: with a server that takes deferred replies
  (``ctx.can_defer``) the handler raises a :class:`~fusewire.types.Pending`
  and the serving thread goes on; the waiter is granted, in arrival order,
  when an unlock, close or conversion lets it, and an INTERRUPT (a signal
  to the waiting process) removes it with EINTR.  Without deferred replies
  (a context built by hand) the calling thread blocks instead, polling
  ``ctx.interrupted`` and giving up with EINTR after ``timeout``.
- F_SETLKW that would wait for an owner that (transitively) waits for the
  requester fails with EDEADLK instead.

The table has its own lock; it never calls back into the filesystem, so a
filesystem may call it with or without holding its own lock (but must not
hold its own lock across a blocking call without deferred replies).
"""

from __future__ import annotations

import errno
import fcntl
import threading
import time
from collections.abc import Iterable
from typing import Any

from fusewire.types import FUSEError, Lock, Pending, RequestContext

__all__ = ["OFFSET_MAX", "LockTable", "PosixLock"]

#: the kernel's "to end of file" (an inclusive end)
OFFSET_MAX = (1 << 63) - 1
_POLL = 0.05


class PosixLock:
    """A byte range ``start..end`` (inclusive) locked by ``owner`` (``pid``: its process)."""

    __slots__ = ("end", "fh", "owner", "pid", "start", "type")

    def __init__(self, owner: int, start: int, end: int, type_: int, pid: int,
                 fh: int) -> None:
        self.owner = owner
        self.start = start
        self.end = end
        self.type = type_
        self.pid = pid
        self.fh = fh

    def __repr__(self) -> str:
        return (f"PosixLock(owner={self.owner:#x}, {self.start}..{self.end}, "
                f"type={self.type}, pid={self.pid})")


class _Waiter:
    __slots__ = ("end", "fh", "flock", "ino", "owner", "pending", "pid", "start", "type")

    def __init__(self, ino: int, owner: int, flock: bool, start: int, end: int, type_: int,
                 pid: int, fh: int, pending: Pending) -> None:
        self.ino = ino
        self.owner = owner
        self.flock = flock
        self.start = start
        self.end = end
        self.type = type_
        self.pid = pid
        self.fh = fh
        self.pending = pending


def _check(lock: Lock) -> None:
    if lock.start < 0 or lock.end < lock.start:
        raise FUSEError(errno.EINVAL)
    if lock.type not in (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK):
        raise FUSEError(errno.EINVAL)


class LockTable:
    """POSIX record locks and flock locks of one filesystem, by inode, with waiters."""

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        #: inode -> that inode's POSIX ranges, sorted by start
        self.posix: dict[int, list[PosixLock]] = {}
        #: inode -> flock owner -> (LOCK_SH or LOCK_EX, fh)
        self.flocks: dict[int, dict[int, tuple[int, int]]] = {}
        self._waiters: dict[int, list[_Waiter]] = {}
        #: blocked POSIX owner -> the owner it waits for (deadlock detection)
        self._waits_for: dict[int, int] = {}

    # -- POSIX record locks ------------------------------------------------------

    def getlk(self, ino: int, owner: int, lock: Lock) -> Lock:
        """The first lock of another owner conflicting with ``lock``, or ``lock``
        with type F_UNLCK."""
        _check(lock)
        with self._mutex:
            if lock.type != fcntl.F_UNLCK:
                c = self._conflict(ino, owner, lock.start, lock.end, lock.type)
                if c is not None:
                    return Lock(c.start, c.end, c.type, c.pid)
        return Lock(lock.start, lock.end, fcntl.F_UNLCK, 0)

    def setlk(self, ino: int, owner: int, lock: Lock, sleep: bool, ctx: RequestContext, *,
              fh: int = 0, timeout: float | None = None) -> None:
        """Set, change or release ``owner``'s lock on ``lock``'s range.

        A conflict is EAGAIN unless ``sleep``; then EDEADLK if waiting would
        close a cycle, else a wait (a raised Pending when ``ctx.can_defer``,
        else this thread blocks, up to ``timeout`` seconds, then EINTR).
        """
        _check(lock)
        with self._mutex:
            if lock.type == fcntl.F_UNLCK:
                self._apply(ino, owner, fh, lock.pid, lock.start, lock.end, lock.type)
                self._wake(ino)
                return
            c = self._conflict(ino, owner, lock.start, lock.end, lock.type)
            if c is None:
                self._apply(ino, owner, fh, lock.pid, lock.start, lock.end, lock.type)
                self._wake(ino)     # a downgrade may let readers in
                return
            if not sleep:
                raise FUSEError(errno.EAGAIN)
            if self._would_deadlock(owner, c.owner):
                raise FUSEError(errno.EDEADLK)
            p = self._enqueue(ctx, _Waiter(ino, owner, False, lock.start, lock.end, lock.type,
                                           lock.pid, fh, Pending(ctx.unique)))
            self._waits_for[owner] = c.owner
        self._wait(p, ctx, timeout)

    def unlock_owner(self, ino: int, owner: int) -> bool:
        """Drop every POSIX lock ``owner`` holds on ``ino`` (FLUSH: a close by that owner);
        whether there was any."""
        with self._mutex:
            locks = self.posix.get(ino)
            if not locks:
                return False
            kept = [lk for lk in locks if lk.owner != owner]
            if len(kept) == len(locks):
                return False
            self._set_posix(ino, kept)
            self._wake(ino)
            return True

    def _conflict(self, ino: int, owner: int, start: int, end: int,
                  type_: int) -> PosixLock | None:
        for lk in self.posix.get(ino, ()):
            if lk.owner != owner and lk.start <= end and start <= lk.end \
                    and (type_ == fcntl.F_WRLCK or lk.type == fcntl.F_WRLCK):
                return lk
        return None

    def _apply(self, ino: int, owner: int, fh: int, pid: int, start: int, end: int,
               type_: int) -> None:
        kept: list[PosixLock] = []
        for lk in self.posix.get(ino, ()):
            if lk.owner != owner or lk.end < start - 1 or lk.start > end + 1:
                kept.append(lk)
            elif lk.type == type_:
                start = min(start, lk.start)     # overlapping or adjacent: merge
                end = max(end, lk.end)
            elif lk.end < start or lk.start > end:
                kept.append(lk)                  # merely adjacent, other type
            else:
                if lk.start < start:
                    kept.append(PosixLock(owner, lk.start, start - 1, lk.type, lk.pid, lk.fh))
                if lk.end > end:
                    kept.append(PosixLock(owner, end + 1, lk.end, lk.type, lk.pid, lk.fh))
        if type_ != fcntl.F_UNLCK:
            kept.append(PosixLock(owner, start, end, type_, pid, fh))
        kept.sort(key=lambda lk: lk.start)
        self._set_posix(ino, kept)

    def _set_posix(self, ino: int, locks: list[PosixLock]) -> None:
        if locks:
            self.posix[ino] = locks
        else:
            self.posix.pop(ino, None)

    def _would_deadlock(self, owner: int, holder: int) -> bool:
        seen: set[int] = set()
        while holder not in seen:
            if holder == owner:
                return True
            seen.add(holder)
            nxt = self._waits_for.get(holder)
            if nxt is None:
                return False
            holder = nxt
        return False

    # -- flock ------------------------------------------------------------------------

    def flock(self, ino: int, owner: int, op: int, sleep: bool, ctx: RequestContext, *,
              fh: int = 0, timeout: float | None = None) -> None:
        """flock(2) for the open file ``owner``: LOCK_SH, LOCK_EX or LOCK_UN.

        A conflict is EWOULDBLOCK unless ``sleep``; then a wait as in :meth:`setlk`.
        """
        op &= ~fcntl.LOCK_NB
        if op not in (fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_UN):
            raise FUSEError(errno.EINVAL)
        with self._mutex:
            locks = self.flocks.get(ino, {})
            held = locks.get(owner)
            if held is not None and held[0] == op:
                return
            if held is not None:
                # like Linux, a conversion is not atomic: drop, then acquire
                del locks[owner]
                if not locks:
                    self.flocks.pop(ino, None)
                self._wake(ino)
            if op == fcntl.LOCK_UN:
                return
            if not self._flock_conflict(ino, owner, op):
                self.flocks.setdefault(ino, {})[owner] = (op, fh)
                return
            if not sleep:
                raise FUSEError(errno.EWOULDBLOCK)
            p = self._enqueue(ctx, _Waiter(ino, owner, True, 0, 0, op, 0, fh,
                                           Pending(ctx.unique)))
        self._wait(p, ctx, timeout)

    def _flock_conflict(self, ino: int, owner: int, op: int) -> bool:
        return any(o != owner and (op == fcntl.LOCK_EX or t == fcntl.LOCK_EX)
                   for o, (t, _) in self.flocks.get(ino, {}).items())

    # -- closing and forgetting --------------------------------------------------------

    def release(self, ino: int, fh: int) -> None:
        """The open file ``fh`` is gone (RELEASE): drop its flock, and the POSIX
        locks of every owner that locked through it (all its descriptors are closed)."""
        with self._mutex:
            locks = self.posix.get(ino)
            if locks:
                owners = {lk.owner for lk in locks if lk.fh == fh}
                if owners:
                    self._set_posix(ino, [lk for lk in locks if lk.owner not in owners])
            fl = self.flocks.get(ino)
            if fl:
                for o in [o for o, (_, f) in fl.items() if f == fh]:
                    del fl[o]
                if not fl:
                    del self.flocks[ino]
            self._wake(ino)

    def forget(self, ino: int) -> None:
        """``ino`` no longer exists: drop its locks; its waiters fail with EINTR."""
        with self._mutex:
            self.posix.pop(ino, None)
            self.flocks.pop(ino, None)
            for w in self._waiters.pop(ino, []):
                self._waits_for.pop(w.owner, None)
                w.pending.fail(errno.EINTR)

    def waiting(self, ino: int | None = None) -> int:
        """How many requests wait (on ``ino``, or on any inode)."""
        with self._mutex:
            if ino is not None:
                return len(self._waiters.get(ino, ()))
            return sum(len(w) for w in self._waiters.values())

    # -- waiting ------------------------------------------------------------------------

    def _enqueue(self, ctx: RequestContext, w: _Waiter) -> Pending:
        p = ctx.defer(self._interrupted) if ctx.can_defer else w.pending
        w.pending = p
        self._waiters.setdefault(w.ino, []).append(w)
        return p

    def _wait(self, p: Pending, ctx: RequestContext, timeout: float | None) -> None:
        """Raise ``p`` (deferred reply) or block this thread until it is finished."""
        if ctx.can_defer:
            raise p
        done = threading.Event()
        p.bind(lambda _p: done.set())
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(_POLL):
            expired = deadline is not None and time.monotonic() >= deadline
            if ctx.interrupted or expired:
                self._interrupted(p)
        outcome = p.outcome
        assert outcome is not None
        if not outcome[0]:
            raise FUSEError(outcome[1])

    def _interrupted(self, p: Pending) -> None:
        """The waiter's request was interrupted: leave the queue, answer EINTR."""
        with self._mutex:
            for ino, ws in self._waiters.items():
                for w in ws:
                    if w.pending is p:
                        ws.remove(w)
                        if not ws:
                            del self._waiters[ino]
                        if not w.flock:
                            self._waits_for.pop(w.owner, None)
                        p.fail(errno.EINTR)
                        return

    def _wake(self, ino: int) -> None:
        """Grant, in arrival order, every waiter on ``ino`` that no longer conflicts."""
        ws = self._waiters.get(ino)
        if not ws:
            return
        still: list[_Waiter] = []
        for w in ws:
            if w.pending.done:
                continue
            if w.flock:
                if self._flock_conflict(ino, w.owner, w.type):
                    still.append(w)
                    continue
                self.flocks.setdefault(ino, {})[w.owner] = (w.type, w.fh)
            else:
                c = self._conflict(ino, w.owner, w.start, w.end, w.type)
                if c is not None:
                    self._waits_for[w.owner] = c.owner
                    still.append(w)
                    continue
                self._waits_for.pop(w.owner, None)
                self._apply(ino, w.owner, w.fh, w.pid, w.start, w.end, w.type)
            w.pending.reply(None)
        if still:
            self._waiters[ino] = still
        else:
            del self._waiters[ino]

    # -- state for hand-over ----------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The held locks as plain data (waiters are requests in flight: not included)."""
        with self._mutex:
            return {
                "plocks": [(ino, [(lk.owner, lk.start, lk.end, lk.type, lk.pid, lk.fh)
                                  for lk in locks]) for ino, locks in self.posix.items()],
                "flocks": [(ino, [(o, t, f) for o, (t, f) in fl.items()])
                           for ino, fl in self.flocks.items()],
            }

    def load(self, plocks: Iterable[Any], flocks: Iterable[Any]) -> None:
        """Replace the held locks with :meth:`export`'s lists (waiters fail with EINTR)."""
        with self._mutex:
            for ws in self._waiters.values():
                for w in ws:
                    w.pending.fail(errno.EINTR)
            self._waiters.clear()
            self._waits_for.clear()
            self.posix = {ino: [PosixLock(*t) for t in locks] for ino, locks in plocks}
            self.flocks = {ino: {o: (t, f) for o, t, f in fl} for ino, fl in flocks}
