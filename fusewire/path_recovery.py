"""Crash recovery of :class:`fusewire.PathAdapter` ("handles" mode): the hooks, as a mixin.

A node's handle is its parent's nodeid and its first name; a rename journals
the renamed node's new handle (``key_changed``) before the reply; open files
are reopened by path with their original flags (docs/recovery.md).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fusewire.types import (
    FUSEError,
)

if TYPE_CHECKING:
    pass

from fusewire.path_api import PathOperations
from fusewire.path_nodes import _HIDDEN_PREFIX, _ROOT, _DirHandle, _Node

__all__ = ["PathRecovery"]

_HANDLE_MAGIC = b"FWP2"
#: handle_of: magic, nodeid, parent nodeid; the name follows
_HANDLE = struct.Struct("<4sQQ")

log = logging.getLogger("fusewire.pathops")


def _handle(nodeid: int, parent: int, name: bytes) -> bytes:
    """The handle of a node known as ``name`` in ``parent`` (what :meth:`handle_of` gives)."""
    return _HANDLE.pack(_HANDLE_MAGIC, nodeid, parent) + name


class PathRecovery:
    """The "handles" recovery hooks of :class:`fusewire.PathAdapter` (a mixin, first in
    its bases, so these override :class:`~fusewire.Operations`' defaults)."""

    if TYPE_CHECKING:
        fs: PathOperations
        _lock: threading.RLock
        _nodes: dict[int, _Node]
        _children: dict[tuple[int, bytes], int]
        _by_ident: dict[int, int]
        _hidden: set[tuple[int, bytes]]
        _next_node: int
        _files: dict[int, tuple[int, int]]
        _dirs: dict[int, _DirHandle]
        _next_fh: int
        key_changed: Callable[..., None] | None

        def _call(self, fn: Callable[..., Any], *args: Any) -> Any: ...
        def _child_path(self, parent: int, name: bytes) -> str: ...
        def _spath(self, nodeid: int) -> str: ...

    def handle_of(self, inode: int) -> bytes | None:
        """The node's first name as (parent nodeid, name): a handle a rename changes
        only for the renamed node itself (its children keep theirs)."""
        with self._lock:
            node = self._nodes.get(inode)
            if node is None or not node.links:
                return None
            parent, name = node.links[0]
            return _handle(inode, parent, name)

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
                out[node.nodeid] = _handle(node.nodeid, to[0], to[1])
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


