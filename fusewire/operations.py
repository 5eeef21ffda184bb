"""The Operations base class: subclass it to write a filesystem.

Method names and argument order follow pyfuse3 (``lookup(parent_inode, name,
ctx)``...).  Every method has a default that raises ``FUSEError(ENOSYS)``;
for the operations where the kernel caches "not implemented" (OPEN, FLUSH,
FSYNC, the xattr calls, ACCESS, CREATE, FALLOCATE, LSEEK, STATX, ...) that
default is answered without calling Python at all, and the kernel stops
asking.  Which INIT flags fusewire negotiates also follows from which methods
a subclass overrides (locks, flock, readdirplus, ...).

Inode numbers: the ``st_ino`` a filesystem returns from ``lookup`` or a
create-type call *is* the nodeid the kernel uses afterwards, so a filesystem
chooses them (1 is the root, ``fusewire.ROOT_INODE``).  The library counts
lookups per inode and calls ``forget`` with the exact count the kernel gives
back, so a filesystem may drop an object once it is unlinked and forgotten.

Names are ``bytes`` (the kernel does not promise any encoding).  Handlers
raise :class:`fusewire.FUSEError` to fail; any other exception becomes EIO
and a log line.

Waiting without stopping the mount: any handler may be ``async def`` (the
server then runs an asyncio loop and serves other requests while one
awaits; an INTERRUPT cancels the awaiting handler and the caller gets
EINTR), and a synchronous handler may answer later by raising
``ctx.defer()`` (a :class:`fusewire.Pending`) and finishing it from
anywhere with ``pending.reply(value)``.  See docs/design.md, "The end-state
serving model".
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

if TYPE_CHECKING:
    from fusewire.readdir import ReaddirToken

__all__ = ["Notifier", "Operations"]


class Notifier(Protocol):
    """What a filesystem can ask of the live session (set as ``Operations.notifier``).

    The server sets ``ops.notifier`` before the first request.  Each
    ``notify_*`` method writes one notification to the kernel and returns
    0 or a positive errno the kernel answered (ENOENT for an unknown inode...).

    The kernel acts on INVAL_ENTRY, DELETE, INVAL_INODE and STORE while the
    write is in progress and takes the directory or page locks to do so.  A
    handler must not send them for the object its own request is about (the
    kernel holds those locks until the reply): on a single-threaded server
    that deadlocks.  Send them from another thread, or after replying.
    """

    def backing_open(self, fd: int) -> int:
        """Register ``fd`` as a kernel passthrough backing file; return its backing id."""
        ...

    def backing_close(self, backing_id: int) -> None:
        """Drop a backing id returned by :meth:`backing_open`."""
        ...

    def notify_poll(self, kh: int) -> int:
        """Wake pollers waiting on poll handle ``kh``."""
        ...

    def notify_inval_inode(self, inode: int, off: int = 0, length: int = 0) -> int:
        """Drop cached attributes, and page cache from ``off`` (``off < 0``: attributes only)."""
        ...

    def notify_inval_entry(self, parent_inode: int, name: bytes, expire_only: bool = False) -> int:
        """Drop (or just expire) the cached dentry ``name`` in ``parent_inode``."""
        ...

    def notify_delete(self, parent_inode: int, inode: int, name: bytes) -> int:
        """Tell the kernel ``name`` (naming ``inode``) was deleted from ``parent_inode``."""
        ...

    def notify_store(self, inode: int, offset: int, data: bytes) -> int:
        """Put ``data`` into the kernel page cache of ``inode`` at ``offset``."""
        ...

    def notify_retrieve(self, inode: int, offset: int, size: int,
                        timeout: float = 5.0) -> bytes | None:
        """Return the up-to-date cached pages of ``inode`` from ``offset`` (at most
        ``size`` bytes, stopping at the first page not cached, capped at EOF), or
        None on timeout.  Must not be called from the thread serving requests."""
        ...

    def notify_prune(self, inodes: Sequence[int]) -> int:
        """Ask the kernel to forget the unused ones among ``inodes`` (7.45)."""
        ...

    def notify_inc_epoch(self) -> int:
        """Make every cached name, positive or negative, be looked up again (7.44)."""
        ...

    def notify_resend(self) -> int:
        """Have the kernel re-send every request read but not answered (7.40)."""
        ...


def _enosys() -> FUSEError:
    return FUSEError(errno.ENOSYS)


class Operations:
    """Base class for filesystems.  Override the methods you support.

    Attributes a subclass may set:

    ``supports_dot_lookup``
        The filesystem answers LOOKUP of "." and ".." (NFS export).
    ``enable_writeback_cache``
        Ask for the kernel writeback cache (WRITEBACK_CACHE).
    ``enable_acl``
        Let the kernel enforce POSIX ACLs from ``system.posix_acl_*`` xattrs.
    ``enable_passthrough``
        Ask for kernel passthrough (PASSTHROUGH, 7.40, root only): ``open``
        and ``create`` may then return a ``FileInfo`` with ``passthrough``
        and a ``backing_id`` from ``notifier.backing_open(fd)``, and the
        kernel does that file's reads and writes on the backing file itself.
        The server negotiates ``max_stack_depth`` 1 (unless the Config says
        otherwise) and never WRITEBACK_CACHE with it.
    ``applies_umask``
        The kernel sends create-type requests the mode unmasked and the
        caller's umask in ``ctx.umask`` (DONT_MASK); the filesystem applies
        it, or a parent directory's default ACL instead of it.
    ``checks_permissions``
        The filesystem enforces the caller's permissions itself (from
        ``ctx.uid``, ``ctx.gid`` and ``ctx.groups``, or by acting as the
        caller on a backing filesystem that does).  Only then may a mount use
        ``allow_other`` without ``default_permissions``; otherwise every
        local user would get whatever the server may do, and the mount is
        refused (see :func:`fusewire.server.mount.allow_other_problem`).
    """

    supports_dot_lookup: bool = False
    checks_permissions: bool = False
    enable_writeback_cache: bool = False
    enable_acl: bool = False
    enable_passthrough: bool = False
    applies_umask: bool = False
    #: Set by the server before the first request; None when not serving.
    notifier: Notifier | None = None

    # -- lifecycle ---------------------------------------------------------

    def init(self) -> None:
        """Called once the INIT exchange is done, before the first request.

        Not called again when a successor takes over a live connection.
        """

    def destroy(self) -> None:
        """Called when the server stops (unmount, signal, takeover hand-off)."""

    # -- names and attributes ---------------------------------------------

    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        """Look up ``name`` in directory ``parent_inode``.

        Sent on every path walk that misses the dentry cache.  Return the
        child's attributes (counts one lookup of ``st_ino``), raise
        ``FUSEError(ENOENT)``, or return attributes with ``st_ino = 0`` and an
        ``entry_timeout`` to cache the absence (no lookup counted).
        """
        raise _enosys()

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped ``nlookup`` references to each ``(inode, nlookup)``.

        Sent when inodes leave the kernel's cache (FORGET / BATCH_FORGET).
        There is no reply.  When an inode's count reaches zero and it has no
        links, the filesystem may free it.
        """

    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """Return the attributes of ``inode`` (stat, fstat, revalidation)."""
        raise _enosys()

    def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                fh: int | None, ctx: RequestContext) -> EntryAttributes:
        """Change the attributes named by ``fields`` to the values in ``attr``.

        Sent for chmod, chown, truncate/ftruncate (``fh`` set), utimes.
        Return the new attributes.
        """
        raise _enosys()

    def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        """Return the target of symlink ``inode``."""
        raise _enosys()

    def statx(self, inode: int, fh: int | None, flags: int, mask: int,
              ctx: RequestContext) -> EntryAttributes:
        """Extended attributes for statx(2), including ``st_birthtime_ns``.

        Sent when statx asks for fields outside the attribute cache.  The
        default raises ENOSYS and the kernel uses GETATTR from then on.
        """
        raise _enosys()

    # -- creating and removing names --------------------------------------

    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: RequestContext) -> EntryAttributes:
        """Create a regular file, fifo, socket or device node.  Counts one lookup."""
        raise _enosys()

    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: RequestContext) -> EntryAttributes:
        """Create a directory (``mode`` has no S_IFDIR bits).  Counts one lookup."""
        raise _enosys()

    def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove a non-directory name.  The inode lives on while looked up or open."""
        raise _enosys()

    def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove an empty directory."""
        raise _enosys()

    def symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: RequestContext) -> EntryAttributes:
        """Create symlink ``name`` pointing to ``target``.  Counts one lookup."""
        raise _enosys()

    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, flags: int, ctx: RequestContext) -> None:
        """Rename; ``flags``: RENAME_NOREPLACE (1), RENAME_EXCHANGE (2), RENAME_WHITEOUT (4)."""
        raise _enosys()

    def link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: RequestContext) -> EntryAttributes:
        """Create a hard link to ``inode``.  Counts one lookup.

        ENOSYS here is remembered by the kernel (later links fail EPERM).
        """
        raise _enosys()

    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """Create and open a file (open with O_CREAT).  Counts one lookup.

        ENOSYS makes the kernel fall back to MKNOD then OPEN.
        """
        raise _enosys()

    def tmpfile(self, parent_inode: int, mode: int, flags: int,
                ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """Create an unnamed open file in ``parent_inode`` (O_TMPFILE).  Counts one lookup."""
        raise _enosys()

    # -- files ------------------------------------------------------------

    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        """Open ``inode``; ``flags`` are open(2) flags (O_TRUNC with ATOMIC_O_TRUNC).

        ENOSYS (the default) means opens need no server round trip at all.
        """
        raise _enosys()

    def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        """Return up to ``size`` bytes at ``off``; fewer means end of file.

        Any bytes-like object will do: the reply is written before the next
        request is read and nothing keeps a reference, so a filesystem may
        hand out a ``bytearray`` or ``memoryview`` of its own buffer and save
        a copy."""
        raise _enosys()

    def write(self, fh: int, off: int, buf: memoryview) -> int:
        """Write ``buf`` at ``off``; return the number of bytes written.

        ``buf`` is only valid during the call; copy it if you keep it.
        """
        raise _enosys()

    def write_kill_suidgid(self, fh: int, ctx: RequestContext) -> None:
        """Called before ``write`` when the kernel asks to clear set-ID bits.

        The writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID, negotiated with
        HANDLE_KILLPRIV_V2): clear S_ISUID of the file, and S_ISGID if the
        group may execute it or the writer (``ctx``) is not in its group, as
        a local filesystem does on write(2).  The default does nothing.
        """

    def flush(self, fh: int, lock_owner: int = 0) -> None:
        """Sent on every close(2) of a file descriptor for ``fh``.

        ``lock_owner`` identifies the closing process's lock owner (the same
        value ``setlk`` receives as ``owner``): POSIX says every record lock
        that owner holds on the file goes with any close, so a filesystem
        that serves locks drops that owner's locks on the file here
        (:meth:`fusewire.locks.LockTable.unlock_owner`).  Overrides written
        with the older ``flush(self, fh)`` signature keep working.
        """
        raise _enosys()

    def release(self, fh: int) -> None:
        """The last reference to ``fh`` is gone (no reply is awaited by any caller)."""

    def fsync(self, fh: int, datasync: bool) -> None:
        """Flush ``fh`` to stable storage."""
        raise _enosys()

    def fallocate(self, fh: int, mode: int, offset: int, length: int,
                  ctx: RequestContext) -> None:
        """Preallocate or punch holes; ``mode`` is FALLOC_FL_* bits."""
        raise _enosys()

    def lseek(self, fh: int, offset: int, whence: int, ctx: RequestContext) -> int:
        """SEEK_DATA (3) / SEEK_HOLE (4); return the resulting offset or raise ENXIO."""
        raise _enosys()

    def copy_file_range(self, fh_in: int, off_in: int, inode_out: int, fh_out: int,
                        off_out: int, length: int, flags: int,
                        ctx: RequestContext) -> int:
        """Copy ``length`` bytes between two open files; return the count copied."""
        raise _enosys()

    def ioctl(self, fh: int, cmd: int, arg: int, in_data: bytes, out_size: int,
              flags: int, ctx: RequestContext) -> tuple[int, bytes]:
        """Restricted ioctl: return ``(result, out_data)`` with ``len(out_data) <= out_size``."""
        raise _enosys()

    def poll(self, fh: int, kh: int, events: int, flags: int,
             ctx: RequestContext) -> int:
        """Return ready events.  With FUSE_POLL_SCHEDULE_NOTIFY in ``flags``, call
        ``server.notify_poll(kh)`` later when the file becomes ready."""
        raise _enosys()

    def bmap(self, inode: int, blocksize: int, block: int, ctx: RequestContext) -> int:
        """Map a file block to a device block (fuseblk only)."""
        raise _enosys()

    # -- locks --------------------------------------------------------------

    def getlk(self, fh: int, owner: int, lock: Lock, ctx: RequestContext) -> Lock:
        """Return the first lock conflicting with ``lock``, or one with type F_UNLCK."""
        raise _enosys()

    def setlk(self, fh: int, owner: int, lock: Lock, sleep: bool,
              ctx: RequestContext) -> None:
        """Acquire or release a POSIX record lock; raise EAGAIN on conflict when not ``sleep``."""
        raise _enosys()

    def flock(self, fh: int, owner: int, op: int, sleep: bool, ctx: RequestContext) -> None:
        """BSD flock(2): ``op`` is fcntl.LOCK_SH, LOCK_EX or LOCK_UN."""
        raise _enosys()

    # -- directories ----------------------------------------------------------

    def opendir(self, inode: int, ctx: RequestContext) -> int:
        """Open directory ``inode``; return a handle passed to readdir/releasedir."""
        raise _enosys()

    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        """List entries after ``start_id`` (0 = from the start).

        Call ``token.add(name, attr, next_id)`` for each entry until it returns
        False.  ``next_id`` is the cookie for resuming after that entry and must
        be non-zero and stable.  Serves both READDIR and READDIRPLUS; for
        READDIRPLUS each entry that fits counts one lookup of ``attr.st_ino``.
        """
        raise _enosys()

    def releasedir(self, fh: int) -> None:
        """The directory handle ``fh`` is closed."""

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Flush directory ``fh`` to stable storage."""
        raise _enosys()

    # -- filesystem-wide --------------------------------------------------------

    def statfs(self, ctx: RequestContext) -> StatvfsData:
        """Return filesystem statistics (statvfs, df)."""
        raise _enosys()

    def syncfs(self, ctx: RequestContext) -> None:
        """syncfs(2); the kernel sends it only for fuseblk and virtiofs."""
        raise _enosys()

    def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        """Return whether ``ctx`` may access ``inode`` with ``mode`` (R_OK...).

        Not sent with ``default_permissions``.
        """
        raise _enosys()

    # -- extended attributes ----------------------------------------------------

    def setxattr(self, inode: int, name: bytes, value: bytes, flags: int,
                 ctx: RequestContext) -> None:
        """Set xattr ``name``; ``flags`` is XATTR_CREATE (1) / XATTR_REPLACE (2)."""
        raise _enosys()

    def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        """Return the value of xattr ``name`` or raise ENODATA.

        The library answers the size probe and raises ERANGE for a short buffer.
        """
        raise _enosys()

    def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        """Return the xattr names of ``inode``."""
        raise _enosys()

    def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove xattr ``name`` or raise ENODATA."""
        raise _enosys()

    # -- stable identity (recovery and the LOOKUP_HANDLE draft) ------------------

    def handle_of(self, inode: int) -> bytes | None:
        """Return a stable handle naming ``inode`` across server restarts, or None.

        Filesystems that implement this and :meth:`inode_for_handle` can be
        recovered after a crash (``fusewire mount --recoverable``).
        """
        return None

    def inode_for_handle(self, handle: bytes) -> int:
        """Turn a handle from :meth:`handle_of` back into an inode, or raise ESTALE.

        With a draft stable-handle profile (``Config(lookup_handle=...)``) the
        handles the kernel holds are :meth:`handle_of` results sealed with a
        MAC; fusewire checks the MAC first, so this only ever sees handles
        this filesystem issued (under the mount's secret).  Counts no lookup.
        """
        raise FUSEError(errno.ESTALE)

    def lookup_inode(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """DRAFT (LOOKUP_HANDLE profiles): the entry of an object named by its handle.

        Sent as LOOKUP_HANDLE with an empty name and the object's handle (the
        ``fusewire`` profile only; the RFC profiles look names up) after
        :meth:`inode_for_handle` resolved the handle to ``inode``.  Like
        :meth:`lookup`, a successful reply counts one lookup, which the kernel
        gives back with FORGET.  The default returns :meth:`getattr`; a
        filesystem that keeps its own lookup counts should count this one.
        """
        return self.getattr(inode, ctx)
