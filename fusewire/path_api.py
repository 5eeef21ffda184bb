"""The path-based API a filesystem implements: :class:`PathOperations`.

Methods take *paths* (``getattr("/a/b")``, ``read("/a/b", size, offset, fh)``),
the way fusepy and libfuse's high-level API work; :class:`fusewire.PathAdapter`
(:mod:`fusewire.pathops`) serves such a filesystem through the inode API.
:func:`current_context` gives the caller of the request being served.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from fusewire.types import (
    EntryAttributes,
    FUSEError,
    RequestContext,
    StatvfsData,
)

if TYPE_CHECKING:
    pass


__all__ = ["Attributes", "DirEntry", "PathOperations", "current_context"]

#: what ``getattr`` may return
Attributes = EntryAttributes | os.stat_result
#: what ``readdir`` may yield: a name, or (name, attributes or None)
DirEntry = str | tuple[str, "Attributes | None"]

_local = threading.local()
_NO_CONTEXT = RequestContext()


def current_context() -> RequestContext:
    """The :class:`~fusewire.RequestContext` of the request being handled on this thread.

    Requests that carry no caller (read, write, flush, release...) leave the
    context of the last request that did; outside a request it is all zeros.
    """
    ctx: RequestContext = getattr(_local, "ctx", _NO_CONTEXT)
    return ctx


def _enosys() -> FUSEError:
    return FUSEError(errno.ENOSYS)


class PathOperations:
    """Base class of path-based filesystems; override what you support.

    Every method has a default that fails with ENOSYS (the caller sees
    "Function not implemented"), except ``open``/``opendir`` (succeed with
    fh 0), ``release``/``releasedir``/``flush`` (do nothing) and ``statfs``
    (zeros).  Raise ``OSError(errno, ...)`` or ``FUSEError(errno)`` to fail.

    Class attributes:

    ``use_ino``
        ``getattr``'s ``st_ino`` identifies objects (hard links share a node).
    ``hard_remove``
        Unlink open files at once instead of hiding them until released.
    ``entry_timeout``, ``attr_timeout``, ``negative_timeout``
        How long (seconds) the kernel may cache names, attributes and
        absent names.  Defaults: 1, 1, 0.
    """

    use_ino: bool = False
    hard_remove: bool = False
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0
    negative_timeout: float = 0.0

    @property
    def context(self) -> RequestContext:
        """Who is asking (see :func:`current_context`)."""
        return current_context()

    # -- lifecycle -------------------------------------------------------------

    def init(self) -> None:
        """Called once the mount is initialised, before the first request."""

    def destroy(self) -> None:
        """Called when the server stops."""

    # -- attributes --------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> Attributes:
        """Attributes of ``path`` (``st_ino`` matters only with ``use_ino``).

        Return an :class:`os.stat_result` (``os.lstat(...)``) or an
        :class:`~fusewire.EntryAttributes`.  ``fh`` is the open file's handle
        for fstat-like calls, else None.
        """
        raise _enosys()

    def chmod(self, path: str, mode: int, fh: int | None = None) -> None:
        """Change permission bits (``mode`` may include the file type bits)."""
        raise _enosys()

    def chown(self, path: str, uid: int, gid: int, fh: int | None = None) -> None:
        """Change owner and/or group; -1 leaves one unchanged."""
        raise _enosys()

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        """Set the file size."""
        raise _enosys()

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None,
                fh: int | None = None) -> None:
        """Set access and/or modification time (ns since the epoch; None: unchanged)."""
        raise _enosys()

    def readlink(self, path: str) -> str:
        """Target of symlink ``path``."""
        raise _enosys()

    def access(self, path: str, mode: int) -> None:
        """Raise EACCES unless the caller may access ``path`` with ``mode`` (R_OK...)."""
        raise _enosys()

    # -- names ---------------------------------------------------------------------

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        """Create a file, fifo, socket or device node (``mode`` has the type bits)."""
        raise _enosys()

    def mkdir(self, path: str, mode: int) -> None:
        """Create a directory."""
        raise _enosys()

    def unlink(self, path: str) -> None:
        """Remove a non-directory."""
        raise _enosys()

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        raise _enosys()

    def symlink(self, path: str, target: str) -> None:
        """Create symlink ``path`` pointing to ``target``."""
        raise _enosys()

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """Rename ``old`` to ``new``; ``flags``: RENAME_NOREPLACE (1), RENAME_EXCHANGE (2)."""
        raise _enosys()

    def link(self, target: str, path: str) -> None:
        """Create hard link ``path`` to the existing ``target``."""
        raise _enosys()

    # -- files -----------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int) -> int:
        """Create and open a regular file; return a handle (any int).

        ENOSYS makes the kernel use ``mknod`` then ``open`` instead.
        """
        raise _enosys()

    def open(self, path: str, flags: int) -> int:
        """Open ``path`` with open(2) ``flags``; return a handle (any int)."""
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer means end of file."""
        raise _enosys()

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        """Write ``data`` at ``offset``; return the count written."""
        raise _enosys()

    def flush(self, path: str, fh: int) -> None:
        """Called on each close(2) of a descriptor of the file."""

    def release(self, path: str, fh: int) -> None:
        """The last descriptor of ``fh`` is closed."""

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        """Flush the file to stable storage."""
        raise _enosys()

    def fallocate(self, path: str, mode: int, offset: int, length: int, fh: int) -> None:
        """Preallocate or punch holes (FALLOC_FL_* ``mode``)."""
        raise _enosys()

    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        """SEEK_DATA (3) / SEEK_HOLE (4): the resulting offset, or raise ENXIO."""
        raise _enosys()

    # -- directories -------------------------------------------------------------------

    def opendir(self, path: str) -> int:
        """Open a directory; return a handle (any int)."""
        return 0

    def readdir(self, path: str, fh: int) -> Iterable[DirEntry]:
        """The names in directory ``path``.

        Yield names (str), or ``(name, attributes)`` pairs to save a
        ``getattr`` per entry when the kernel asks for attributes
        (READDIRPLUS).  "." and ".." are added when missing.
        """
        raise _enosys()

    def releasedir(self, path: str, fh: int) -> None:
        """The directory handle is closed."""

    def fsyncdir(self, path: str, datasync: bool, fh: int) -> None:
        """Flush the directory to stable storage."""
        raise _enosys()

    # -- filesystem, xattrs -----------------------------------------------------------------

    def statfs(self, path: str) -> StatvfsData | os.statvfs_result:
        """Filesystem statistics (``os.statvfs(...)`` will do)."""
        return StatvfsData()

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        """Set extended attribute ``name`` (XATTR_CREATE / XATTR_REPLACE ``flags``)."""
        raise _enosys()

    def getxattr(self, path: str, name: str) -> bytes:
        """Value of extended attribute ``name``; raise ENODATA if absent."""
        raise _enosys()

    def listxattr(self, path: str) -> Sequence[str]:
        """Names of the extended attributes of ``path``."""
        raise _enosys()

    def removexattr(self, path: str, name: str) -> None:
        """Remove extended attribute ``name``; raise ENODATA if absent."""
        raise _enosys()


