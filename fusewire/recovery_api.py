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
    through :meth:`~ReplayRecovery.replay_finished`.  Bulk state (memfs's file
    data) may live in descriptors that outlive the server instead
    (:meth:`~ReplayRecovery.recovery_fds`): the keeper holds them, each
    successor gets them (:meth:`~ReplayRecovery.attach_recovery_fds`), and the
    journal leaves out the request data kept there
    (:meth:`~ReplayRecovery.journal_omits_data`).

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
from collections.abc import Collection, Mapping, Sequence

from fusewire.operations import Operations

__all__ = ["HandleRecovery", "RecoveryMode", "ReplayRecovery", "nothing_changed", "now_ns",
           "recovery_mode"]


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


#: the current request changed nothing (nothing_changed); the server clears it per request
_unchanged = False


def nothing_changed() -> None:
    """A handler's hint: this request changed no state (e.g. a FLUSH that dropped no
    lock), so a recoverable server need not journal it.  Replay-mode filesystems
    may call it; a request whose re-execution would change something must not."""
    global _unchanged
    _unchanged = True


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

    # -- state kept outside the process (optional) --------------------------------------

    def recovery_fds(self) -> Sequence[int]:
        """Descriptors of state this filesystem keeps outside its process (e.g. a
        memfd of file data), to be held for the whole mount.

        Called once, in the first server of a recoverable mount, before it
        serves or journals anything; the keeper (or systemd's fd store) keeps
        a duplicate and hands them to every successor through
        :meth:`attach_recovery_fds`.  The default: none.  The filesystem still
        owns the returned descriptors (it must keep them open).
        """
        return ()

    def attach_recovery_fds(self, fds: Sequence[int]) -> None:
        """A successor (or a warm spare at takeover): the descriptors the first
        server returned from :meth:`recovery_fds`, in the same order, now owned
        by this filesystem.  Called before the log is replayed; a warm spare has
        already loaded the snapshot, a cold successor loads it after this call.
        Not called where there are none."""

    def journal_omits_data(self) -> Collection[int]:
        """Opcodes whose request *data* (the bytes after the fixed arguments, e.g. a
        WRITE's payload) the journal leaves out, because the filesystem keeps
        them in its :meth:`recovery_fds`.

        Such a request is journaled with its header and arguments only, and
        re-executed during a replay with zero bytes in place of its data: the
        handler must then redo its bookkeeping (sizes, allocation) exactly as
        the first time and must not store those bytes.  A request the dead
        server executed but never journaled is re-sent by the kernel
        (NOTIFY_RESEND) and executed normally: the filesystem must make that
        repetition harmless (the same bytes written at the same place).
        Asked after :meth:`recovery_fds`/:meth:`attach_recovery_fds`.
        """
        return ()

    def snapshot_taken(self) -> None:
        """The last :meth:`dump_state` blob is now the journal's base (a compaction
        was committed): nothing will replay an older log.  State kept only for
        such a replay (memfs: freed blocks, not reused before a snapshot) can go."""

    def snapshot_wanted(self) -> bool:
        """Whether the filesystem asks for a compaction soon (e.g. freed storage it
        cannot reuse before one).  Polled every few hundred journal records."""
        return False


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
