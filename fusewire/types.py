"""Public value types of the Operations API.

These are the objects a filesystem author touches: what a handler receives
(:class:`RequestContext`, :class:`SetattrFields`, :class:`Lock`) and what it
returns (:class:`EntryAttributes`, :class:`FileInfo`, :class:`StatvfsData`).
Names follow pyfuse3 where pyfuse3 has the concept, so porting a pyfuse3
filesystem is mostly mechanical.

Nothing here knows the wire layout, and the only I/O is the lazy read of a
caller's supplementary groups from /proc (:attr:`RequestContext.groups`); the dispatcher
turns these into wire structs with the derived codecs of :mod:`fusewire.structs`.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "EntryAttributes",
    "FUSEError",
    "FileInfo",
    "DeferrableContext",
    "Lock",
    "Pending",
    "RequestContext",
    "caller_groups",
    "SetattrFields",
    "StatvfsData",
    "timeout_parts",
]


def timeout_parts(seconds: float) -> tuple[int, int]:
    """A cache timeout in seconds as the wire's (seconds, nanoseconds); <= 0 is (0, 0)."""
    if seconds <= 0:
        return 0, 0
    whole = int(seconds)
    return whole, int((seconds - whole) * 1_000_000_000)


class FUSEError(Exception):
    """The one exception a handler is expected to raise.

    ``FUSEError(errno.ENOENT)`` makes the kernel call fail with that errno.
    Any other exception escaping a handler is a bug in the filesystem: the
    caller gets EIO and the server logs the traceback and keeps serving.
    """

    __slots__ = ("errno",)

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = int(errno)

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {os.strerror(self.errno)}"

    def __reduce__(self) -> tuple[type[FUSEError], tuple[int]]:
        return (FUSEError, (self.errno,))


class EntryAttributes:
    """Attributes of a filesystem object, plus how long the kernel may cache them.

    Returned by ``lookup``, ``getattr``, ``setattr`` and the create-type
    handlers, and passed to ``readdir`` tokens.  Times are integer
    nanoseconds since the epoch (``st_atime_ns`` ...).  ``st_ino`` is the
    nodeid the kernel will use for this object from now on; ``generation``
    must change whenever an ``st_ino`` value is reused for a different object.

    ``entry_timeout`` and ``attr_timeout`` are seconds (floats); 0 means the
    kernel asks again on every access.

    Every field can be passed by keyword; they can also be passed by
    position, in the order of the signature (that order is part of the API).
    Hot handlers should: a call with 17 keyword arguments costs about 0.6 µs
    more than the same call with positional ones, a tenth of a GETATTR's
    whole time in the server.
    """

    __slots__ = (
        "attr_flags",
        "attr_timeout",
        "entry_timeout",
        "generation",
        "st_atime_ns",
        "st_birthtime_ns",
        "st_blksize",
        "st_blocks",
        "st_ctime_ns",
        "st_gid",
        "st_ino",
        "st_mode",
        "st_mtime_ns",
        "st_nlink",
        "st_rdev",
        "st_size",
        "st_uid",
    )

    def __init__(
        self,
        st_ino: int = 0,
        generation: int = 0,
        entry_timeout: float = 0.0,
        attr_timeout: float = 0.0,
        st_mode: int = 0,
        st_nlink: int = 1,
        st_uid: int = 0,
        st_gid: int = 0,
        st_rdev: int = 0,
        st_size: int = 0,
        st_blksize: int = 4096,
        st_blocks: int = 0,
        st_atime_ns: int = 0,
        st_mtime_ns: int = 0,
        st_ctime_ns: int = 0,
        st_birthtime_ns: int = 0,
        attr_flags: int = 0,
    ) -> None:
        self.st_ino = st_ino
        self.generation = generation
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.st_mode = st_mode
        self.st_nlink = st_nlink
        self.st_uid = st_uid
        self.st_gid = st_gid
        self.st_rdev = st_rdev
        self.st_size = st_size
        self.st_blksize = st_blksize
        self.st_blocks = st_blocks
        self.st_atime_ns = st_atime_ns
        self.st_mtime_ns = st_mtime_ns
        self.st_ctime_ns = st_ctime_ns
        self.st_birthtime_ns = st_birthtime_ns
        self.attr_flags = attr_flags

    @classmethod
    def from_stat(cls, st: os.stat_result, *, st_ino: int | None = None,
                  generation: int = 0, entry_timeout: float = 0.0,
                  attr_timeout: float = 0.0) -> EntryAttributes:
        """Build attributes from an ``os.stat_result`` (used by passthrough filesystems)."""
        # positional: see the class docstring (st_birthtime_ns is Linux-absent)
        return cls(st.st_ino if st_ino is None else st_ino, generation, entry_timeout,
                   attr_timeout, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                   st.st_size, st.st_blksize, st.st_blocks, st.st_atime_ns, st.st_mtime_ns,
                   st.st_ctime_ns, getattr(st, "st_birthtime_ns", 0) or 0)

    def copy(self) -> EntryAttributes:
        """Return an independent copy."""
        new = EntryAttributes.__new__(EntryAttributes)
        for name in EntryAttributes.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        return new

    def __repr__(self) -> str:
        return (f"EntryAttributes(st_ino={self.st_ino}, st_mode={self.st_mode:#o}, "
                f"st_size={self.st_size}, st_nlink={self.st_nlink})")


