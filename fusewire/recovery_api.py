"""The recovery contract: what a filesystem implements to survive its server.

``fusewire mount --recoverable`` (a keeper holds the ``/dev/fuse`` file and a
journal; see docs/recovery.md) gives every filesystem graceful upgrade and
crash restarts.  How much of the filesystem's *state* survives depends on
what the class declares, by inheriting one of the mixins below:

``ReplayRecovery`` -> mode ``replay``
    State lives in the server process (memfs).  The library journals a
    snapshot (:meth:`~ReplayRecovery.dump_state`) and every successful
    non-idempotent request; a successor loads the snapshot and re-executes
    the requests in order.  Re-execution must be deterministic: handlers
    take the time from :func:`now_ns` (the library pins it to the time the
    request first ran), never from ``time``; inode numbers and fh values come
    from counters in the snapshot.  The kernel's lookup counts are given back
    through :meth:`~ReplayRecovery.replay_finished`.

``HandleRecovery`` -> mode ``handles``
    State lives outside the process (passthrough: a directory tree).  Every
    node has a stable handle (:meth:`Operations.handle_of`); the journal keeps
    the handle of each node the kernel holds and the open flags of each open
    file, and a successor revives them (:meth:`~HandleRecovery.import_nodes`,
    :meth:`~HandleRecovery.reopen_handle`).  Mutations of the outside state
    are made exactly-once with intents probed by
    :meth:`~HandleRecovery.entry_identity`.

Neither -> mode ``upgrade-only``
    A successor starts from a fresh filesystem object.  The library then
    keeps the kernel from reaching a new object through an old nodeid or fh:
    nodeids and fh values handed out before the takeover fail (ESTALE,
    EBADF), new ones never collide with them, and cached names are dropped
    (INC_EPOCH).

Recovery only ever calls the methods declared here; it touches no private
name of a filesystem.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

from fusewire.operations import Operations

__all__ = ["HandleRecovery", "RecoveryMode", "ReplayRecovery", "now_ns", "recovery_mode"]


class RecoveryMode:
    """The recovery modes, as ``fusewire status`` spells them."""

    REPLAY = "replay"
    HANDLES = "handles"
    UPGRADE_ONLY = "upgrade-only"


_pinned: int | None = None
#: a recoverable server runs: the first now_ns() of a request pins the time for the rest
#: of it (the server clears the pin before each request and journals the pinned time)
_sticky = False


def now_ns() -> int:
    """The time for a handler, in nanoseconds since the epoch.

    ``time.time_ns()``, except while a recoverable server runs a request:
    then one time for the whole request, recorded with it, the same when it
    runs live and when a successor re-executes it.  Replay-mode filesystems
    must take every timestamp from here.
    """
    global _pinned
    t = _pinned
    if t is None:
        t = time.time_ns()
        if _sticky:
            _pinned = t
    return t


def pin_clock(t: int | None) -> None:
    """Library side: make :func:`now_ns` return ``t`` (None: unpinned again)."""
    global _pinned
    _pinned = t


def pinned_time() -> int | None:
    """Library side: the time the current request was pinned at, if any."""
    return _pinned


def sticky_clock(on: bool) -> None:
    """Library side: pin the time at the first :func:`now_ns` of each request."""
    global _sticky
    _sticky = on


class ReplayRecovery:
    """Mixin declaring the ``replay`` mode (state rebuilt from snapshot + request log)."""

    def dump_state(self) -> bytes:
        """Serialise the whole filesystem state (tree, data, counters, open handles, locks)."""
        raise NotImplementedError

    def load_state(self, data: bytes) -> None:
        """Replace the state with a :meth:`dump_state` blob (lookup counts as dumped)."""
        raise NotImplementedError

    def replay_started(self) -> None:
        """Re-execution begins: keep objects that only lookups hold until
        :meth:`replay_finished` (the replayed log has no FORGETs)."""

    def replay_finished(self, lookups: Mapping[int, int],
                        changed: Collection[int] | None = None) -> None:
        """Re-execution is over: ``lookups`` is what the kernel holds (inode -> count).

        Set each inode's lookup count from it (absent: 0) and free what
        nothing references any more.  With ``changed``, only those inodes'
        counts can differ from a previous call (a warm spare made one for
        the snapshot); the others are already right.
        """


class HandleRecovery:
    """Mixin declaring the ``handles`` mode (state outside the process, stable handles).

    The filesystem also implements :meth:`Operations.handle_of` and
    :meth:`Operations.inode_for_handle`; its nodeids and fh values must
    mean the same object in every server process (e.g. source inode numbers
    for nodeids, descriptors placed at fixed numbers for fh values).
    """

    def prepare_recovery(self) -> None:
        """Called once in every server of a recoverable mount, before it serves."""

    def import_nodes(self, nodes: Mapping[int, tuple[bytes, int]]) -> list[int]:
        """Revive nodes the kernel holds: ``inode -> (handle, lookup count)``.

        Returns the inodes that could not be revived (they answer ESTALE).
        """
        return [ino for ino in nodes]

    def reopen_handle(self, fh: int, inode: int, flags: int) -> None:
        """Make ``fh`` (open on ``inode`` with open(2) ``flags``) usable again, or raise."""
        raise NotImplementedError

    def import_backing(self, handles: Mapping[int, tuple[int, int]]) -> None:
        """Kernel passthrough: ``fh -> (inode, backing id)`` of the reopened handles whose
        open the previous server backed.  Reuse each id for new opens of that inode
        (the kernel refuses a different backing file for an inode with open files) and
        close it when its last handle is released."""

    def entry_identity(self, parent_inode: int, name: bytes) -> tuple[int, int] | None:
        """Identity (e.g. ``(st_dev, st_ino)``) of ``name`` in ``parent_inode``, or None if
        absent; counts no lookup.  Lets a re-sent mutation tell whether it already ran."""
        return None


def recovery_mode(ops: Operations) -> tuple[str, str]:
    """``(mode, why)`` for a filesystem object: which recovery it gets and the reason."""
    name = type(ops).__name__
    if isinstance(ops, ReplayRecovery):
        return RecoveryMode.REPLAY, f"{name} declares fusewire.ReplayRecovery"
    if isinstance(ops, HandleRecovery):
        return RecoveryMode.HANDLES, f"{name} declares fusewire.HandleRecovery"
    hint = ""
    if callable(getattr(ops, "dump_state", None)):
        hint = " (it has dump_state but does not inherit fusewire.ReplayRecovery)"
    elif type(ops).handle_of is not Operations.handle_of:
        hint = " (it has handle_of but does not inherit fusewire.HandleRecovery)"
    return RecoveryMode.UPGRADE_ONLY, (
        f"{name} declares no recovery contract{hint}: graceful upgrade works, state does "
        "not survive a crash, and handles from before a takeover fail with ESTALE/EBADF")
