"""A path-based API on top of :class:`fusewire.Operations`.

Subclass :class:`PathOperations` and implement methods that take *paths*
(``getattr("/a/b")``, ``read("/a/b", size, offset, fh)``), the way fusepy
and libfuse's high-level API work.  Wrap an instance in :class:`PathAdapter`
to serve it::

    from fusewire import PathAdapter
    from fusewire.server import Server
    Server(PathAdapter(MyFS()), "/mnt/x").run()

The adapter does the inode-level chores a path filesystem should not have
to know about:

- **Inode table.**  Every name the kernel looks up gets a nodeid.  A node
  remembers its parent's nodeid and its name, not a path string, so a path
  is computed when a request arrives: after renaming a directory, its
  children are reached under the new name at once (stale paths below a
  renamed directory are a classic bug of path layers that cache strings).
- **Lookup counts.**  Lookups the kernel holds are counted per node and
  given back with FORGET; a node leaves the table when the kernel forgets it
  and nothing has it open.
- **Open handles.**  The ``fh`` the kernel sees is the adapter's; it maps to
  the node and the ``fh`` the filesystem's ``open`` returned, so
  ``read(path, size, off, fh)`` gets the file's *current* path.
- **Open-unlink.**  Unlinking (or renaming over) a file that is still open
  renames it to a hidden name (``.fuse_hidden…``) instead, and removes it
  when the last handle is released, so it stays readable and writable through
  its descriptors (libfuse's default; ``hard_remove = True`` unlinks at
  once).  Hidden names never appear in listings or lookups.
- **Hard links.**  With ``use_ino = True`` the ``st_ino`` of ``getattr``
  identifies the object: two names of one object share one nodeid (stat
  shows equal inode numbers, the page cache is shared).  Without it, every
  name is its own node, as in libfuse without ``use_ino``.
- **Errors.**  ``OSError`` (what ``os`` functions raise) and
  :class:`fusewire.FUSEError` both become the caller's errno.

Paths are ``str``, absolute (``"/"`` is the root), decoded from the
kernel's bytes with :func:`os.fsdecode` (UTF-8 with ``surrogateescape``), so
every name round-trips: ``os.fsencode(path)`` gives the original bytes back,
and ``os`` functions accept such strings directly.

Methods may be ``async def`` (``readdir`` may be an async generator): the
adapter's request methods then are coroutines too, for a server that runs
coroutine handlers.

Crash recovery (``fusewire mount --recoverable``): the adapter implements
the "handles" recovery hooks (``handle_of``, ``import_nodes``,
``reopen_handle``, ``entry_identity``): a node's handle is its parent's
nodeid and its name (a rename journals the renamed node's new handle, through
``key_changed``, before the reply), and open files are reopened by path with
their original flags.  A filesystem whose state lives outside the process
(a mirror of a directory, a remote store) needs no hook of its own; the
recovery hooks call its methods synchronously, so they must not suspend.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from fusewire.errors import errno_of
from fusewire.operations import Operations
from fusewire.recovery_api import HandleRecovery
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

if TYPE_CHECKING:
    from fusewire.readdir import ReaddirToken

__all__ = ["PathAdapter", "PathOperations", "current_context"]

_ROOT = 1
_HIDDEN_PREFIX = b".fuse_hidden"
#: d_ino of a listed name the kernel has not looked up (libfuse uses the same value)
_UNKNOWN_INO = 0xFFFFFFFF
_HANDLE_MAGIC = b"FWP2"
#: handle_of: magic, nodeid, parent nodeid; the name follows
_HANDLE = struct.Struct("<4sQQ")
_T = TypeVar("_T")

#: what ``getattr`` may return
Attributes = EntryAttributes | os.stat_result
#: what ``readdir`` may yield: a name, or (name, attributes or None)
DirEntry = str | tuple[str, "Attributes | None"]

log = logging.getLogger(__name__)
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


def _overrides(obj: object, name: str, base: type) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name, None)


class _Node:
    __slots__ = ("hidden", "ident", "last", "links", "nlookup", "nodeid", "opens",
                 "stale_path")

    def __init__(self, nodeid: int) -> None:
        self.nodeid = nodeid
        #: (parent nodeid, name) of each name this node is known under
        self.links: list[tuple[int, bytes]] = []
        #: the subset of links that are hidden open-unlinked names
        self.hidden: list[tuple[int, bytes]] = []
        self.nlookup = 0
        self.opens = 0
        #: the user's st_ino (use_ino), or None
        self.ident: int | None = None
        #: the last path of a node that lost all its names
        self.stale_path = b"/"
        #: the last attributes answered (fstat of a removed, still open directory)
        self.last: EntryAttributes | None = None


class _DirHandle:
    __slots__ = ("entries", "nodeid", "user_fh")

    def __init__(self, nodeid: int, user_fh: int) -> None:
        self.nodeid = nodeid
        self.user_fh = user_fh
        self.entries: list[tuple[bytes, Attributes | None]] | None = None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent == b"/" else parent + b"/" + name


class PathAdapter(Operations, HandleRecovery):
    """Serve a :class:`PathOperations` filesystem through the inode API.

    ``PathAdapter(fs)`` is an ordinary :class:`~fusewire.Operations`, so it
    goes wherever one does (``Server``, the emulator, ``fusewire mount
    MODULE:CLASS`` when CLASS is a PathOperations subclass).
    """

    def __init__(self, fs: PathOperations) -> None:
        self.fs = fs
        self._lock = threading.RLock()
        root = _Node(_ROOT)
        root.nlookup = 1
        self._nodes: dict[int, _Node] = {_ROOT: root}
        self._children: dict[tuple[int, bytes], int] = {}
        self._by_ident: dict[int, int] = {}
        self._next_node = 2
        #: adapter fh -> (nodeid, user's fh)
        self._files: dict[int, tuple[int, int]] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._hidden_seq = 0
        #: (parent, name) of the hidden names of open-unlinked files
        self._hidden: set[tuple[int, bytes]] = set()
        #: set by the recovery layer ("handles" mode): called with the nodeids
        #: whose :meth:`handle_of` changed or is about to (a rename), and
        #: optionally the handles to journal for them (else it asks handle_of)
        self.key_changed: Callable[..., None] | None = None
        self.__class__ = _derived(type(self), fs)

    # -- the table ----------------------------------------------------------------------

    def _path(self, nodeid: int) -> bytes:
        """The current path of ``nodeid`` (bytes), computed from parent links."""
        parts: list[bytes] = []
        nodes = self._nodes
        n = nodeid
        seen = 0
        while n != _ROOT:
            node = nodes.get(n)
            if node is None:
                raise FUSEError(errno.ESTALE)
            if not node.links:
                parts.append(node.stale_path.lstrip(b"/"))
                break
            n, name = node.links[0]
            parts.append(name)
            seen += 1
            if seen > 4096:
                raise FUSEError(errno.ELOOP)
        if not parts:
            return b"/"
        return b"/" + b"/".join(reversed(parts))

    def _spath(self, nodeid: int) -> str:
        return os.fsdecode(self._path(nodeid))

    def _child_path(self, parent: int, name: bytes) -> str:
        return os.fsdecode(_join(self._path(parent), name))

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """:meth:`_acall` outside a request (recovery hooks): the method must not suspend."""
        return _drive(self._acall(fn, *args))

    async def _acall(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a filesystem method (awaiting it if it is ``async def``); OSError -> errno."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        except FUSEError:
            raise
        except OSError as exc:
            raise FUSEError(errno_of(exc))

    async def _items(self, path: str, fh: int) -> list[Any]:
        """The filesystem's ``readdir``, which may return an iterable, an async
        iterable, or a coroutine of a list."""
        result = await self._acall(self.fs.readdir, path, fh)
        try:
            if hasattr(result, "__aiter__"):
                return [item async for item in result]
            return list(result)
        except FUSEError:
            raise
        except OSError as exc:
            raise FUSEError(errno_of(exc))

    def _ctx(self, ctx: RequestContext) -> None:
        _local.ctx = ctx

    def _attr(self, raw: Any, nodeid: int, hidden_links: int = 0) -> EntryAttributes:
        fs = self.fs
        if isinstance(raw, EntryAttributes):
            a = raw.copy()
            a.st_ino = nodeid
            a.entry_timeout = fs.entry_timeout
            a.attr_timeout = fs.attr_timeout
        elif isinstance(raw, os.stat_result):
            a = EntryAttributes.from_stat(raw, st_ino=nodeid, entry_timeout=fs.entry_timeout,
                                          attr_timeout=fs.attr_timeout)
        else:
            a = self.convert_attributes(raw, nodeid)
        if hidden_links:
            a.st_nlink = max(0, a.st_nlink - hidden_links)
        return a

    def convert_attributes(self, raw: Any, nodeid: int) -> EntryAttributes:
        """Turn another kind of ``getattr`` result into attributes (compat layers override)."""
        raise TypeError(f"getattr returned {type(raw).__name__}, not os.stat_result or "
                        "EntryAttributes")

    @staticmethod
    def _ident(raw: Any) -> int | None:
        ino = getattr(raw, "st_ino", None)
        if ino is None and isinstance(raw, Mapping):
            ino = raw.get("st_ino")
        return int(ino) if ino else None

    def _link_node(self, parent: int, name: bytes, raw: Any) -> _Node:
        """The node for ``name`` in ``parent`` (created if new); does not count a lookup."""
        key = (parent, name)
        nodes = self._nodes
        with self._lock:
            ident = self._ident(raw) if self.fs.use_ino else None
            current = self._children.get(key)
            if current is not None:
                node = nodes[current]
                if ident is None or node.ident == ident:
                    return node
                self._unlink_entry(parent, name)      # replaced behind our back
            node_id = self._by_ident.get(ident) if ident is not None else None
            if node_id is not None and node_id in nodes and nodes[node_id].links:
                node = nodes[node_id]           # another name of a live object: a hard link
            else:
                node = _Node(self._next_node)
                self._next_node += 1
                node.ident = ident
                nodes[node.nodeid] = node
                if ident is not None:
                    self._by_ident[ident] = node.nodeid
            node.links.append(key)
            self._children[key] = node.nodeid
            return node

    def _unlink_entry(self, parent: int, name: bytes) -> _Node | None:
        """Forget the name ``(parent, name)``; return the node it named."""
        with self._lock:
            nodeid = self._children.pop((parent, name), None)
            if nodeid is None:
                return None
            node = self._nodes.get(nodeid)
            if node is None:
                return None
            key = (parent, name)
            if key in node.links:
                first = node.links[0] == key
                if len(node.links) == 1:
                    node.stale_path = self._path(nodeid)
                node.links.remove(key)
                if first and node.links:
                    self._rekey(node)
            self._maybe_drop(node)
            return node

    def _maybe_drop(self, node: _Node) -> None:
        if node.nodeid == _ROOT or node.nlookup > 0 or node.opens > 0:
            return
        self._nodes.pop(node.nodeid, None)
        for key in node.links:
            if self._children.get(key) == node.nodeid:
                del self._children[key]
        node.links.clear()
        if node.ident is not None and self._by_ident.get(node.ident) == node.nodeid:
            del self._by_ident[node.ident]

    async def _entry(self, parent: int, name: bytes, path: str) -> EntryAttributes:
        """getattr + a counted lookup of ``name`` in ``parent``."""
        raw = await self._acall(self.fs.getattr, path, None)
        node = self._link_node(parent, name, raw)
        with self._lock:
            node.nlookup += 1
        a = self._attr(raw, node.nodeid, len(node.hidden))
        node.last = a
        return a

    @staticmethod
    def _check_name(name: bytes) -> None:
        if name.startswith(_HIDDEN_PREFIX):
            raise FUSEError(errno.ENOENT)

    # -- Operations ------------------------------------------------------------------

    def init(self) -> None:
        """Calls the filesystem's ``init``."""
        self.fs.init()

    def destroy(self) -> None:
        """Calls the filesystem's ``destroy``."""
        self.fs.destroy()

    async def _a_lookup(self, parent_inode: int, name: bytes,
                        ctx: RequestContext) -> EntryAttributes:
        """getattr of the child path; counts one lookup of its node."""
        self._ctx(ctx)
        if (parent_inode, name) in self._hidden:
            raise FUSEError(errno.ENOENT)
        path = self._child_path(parent_inode, name)
        try:
            return await self._entry(parent_inode, name, path)
        except FUSEError as exc:
            if exc.errno == errno.ENOENT:
                self._unlink_entry(parent_inode, name)
                if self.fs.negative_timeout > 0:
                    return EntryAttributes(0, entry_timeout=self.fs.negative_timeout)
            raise

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Give back lookups; drop nodes nobody holds."""
        with self._lock:
            for nodeid, n in inode_list:
                node = self._nodes.get(nodeid)
                if node is None or nodeid == _ROOT:
                    continue
                node.nlookup = max(0, node.nlookup - n)
                self._maybe_drop(node)

    async def _a_getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        """getattr of the node's current path."""
        self._ctx(ctx)
        node = self._nodes.get(inode)
        if node is None:
            raise FUSEError(errno.ESTALE)
        fh = None
        if node.opens and not node.links:
            fh = self._any_fh(inode)
        try:
            raw = await self._acall(self.fs.getattr, self._spath(inode), fh)
        except FUSEError as exc:
            if exc.errno != errno.ENOENT or node.links or node.last is None:
                raise
            gone = node.last.copy()       # removed while open: as fstat on a local disk
            gone.st_nlink = 0
            return gone
        a = self._attr(raw, inode, len(node.hidden))
        node.last = a
        return a

    def _any_fh(self, inode: int) -> int | None:
        for nodeid, user_fh in self._files.values():
            if nodeid == inode:
                return user_fh
        return None

    async def _a_setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                fh: int | None, ctx: RequestContext) -> EntryAttributes:
        """chmod / chown / truncate / utimens, then getattr."""
        self._ctx(ctx)
        fs = self.fs
        path = self._spath(inode)
        ufh = self._files[fh][1] if fh is not None and fh in self._files else None
        if fields.update_mode:
            await self._acall(fs.chmod, path, attr.st_mode, ufh)
        if fields.update_uid or fields.update_gid:
            await self._acall(fs.chown, path, attr.st_uid if fields.update_uid else -1,
                       attr.st_gid if fields.update_gid else -1, ufh)
        if fields.update_size:
            await self._acall(fs.truncate, path, attr.st_size, ufh)
        if fields.update_atime or fields.update_mtime:
            await self._acall(fs.utimens, path,
                       attr.st_atime_ns if fields.update_atime else None,
                       attr.st_mtime_ns if fields.update_mtime else None, ufh)
        node = self._nodes.get(inode)
        raw = await self._acall(fs.getattr, path, ufh)
        return self._attr(raw, inode, len(node.hidden) if node is not None else 0)

    async def _a_readlink(self, inode: int, ctx: RequestContext) -> bytes:
        """The symlink's target, encoded with os.fsencode."""
        self._ctx(ctx)
        return os.fsencode(await self._acall(self.fs.readlink, self._spath(inode)))

    async def _a_access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        """The filesystem's ``access`` (raise to refuse)."""
        self._ctx(ctx)
        await self._acall(self.fs.access, self._spath(inode), mode)
        return True

    # -- names --------------------------------------------------------------------------

    async def _a_mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: RequestContext) -> EntryAttributes:
        """mknod then getattr."""
        self._ctx(ctx)
        self._check_name(name)
        path = self._child_path(parent_inode, name)
        await self._acall(self.fs.mknod, path, mode & ~ctx.umask, rdev)
        return await self._entry(parent_inode, name, path)

    async def _a_mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: RequestContext) -> EntryAttributes:
        """mkdir then getattr."""
        self._ctx(ctx)
        self._check_name(name)
        path = self._child_path(parent_inode, name)
        await self._acall(self.fs.mkdir, path, mode & ~ctx.umask & 0o7777)
        return await self._entry(parent_inode, name, path)

    async def _a_symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: RequestContext) -> EntryAttributes:
        """symlink then getattr."""
        self._ctx(ctx)
        self._check_name(name)
        path = self._child_path(parent_inode, name)
        await self._acall(self.fs.symlink, path, os.fsdecode(target))
        return await self._entry(parent_inode, name, path)

    async def _a_link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: RequestContext) -> EntryAttributes:
        """link then getattr."""
        self._ctx(ctx)
        self._check_name(new_name)
        path = self._child_path(new_parent_inode, new_name)
        await self._acall(self.fs.link, self._spath(inode), path)
        if not self.fs.use_ino:
            return await self._entry(new_parent_inode, new_name, path)
        raw = await self._acall(self.fs.getattr, path, None)
        with self._lock:
            node = self._nodes[inode]
            key = (new_parent_inode, new_name)
            if key not in node.links:
                node.links.append(key)
            self._children[key] = inode
            node.nlookup += 1
            if node.ident is None:
                node.ident = self._ident(raw)
                if node.ident is not None:
                    self._by_ident[node.ident] = inode
        return self._attr(raw, inode, len(node.hidden))

    async def _hide(self, parent: int, name: bytes, node: _Node) -> bool:
        """Rename an open node's last visible name to a hidden one; True if done."""
        if self.fs.hard_remove or node.opens == 0 or len(node.links) - len(node.hidden) > 1:
            return False
        with self._lock:
            self._hidden_seq += 1
            hidden = b"%s%08x%08x" % (_HIDDEN_PREFIX, node.nodeid & 0xFFFFFFFF,
                                      self._hidden_seq)
        parent_path = self._path(parent)
        ahead: dict[int, bytes] = {}
        if self.key_changed is not None and node.links and node.links[0] == (parent, name):
            ahead[node.nodeid] = _HANDLE.pack(_HANDLE_MAGIC, node.nodeid, parent) + hidden
            self._rekey_to(ahead)       # before the source changes (see _a_rename)
        try:
            await self._acall(self.fs.rename, os.fsdecode(_join(parent_path, name)),
                              os.fsdecode(_join(parent_path, hidden)), 0)
        except FUSEError:
            if ahead:
                self._rekey(node)
            return False        # no rename (ENOSYS, EROFS...): unlink it as asked
        with self._lock:
            key = (parent, name)
            self._children.pop(key, None)
            if key in node.links:
                node.links.remove(key)
            hkey = (parent, hidden)
            node.links.insert(0, hkey)
            node.hidden.append(hkey)
            self._children[hkey] = node.nodeid
            self._hidden.add(hkey)
            self._rekey(node)
        return True

    async def _unhide(self, node: _Node, parent: int, name: bytes) -> None:
        """Undo :meth:`_hide` (the rename it made room for failed)."""
        hkey = node.hidden[-1]
        await self._acall(self.fs.rename, os.fsdecode(_join(self._path(hkey[0]), hkey[1])),
                          os.fsdecode(_join(self._path(parent), name)), 0)
        with self._lock:
            node.hidden.remove(hkey)
            self._hidden.discard(hkey)
            node.links[node.links.index(hkey)] = (parent, name)
            self._children.pop(hkey, None)
            self._children[(parent, name)] = node.nodeid
            self._rekey(node)

    async def _a_unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """unlink, or hide the name while the file is open."""
        self._ctx(ctx)
        self._check_name(name)
        nodeid = self._children.get((parent_inode, name))
        node = self._nodes.get(nodeid) if nodeid is not None else None
        if node is not None and await self._hide(parent_inode, name, node):
            return
        ahead: dict[int, bytes] = {}
        if node is not None and self.key_changed is not None and len(node.links) > 1 \
                and node.links[0] == (parent_inode, name):
            # another name becomes the node's handle: journal it before the unlink
            nxt = node.links[1]
            ahead[node.nodeid] = _HANDLE.pack(_HANDLE_MAGIC, node.nodeid, nxt[0]) + nxt[1]
            self._rekey_to(ahead)
        try:
            await self._acall(self.fs.unlink, self._child_path(parent_inode, name))
        except FUSEError:
            if ahead:
                self._rekey(node)
            raise
        self._unlink_entry(parent_inode, name)

    async def _a_rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        """rmdir; hidden open-unlinked files inside move to the root first."""
        self._ctx(ctx)
        self._check_name(name)
        path = self._child_path(parent_inode, name)
        try:
            await self._acall(self.fs.rmdir, path)
        except FUSEError as exc:
            dirid = self._children.get((parent_inode, name))
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or dirid is None or \
                    not await self._evict_hidden(dirid):
                raise
            await self._acall(self.fs.rmdir, path)
        self._unlink_entry(parent_inode, name)

    async def _evict_hidden(self, dirid: int) -> bool:
        """Move the hidden names in directory ``dirid`` to the root; True if any moved."""
        keys = [k for k in self._hidden if k[0] == dirid]
        for key in keys:
            nodeid = self._children.get(key)
            node = self._nodes.get(nodeid) if nodeid is not None else None
            if node is None:
                return False
            new = (_ROOT, key[1])
            await self._acall(self.fs.rename, os.fsdecode(_join(self._path(dirid), key[1])),
                       os.fsdecode(_join(b"/", key[1])), 0)
            with self._lock:
                self._hidden.discard(key)
                self._hidden.add(new)
                node.links[node.links.index(key)] = new
                node.hidden[node.hidden.index(key)] = new
                del self._children[key]
                self._children[new] = node.nodeid
                self._rekey(node)
        return bool(keys)

    async def _a_rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                        name_new: bytes, flags: int, ctx: RequestContext) -> None:
        """rename; the table follows (children of a renamed directory included)."""
        self._ctx(ctx)
        self._check_name(name_old)
        self._check_name(name_new)
        old = self._child_path(parent_inode_old, name_old)
        new = self._child_path(parent_inode_new, name_new)
        src_key, dst_key = (parent_inode_old, name_old), (parent_inode_new, name_new)
        exchange = bool(flags & 2)
        hidden: _Node | None = None
        if not exchange and not flags & 1 and dst_key != src_key:
            victim_id = self._children.get(dst_key)
            victim = self._nodes.get(victim_id) if victim_id is not None else None
            if victim is not None and victim.opens:
                # keep an open file that the rename replaces alive under a hidden name
                try:
                    await self._acall(self.fs.getattr, old, None)
                except FUSEError:
                    pass
                else:
                    if await self._hide(parent_inode_new, name_new, victim):
                        hidden = victim
        # The recovery journal learns the new handles before the source changes:
        # a crash between the two then finds the node under its new name, and
        # the re-sent RENAME (probes unchanged) renames on disk to match.
        ahead = self._handles_after_rename(src_key, dst_key, exchange)
        if ahead:
            self._rekey_to(ahead)
        try:
            await self._acall(self.fs.rename, old, new, flags)
        except FUSEError:
            if ahead:
                self._rekey(*(self._nodes.get(n) for n in ahead))
            if hidden is not None:      # the rename failed: the target gets its name back
                await self._unhide(hidden, parent_inode_new, name_new)
            raise
        if src_key == dst_key:
            return
        with self._lock:
            if src_key not in self._children:
                # a RENAME re-sent after a crash whose journal already had the new
                # handles (see above): the table shows the rename already
                return
            src = self._children.pop(src_key, None)
            dst = self._children.pop(dst_key, None)
            for nodeid, frm, to in ((src, src_key, dst_key), (dst, dst_key, src_key)):
                if nodeid is None:
                    continue
                node = self._nodes.get(nodeid)
                if node is None:
                    continue
                if frm in node.links:
                    i = node.links.index(frm)
                    if nodeid == src or exchange:
                        node.links[i] = to
                    else:      # the replaced target lost its name
                        if len(node.links) == 1:
                            node.stale_path = os.fsencode(new)
                        del node.links[i]
                        self._maybe_drop(node)
            if src is not None:
                self._children[dst_key] = src
            if exchange and dst is not None:
                self._children[src_key] = dst
            self._rekey(*(self._nodes.get(n) for n in (src, dst) if n is not None))

    # -- files ----------------------------------------------------------------------------

    def _new_fh(self, nodeid: int, user_fh: int) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = (nodeid, user_fh)
            self._nodes[nodeid].opens += 1
        return fh

    async def _a_create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """create then getattr."""
        self._ctx(ctx)
        self._check_name(name)
        path = self._child_path(parent_inode, name)
        user_fh = await self._acall(self.fs.create, path, mode & ~ctx.umask, flags)
        attr = await self._entry(parent_inode, name, path)
        return self.file_info(self._new_fh(attr.st_ino, int(user_fh or 0)), flags), attr

    async def _a_open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        """open by path; the kernel gets the adapter's handle."""
        self._ctx(ctx)
        if inode not in self._nodes:
            raise FUSEError(errno.ESTALE)
        user_fh = await self._acall(self.fs.open, self._spath(inode), flags)
        return self.file_info(self._new_fh(inode, int(user_fh or 0)), flags)

    def file_info(self, fh: int, flags: int) -> FileInfo:
        """The FileInfo for a new handle (compat layers set caching flags here)."""
        return FileInfo(fh=fh)

    def _file(self, fh: int) -> tuple[str, int]:
        try:
            nodeid, user_fh = self._files[fh]
        except KeyError:
            raise FUSEError(errno.EBADF)
        return self._spath(nodeid), user_fh

    async def _a_read(self, fh: int, off: int, size: int) -> bytes:
        """read(path, size, offset, fh)."""
        path, user_fh = self._file(fh)
        data: bytes = await self._acall(self.fs.read, path, size, off, user_fh)
        return data

    async def _a_write(self, fh: int, off: int, buf: memoryview) -> int:
        """write(path, data, offset, fh)."""
        path, user_fh = self._file(fh)
        return int(await self._acall(self.fs.write, path, bytes(buf), off, user_fh))

    async def _a_flush(self, fh: int) -> None:
        """flush(path, fh)."""
        path, user_fh = self._file(fh)
        await self._acall(self.fs.flush, path, user_fh)

    async def _a_fsync(self, fh: int, datasync: bool) -> None:
        """fsync(path, datasync, fh)."""
        path, user_fh = self._file(fh)
        await self._acall(self.fs.fsync, path, datasync, user_fh)

    async def _a_fallocate(self, fh: int, mode: int, offset: int, length: int,
                  ctx: RequestContext) -> None:
        """fallocate(path, mode, offset, length, fh)."""
        self._ctx(ctx)
        path, user_fh = self._file(fh)
        await self._acall(self.fs.fallocate, path, mode, offset, length, user_fh)

    async def _a_lseek(self, fh: int, offset: int, whence: int, ctx: RequestContext) -> int:
        """lseek(path, offset, whence, fh) for SEEK_DATA / SEEK_HOLE."""
        self._ctx(ctx)
        path, user_fh = self._file(fh)
        return int(await self._acall(self.fs.lseek, path, offset, whence, user_fh))

    async def _a_tmpfile(self, parent_inode: int, mode: int, flags: int,
                ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """O_TMPFILE: ``create`` under a hidden name, removed at release unless linked."""
        self._ctx(ctx)
        with self._lock:
            self._hidden_seq += 1
            name = b"%s%08x%08x" % (_HIDDEN_PREFIX, 0, self._hidden_seq)
        path = self._child_path(parent_inode, name)
        user_fh = await self._acall(self.fs.create, path, mode & ~ctx.umask,
                             flags & ~os.O_TMPFILE | os.O_CREAT | os.O_EXCL)
        key = (parent_inode, name)
        with self._lock:
            self._hidden.add(key)
        try:
            attr = await self._entry(parent_inode, name, path)
        except FUSEError:
            self._hidden.discard(key)
            raise
        node = self._nodes[attr.st_ino]
        with self._lock:
            node.hidden.append(key)
        attr.st_nlink = max(0, attr.st_nlink - 1)
        return FileInfo(fh=self._new_fh(attr.st_ino, int(user_fh or 0))), attr

    async def _a_release(self, fh: int) -> None:
        """release(path, fh); a hidden (unlinked while open) file is removed now."""
        entry = self._files.pop(fh, None)
        if entry is None:
            return
        nodeid, user_fh = entry
        try:
            await self._acall(self.fs.release, self._spath(nodeid), user_fh)
        finally:
            with self._lock:
                node = self._nodes.get(nodeid)
                if node is not None:
                    node.opens -= 1
            if node is not None and node.opens == 0:
                await self._remove_hidden(node)
                with self._lock:
                    self._maybe_drop(node)

    async def _remove_hidden(self, node: _Node) -> None:
        for key in list(node.hidden):
            parent, name = key
            try:
                await self._acall(self.fs.unlink, os.fsdecode(_join(self._path(parent), name)))
            except FUSEError:
                pass
            with self._lock:
                node.hidden.remove(key)
                self._hidden.discard(key)
                if key in node.links:
                    first = node.links[0] == key
                    if len(node.links) == 1:
                        node.stale_path = self._path(node.nodeid)
                    node.links.remove(key)
                    if first and node.links:
                        self._rekey(node)
                if self._children.get(key) == node.nodeid:
                    del self._children[key]

    # -- directories ------------------------------------------------------------------------

    async def _a_opendir(self, inode: int, ctx: RequestContext) -> int:
        """opendir by path."""
        self._ctx(ctx)
        if inode not in self._nodes:
            raise FUSEError(errno.ESTALE)
        user_fh = await self._acall(self.fs.opendir, self._spath(inode))
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = _DirHandle(inode, int(user_fh or 0))
            self._nodes[inode].opens += 1
        return fh

    async def _list(self, d: _DirHandle) -> list[tuple[bytes, Attributes | None]]:
        path = self._spath(d.nodeid)
        out: list[tuple[bytes, Attributes | None]] = []
        names = set()
        for item in await self._items(path, d.user_fh):
            name, attr = self.split_entry(item)
            bname = os.fsencode(name)
            if (d.nodeid, bname) in self._hidden:
                continue
            names.add(bname)
            out.append((bname, attr))
        head: list[tuple[bytes, Attributes | None]] = [
            (n, None) for n in (b".", b"..") if n not in names]
        return head + out

    def split_entry(self, item: Any) -> tuple[str, Any]:
        """``readdir`` item -> (name, attributes or None); compat layers override."""
        if isinstance(item, tuple):
            return item[0], item[1]
        return item, None

    async def _a_readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        """List a snapshot of the directory taken at offset 0 (stable cookies)."""
        d = self._dirs.get(fh)
        if d is None:
            raise FUSEError(errno.EBADF)
        if d.entries is None or start_id == 0:
            d.entries = await self._list(d)
        entries = d.entries
        plus = token.plus
        dirpath = self._path(d.nodeid)
        for i in range(start_id, len(entries)):
            name, raw = entries[i]
            if name in (b".", b".."):
                ino = d.nodeid if name == b"." else self._parent_of(d.nodeid)
                if not token.add(name, EntryAttributes(ino, st_mode=stat.S_IFDIR), i + 1):
                    return
                continue
            if not plus:
                with self._lock:
                    known = self._children.get((d.nodeid, name))
                mode = int(getattr(raw, "st_mode", 0) or 0)
                if not token.add_name(name, known or _UNKNOWN_INO, mode, i + 1):
                    return
                continue
            path = os.fsdecode(_join(dirpath, name))
            try:
                if raw is None:
                    raw = await self._acall(self.fs.getattr, path, None)
            except FUSEError:
                continue            # vanished since the listing
            node = self._link_node(d.nodeid, name, raw)
            a = self._attr(raw, node.nodeid, len(node.hidden))
            if not token.add(name, a, i + 1):
                with self._lock:
                    self._maybe_drop(node)
                return
            with self._lock:
                node.nlookup += 1

    def _parent_of(self, nodeid: int) -> int:
        node = self._nodes.get(nodeid)
        return node.links[0][0] if node is not None and node.links else _ROOT

    async def _a_releasedir(self, fh: int) -> None:
        """releasedir(path, fh)."""
        d = self._dirs.pop(fh, None)
        if d is None:
            return
        try:
            await self._acall(self.fs.releasedir, self._spath(d.nodeid), d.user_fh)
        finally:
            with self._lock:
                node = self._nodes.get(d.nodeid)
                if node is not None:
                    node.opens -= 1
                    self._maybe_drop(node)

    async def _a_fsyncdir(self, fh: int, datasync: bool) -> None:
        """fsyncdir(path, datasync, fh)."""
        d = self._dirs.get(fh)
        if d is None:
            raise FUSEError(errno.EBADF)
        await self._acall(self.fs.fsyncdir, self._spath(d.nodeid), datasync, d.user_fh)

    # -- filesystem, xattrs ---------------------------------------------------------------

    async def _a_statfs(self, ctx: RequestContext) -> StatvfsData:
        """statfs("/")."""
        self._ctx(ctx)
        s = await self._acall(self.fs.statfs, "/")
        if isinstance(s, StatvfsData):
            return s
        if isinstance(s, os.statvfs_result):
            return StatvfsData(s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail,
                               s.f_files, s.f_ffree, s.f_favail, s.f_namemax)
        return self.convert_statfs(s)

    def convert_statfs(self, raw: Any) -> StatvfsData:
        """Turn another kind of ``statfs`` result into StatvfsData (compat layers override)."""
        raise TypeError(f"statfs returned {type(raw).__name__}")

    async def _a_setxattr(self, inode: int, name: bytes, value: bytes, flags: int,
                 ctx: RequestContext) -> None:
        """setxattr(path, name, value, flags)."""
        self._ctx(ctx)
        await self._acall(self.fs.setxattr, self._spath(inode), os.fsdecode(name), bytes(value),
                   flags)

    async def _a_getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        """getxattr(path, name)."""
        self._ctx(ctx)
        return bytes(await self._acall(self.fs.getxattr, self._spath(inode), os.fsdecode(name)))

    async def _a_listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        """listxattr(path), names encoded with os.fsencode."""
        self._ctx(ctx)
        return [os.fsencode(n) for n in await self._acall(self.fs.listxattr, self._spath(inode))]

    async def _a_removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        """removexattr(path, name)."""
        self._ctx(ctx)
        await self._acall(self.fs.removexattr, self._spath(inode), os.fsdecode(name))

    # -- crash recovery ("handles" mode) ------------------------------------------------------

    def handle_of(self, inode: int) -> bytes | None:
        """The node's first name as (parent nodeid, name): a handle a rename changes
        only for the renamed node itself (its children keep theirs)."""
        with self._lock:
            node = self._nodes.get(inode)
            if node is None or not node.links:
                return None
            parent, name = node.links[0]
            return _HANDLE.pack(_HANDLE_MAGIC, inode, parent) + name

    def inode_for_handle(self, handle: bytes) -> int:
        """The nodeid of a :meth:`handle_of` handle that still names it."""
        if len(handle) <= _HANDLE.size or not handle.startswith(_HANDLE_MAGIC):
            raise FUSEError(errno.ESTALE)
        _, nodeid, parent = _HANDLE.unpack_from(handle)
        if self._children.get((parent, handle[_HANDLE.size:])) == nodeid:
            return int(nodeid)
        raise FUSEError(errno.ESTALE)

    def _handles_after_rename(self, src_key: tuple[int, bytes], dst_key: tuple[int, bytes],
                              exchange: bool) -> dict[int, bytes]:
        """The handles the nodes named by ``src_key`` (and ``dst_key`` for an
        exchange) will have once the rename is done; only those that change."""
        if self.key_changed is None or src_key == dst_key:
            return {}
        out: dict[int, bytes] = {}
        moves = [(src_key, dst_key)] + ([(dst_key, src_key)] if exchange else [])
        for frm, to in moves:
            nodeid = self._children.get(frm)
            node = self._nodes.get(nodeid) if nodeid is not None else None
            if node is not None and node.links and node.links[0] == frm:
                out[node.nodeid] = _HANDLE.pack(_HANDLE_MAGIC, node.nodeid, to[0]) + to[1]
        return out

    def _rekey_to(self, handles: dict[int, bytes]) -> None:
        """Journal these handles for these nodes now (recovery's ``key_changed`` hook)."""
        hook = self.key_changed
        if hook is not None:
            hook(list(handles), handles)

    def _rekey(self, *nodes: _Node | None) -> None:
        """Tell the recovery journal that these nodes' first names changed."""
        hook = self.key_changed
        if hook is not None:
            ids = [n.nodeid for n in nodes if n is not None and n.nodeid != _ROOT]
            if ids:
                hook(ids)

    def entry_identity(self, parent_inode: int, name: bytes) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of ``name`` in the directory, None if absent (no lookup).

        The recovery journal probes this around namespace changes so that a
        request re-sent after a crash is not executed twice.  Without
        ``use_ino`` only presence counts ((0, 0)).
        """
        try:
            raw = self._call(self.fs.getattr, self._child_path(parent_inode, name), None)
        except FUSEError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        if not self.fs.use_ino:
            return 0, 0
        return int(getattr(raw, "st_dev", 0) or 0), int(getattr(raw, "st_ino", 0) or 0)

    def import_nodes(self, nodes: Mapping[int, tuple[bytes, int]]) -> list[int]:
        """Make the table ``nodeid -> (handle, lookup count)``; return the nodeids lost.

        Authoritative: what was in the table before (a warm spare's earlier
        import) is replaced.  A node whose parent is not in ``nodes`` is lost
        (the kernel holds every parent of a node it holds, so that only
        happens to nodes recorded without a handle).
        """
        parsed: dict[int, tuple[int, bytes, int]] = {}
        lost: list[int] = []
        for nodeid, (handle, count) in nodes.items():
            if nodeid == _ROOT:
                continue
            if len(handle) <= _HANDLE.size or not handle.startswith(_HANDLE_MAGIC):
                lost.append(nodeid)
                continue
            _, _, parent = _HANDLE.unpack_from(handle)
            parsed[nodeid] = (int(parent), handle[_HANDLE.size:], count)
        with self._lock:
            root = self._nodes[_ROOT]
            self._nodes = {_ROOT: root}
            self._children.clear()
            self._by_ident.clear()
            self._hidden.clear()
            for nodeid in parsed:
                self._nodes[nodeid] = _Node(nodeid)
                self._next_node = max(self._next_node, nodeid + 1)
            for nodeid, (parent, name, count) in parsed.items():
                node = self._nodes[nodeid]
                if parent not in self._nodes:
                    del self._nodes[nodeid]
                    lost.append(nodeid)
                    continue
                node.nlookup = count
                key = (parent, name)
                node.links.append(key)
                self._children[key] = nodeid
                if name.startswith(_HIDDEN_PREFIX):
                    node.hidden.append(key)
                    self._hidden.add(key)
            # a node whose parent was dropped above has no path either
            changed = True
            while changed:
                changed = False
                for nodeid, node in list(self._nodes.items()):
                    if nodeid != _ROOT and node.links and node.links[0][0] not in self._nodes:
                        del self._nodes[nodeid]
                        self._children.pop(node.links[0], None)
                        lost.append(nodeid)
                        changed = True
        return lost

    def reopen_handle(self, fh: int, inode: int, flags: int) -> None:
        """Make a previous process's handle ``fh`` valid here: open the path again."""
        if inode not in self._nodes:
            raise FUSEError(errno.ESTALE)
        path = self._spath(inode)
        try:
            st = self._call(self.fs.getattr, path, None)
        except FUSEError as exc:
            log.warning("handle %d: %s cannot be reopened: %s", fh, path, exc)
            raise
        if stat.S_ISDIR(getattr(st, "st_mode", 0)) or flags & os.O_DIRECTORY:
            user_fh = self._call(self.fs.opendir, path)
            with self._lock:
                self._dirs[fh] = _DirHandle(inode, int(user_fh or 0))
        else:
            user_fh = self._call(self.fs.open, path,
                                 flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
            with self._lock:
                self._files[fh] = (inode, int(user_fh or 0))
        with self._lock:
            self._nodes[inode].opens += 1
            self._next_fh = max(self._next_fh, fh + 1)


# -- the request methods: one async implementation, a sync or an async face ---------------

#: Operations methods the adapter serves (each implemented by ``_a_<name>``)
_REQUESTS = ("lookup", "getattr", "setattr", "readlink", "access", "mknod", "mkdir",
             "symlink", "link", "unlink", "rmdir", "rename", "create", "open", "read",
             "write", "flush", "fsync", "fallocate", "lseek", "tmpfile", "release",
             "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "setxattr",
             "getxattr", "listxattr", "removexattr")
#: adapter method -> the PathOperations method without which it is not implemented
_NEEDS = {"create": "create", "tmpfile": "create", "lseek": "lseek", "fsync": "fsync",
          "fsyncdir": "fsyncdir", "fallocate": "fallocate", "access": "access",
          "setxattr": "setxattr", "getxattr": "getxattr", "listxattr": "listxattr",
          "removexattr": "removexattr", "link": "link", "symlink": "symlink",
          "readlink": "readlink", "mknod": "mknod", "flush": "flush"}


def _drive(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (every filesystem method it calls is sync)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: _T = stop.value
        return result
    coro.close()
    raise RuntimeError("a path filesystem method suspended in a sync server")


def _sync_face(name: str) -> Callable[..., Any]:
    impl = getattr(PathAdapter, "_a_" + name)

    def method(self: PathAdapter, *args: Any) -> Any:
        return _drive(impl(self, *args))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = impl.__doc__
    # the implementation's parameters, not *args: servers inspect some handlers'
    # signatures (whether flush takes a lock owner)
    method.__signature__ = inspect.signature(impl)  # type: ignore[attr-defined]
    return method


def _async_face(name: str) -> Callable[..., Any]:
    impl = getattr(PathAdapter, "_a_" + name)

    async def method(self: PathAdapter, *args: Any) -> Any:
        return await impl(self, *args)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = impl.__doc__
    # the implementation's parameters, not *args: servers inspect some handlers'
    # signatures (whether flush takes a lock owner)
    method.__signature__ = inspect.signature(impl)  # type: ignore[attr-defined]
    return method


for _name in _REQUESTS:
    setattr(PathAdapter, _name, _sync_face(_name))
del _name

_DERIVED: dict[tuple[type, frozenset[str], bool], type] = {}


def _is_async(fs: PathOperations) -> bool:
    """Whether any of the filesystem's methods is ``async def`` (or an async generator)."""
    for name in dir(type(fs)):
        if name.startswith("_") or name in ("init", "destroy"):
            continue
        fn = getattr(type(fs), name, None)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            return True
    return False


def _derived(cls: type[PathAdapter], fs: PathOperations) -> type[PathAdapter]:
    """``cls`` with the methods ``fs`` lacks left unimplemented (the kernel stops asking),
    and async faces when ``fs`` has ``async def`` methods (for a server that runs
    coroutine handlers)."""
    missing = frozenset(mine for mine, theirs in _NEEDS.items()
                        if not _overrides(fs, theirs, PathOperations))
    asynchronous = _is_async(fs)
    if not missing and not asynchronous:
        return cls
    key = (cls, missing, asynchronous)
    derived = _DERIVED.get(key)
    if derived is None:
        body: dict[str, Any] = {name: getattr(Operations, name) for name in missing}
        if asynchronous:
            for name in _REQUESTS:
                if name not in missing:
                    body[name] = _async_face(name)
        derived = type(cls.__name__, (cls,), body)
        derived.__module__ = cls.__module__
        derived.__doc__ = cls.__doc__
        _DERIVED[key] = derived
    return derived