@dataclass(slots=True)
class SetattrFields:
    """Which attributes a SETATTR request changes.

    The new values are in the :class:`EntryAttributes` passed beside it.
    ``update_atime``/``update_mtime`` with the ``*_now`` flag set mean "the
    current time"; the library has already put the current time into the
    attributes, so a filesystem only needs to copy the values.
    """

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False
    atime_now: bool = False
    mtime_now: bool = False
    kill_suidgid: bool = False


@dataclass(slots=True)
class FileInfo:
    """What ``open`` and ``create`` return: the handle and how the kernel should cache.

    ``fh`` is any 64-bit integer the filesystem chooses; the kernel passes it
    back in read, write, flush, release... ``backing_id`` (with
    ``passthrough=True``) hands reads and writes to a kernel backing file
    registered with :meth:`fusewire.server.Server.backing_open`.
    """

    fh: int = 0
    direct_io: bool = False
    keep_cache: bool = False
    nonseekable: bool = False
    cache_dir: bool = False
    stream: bool = False
    noflush: bool = False
    parallel_direct_writes: bool = False
    passthrough: bool = False
    backing_id: int = 0


@dataclass(slots=True)
class StatvfsData:
    """The answer to ``statfs``; field names as in ``os.statvfs_result``."""

    f_bsize: int = 4096
    f_frsize: int = 4096
    f_blocks: int = 0
    f_bfree: int = 0
    f_bavail: int = 0
    f_files: int = 0
    f_ffree: int = 0
    f_favail: int = 0
    f_namemax: int = 255


@dataclass(slots=True, frozen=True)
class Lock:
    """A POSIX record lock range as the kernel sends it.

    ``type`` is ``fcntl.F_RDLCK``, ``F_WRLCK`` or ``F_UNLCK``; ``end`` is
    inclusive and ``2**63 - 1`` means "to end of file"; ``pid`` is the
    owning process (for GETLK replies, the conflicting holder).
    """

    start: int
    end: int
    type: int
    pid: int = 0


def caller_groups(pid: int, uid: int, gid: int) -> tuple[int, ...]:
    """The supplementary groups of thread ``pid``, read from ``/proc/<pid>/status``.

    A FUSE request's ``pid`` is the calling *thread's* id (the kernel sends
    ``task_pid(current)``), and ``/proc/<tid>/status`` answers for any thread,
    listed or not.  The line is trusted only if that thread's fsuid and fsgid
    still equal ``uid``/``gid`` (the request's): a thread that exited, or a
    pid reused by another process, gives ``()``, which grants nothing.
    Without a pid (0: background requests) the answer is ``()`` too.
    """
    if pid <= 0:
        return ()
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return ()
    fsuid = fsgid = -1
    groups: tuple[int, ...] | None = None
    for line in text.split(b"\n"):
        key, _, value = line.partition(b":")
        try:
            if key == b"Uid":
                fsuid = int(value.split()[3])
            elif key == b"Gid":
                fsgid = int(value.split()[3])
            elif key == b"Groups":
                groups = tuple(int(g) for g in value.split())
        except (IndexError, ValueError):
            return ()
    if groups is None or fsuid != uid or fsgid != gid:
        return ()
    return groups


class RequestContext:
    """Who is asking: the credentials and process of the request.

    ``uid``/``gid`` are the caller's fsuid/fsgid, ``pid`` the calling
    thread's id (0 for background requests such as RELEASE), ``umask`` the
    caller's umask on create-type requests (0 elsewhere).  ``unique`` is the
    request's id on the wire; ``resent`` is true when the kernel re-sent it
    after a server restart.

    ``groups`` are the caller's supplementary groups.  The kernel does not
    send them (a FUSE_EXT_GROUPS extension carries at most the one group a
    create in a set-group-ID directory needs), so unless given to the
    constructor they are read from ``/proc/<pid>/status`` the first time a
    handler asks (:func:`caller_groups`) and merged with the kernel's;
    filesystems that never ask pay nothing.
    """

    __slots__ = ("_groups", "_interrupted", "gid", "kernel_groups", "pid", "resent",
                 "uid", "umask", "unique")
    #: a class attribute, not a slot (no cost per request): see DeferrableContext
    _deferrable: ClassVar[bool] = False

    def __init__(self, uid: int = 0, gid: int = 0, pid: int = 0, umask: int = 0,
                 unique: int = 0, groups: tuple[int, ...] | None = None,
                 resent: bool = False, _interrupted: Callable[[int], bool] | None = None,
                 kernel_groups: tuple[int, ...] = ()) -> None:
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask
        self.unique = unique
        self._groups = groups
        self.resent = resent
        self._interrupted = _interrupted
        #: groups the kernel sent with the request (FUSE_EXT_GROUPS)
        self.kernel_groups = kernel_groups

    @property
    def groups(self) -> tuple[int, ...]:
        """The caller's supplementary groups (read lazily; see the class docstring)."""
        groups = self._groups
        if groups is None:
            groups = caller_groups(self.pid, self.uid, self.gid)
            if self.kernel_groups:
                groups += tuple(g for g in self.kernel_groups if g not in groups)
            self._groups = groups
        return groups

    @groups.setter
    def groups(self, value: tuple[int, ...]) -> None:
        self._groups = tuple(value)

    def __repr__(self) -> str:
        return (f"RequestContext(uid={self.uid}, gid={self.gid}, pid={self.pid}, "
                f"umask={self.umask:#o}, unique={self.unique}, resent={self.resent})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestContext):
            return NotImplemented
        return ((self.uid, self.gid, self.pid, self.umask, self.unique, self.resent,
                 self._groups, self.kernel_groups)
                == (other.uid, other.gid, other.pid, other.umask, other.unique, other.resent,
                    other._groups, other.kernel_groups))

    __hash__ = None  # type: ignore[assignment]

    @property
    def interrupted(self) -> bool:
        """True once the kernel has sent an INTERRUPT for this request.

        A handler that blocks for long should poll this and raise
        ``FUSEError(errno.EINTR)`` when it turns true.
        """
        return self._interrupted is not None and self._interrupted(self.unique)

    @property
    def can_defer(self) -> bool:
        """True when the server serving this request accepts a deferred reply.

        Requests served by :class:`fusewire.server.Server` can always defer;
        a context built by hand (unit tests) or by a replaying dispatcher
        cannot, and code that would wait should then block instead.
        """
        return self._deferrable

    def defer(self, on_interrupt: Callable[[Pending], None] | None = None) -> Pending:
        """A marker for answering this request later: ``raise`` it from the handler.

        The request stays in flight; whoever finishes the work (another
        request's handler, another thread, a timer) calls
        :meth:`Pending.reply` or :meth:`Pending.fail` once, and the server
        writes that reply from its serving thread.  ``on_interrupt`` is
        called (on a serving thread) when the kernel interrupts the request;
        it should abandon the work and call ``pending.fail(errno.EINTR)``.
        Only valid when :attr:`can_defer` is true.
        """
        return Pending(self.unique, on_interrupt)


class DeferrableContext(RequestContext):
    """The :class:`RequestContext` of a request served by a loop that takes
    deferred replies (:attr:`RequestContext.can_defer` is true)."""

    __slots__ = ()
    _deferrable = True


_PENDING_LOCK = threading.Lock()


class Pending(Exception):  # noqa: N818 (a marker raised to answer later, not an error)
    """A reply a handler gives later (a deferred reply).  Get one from
    :meth:`RequestContext.defer` and ``raise`` it from the handler (a sync
    one usually; raised from an ``async def`` handler, its task awaits it).

    The value later passed to :meth:`reply` is what the handler would have
    returned (``None`` for handlers that return nothing, bytes for ``read``,
    an :class:`EntryAttributes` for ``getattr``...); the server encodes it
    exactly as an immediate return.  :meth:`fail` answers an errno instead.
    Both may be called from any thread, at most one of them takes effect
    (later calls return False), and the reply is written once.
    """

    def __init__(self, unique: int = 0,
                 on_interrupt: Callable[[Pending], None] | None = None) -> None:
        super().__init__(unique)
        self.unique = unique
        self.on_interrupt = on_interrupt
        #: (True, value) or (False, errno), or a server-internal tuple; None while waiting
        self.outcome: tuple[Any, ...] | None = None
        self._sink: Callable[[Pending], None] | None = None
        #: server bookkeeping (the request, the function encoding its reply...)
        self.slot: Any = None

    @property
    def done(self) -> bool:
        """Whether a reply or an error was given."""
        return self.outcome is not None

    def reply(self, value: Any = None) -> bool:
        """Answer with ``value`` (what the handler would have returned)."""
        return self.finish((True, value))

    def fail(self, err: int) -> bool:
        """Answer with errno ``err`` (EINTR after an interrupt, EAGAIN...)."""
        return self.finish((False, int(err)))

    def finish(self, outcome: tuple[Any, ...]) -> bool:
        """Record ``outcome`` once and hand it to the server; False if already done."""
        with _PENDING_LOCK:
            if self.outcome is not None:
                return False
            self.outcome = outcome
            sink = self._sink
        if sink is not None:
            sink(self)
        return True

    def bind(self, sink: Callable[[Pending], None]) -> None:
        """Server side: deliver the outcome to ``sink`` (now, if it is already known)."""
        with _PENDING_LOCK:
            self._sink = sink
            ready = self.outcome is not None
        if ready:
            sink(self)

    def interrupt(self) -> None:
        """Server side: the kernel interrupted the request; run ``on_interrupt``."""
        cb = self.on_interrupt
        if cb is not None and self.outcome is None:
            cb(self)
