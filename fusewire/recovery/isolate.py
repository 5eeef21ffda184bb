"""Upgrade-only filesystems: keep old nodeids and fh values away from new objects.

A filesystem that declares no recovery contract starts from a fresh object
in every successor, and chooses its inode numbers and fh values afresh: the
new server's inode 5 is not the old server's inode 5, and its fh 3 is not the
old fh 3.  The kernel, meanwhile, still holds the old ones (open files, a
cwd, cached names).  Passing them through would let an old fd read another
file's data.

So a successor wraps such a filesystem in :func:`isolate`: the wire nodeids
and fh values it hands out are fresh numbers above every nodeid and fh the
journal shows the kernel holding (the root stays 1), mapped to the
filesystem's own numbers; a request naming an old nodeid fails with ESTALE,
an old fh with EBADF.  Nothing is mapped on the first server (its numbers
are the filesystem's own), so a mount that never restarted pays nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fusewire.operations import Operations
from fusewire.types import EntryAttributes, FileInfo, FUSEError

__all__ = ["IdMap", "isolate"]

_ROOT = 1
_INODE_ARGS = frozenset({"inode", "parent_inode", "parent_inode_old", "parent_inode_new",
                         "new_parent_inode", "inode_out"})
_FH_ARGS = frozenset({"fh", "fh_in", "fh_out"})
#: handlers whose entry reply counts one lookup
_COUNTED = frozenset({"lookup", "mknod", "mkdir", "symlink", "link", "lookup_inode"})
_CREATED = frozenset({"create", "tmpfile"})
_RELEASES = frozenset({"release", "releasedir"})
_NO_WRAP = frozenset({"init", "destroy", "forget", "readdir", "opendir", "handle_of",
                      "inode_for_handle"})


class IdMap:
    """Wire nodeids/fh values <-> the filesystem's, allocated above ``base``s."""

    def __init__(self, base_node: int, base_fh: int) -> None:
        self.lock = threading.Lock()
        self.w2f: dict[int, int] = {_ROOT: _ROOT}
        self.f2w: dict[int, int] = {_ROOT: _ROOT}
        self.counts: dict[int, int] = {}
        self.next_node = max(base_node, _ROOT + 1)
        self.fh_w2f: dict[int, int] = {}
        self.next_fh = max(base_fh, 1)

    def node_in(self, wire: int) -> int:
        try:
            return self.w2f[wire]
        except KeyError:
            raise FUSEError(errno.ESTALE) from None

    def node_out(self, ino: int, count: int = 0) -> int:
        if not ino:
            return 0
        with self.lock:
            wire = self.f2w.get(ino)
            if wire is None:
                wire = self.next_node
                self.next_node += 1
                self.f2w[ino] = wire
                self.w2f[wire] = ino
            if count and wire != _ROOT:
                self.counts[wire] = self.counts.get(wire, 0) + count
            return wire

    def forget(self, wire: int, n: int) -> int | None:
        """The filesystem's inode for a FORGET of ``wire``; drops the mapping at zero."""
        with self.lock:
            ino = self.w2f.get(wire)
            if ino is None or wire == _ROOT:
                return ino
            left = self.counts.get(wire, 0) - n
            if left > 0:
                self.counts[wire] = left
            else:
                self.counts.pop(wire, None)
                del self.w2f[wire]
                self.f2w.pop(ino, None)
            return ino

    def fh_in(self, wire: int | None) -> int | None:
        if wire is None:
            return None
        try:
            return self.fh_w2f[wire]
        except KeyError:
            raise FUSEError(errno.EBADF) from None

    def fh_out(self, fh: int) -> int:
        with self.lock:
            wire = self.next_fh
            self.next_fh += 1
            self.fh_w2f[wire] = fh
            return wire

    def entry(self, attr: EntryAttributes, count: int = 0) -> EntryAttributes:
        out = attr.copy()
        out.st_ino = self.node_out(attr.st_ino, count)
        return out

    def info(self, fi: FileInfo) -> FileInfo:
        return dataclasses.replace(fi, fh=self.fh_out(fi.fh))


class _Token:
    """A ReaddirToken whose entries carry wire nodeids."""

    def __init__(self, token: Any, ids: IdMap) -> None:
        self._token = token
        self._ids = ids

    def add(self, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
        counted = self._token.plus and name not in (b".", b"..")
        out = self._ids.entry(attr)
        ok = bool(self._token.add(name, out, next_id))
        if ok and counted and out.st_ino:
            self._ids.node_out(attr.st_ino, 1)
        return ok

    def add_name(self, name: bytes, ino: int, mode: int, next_id: int) -> bool:
        return bool(self._token.add_name(name, self._ids.node_out(ino), mode, next_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._token, name)


class _Notifier:
    """The server's notifier, taking the filesystem's inode numbers."""

    def __init__(self, inner: Any, ids: IdMap) -> None:
        self._inner = inner
        self._ids = ids

    def _wire(self, ino: int) -> int | None:
        return self._ids.f2w.get(ino)

    def notify_inval_inode(self, inode: int, off: int = 0, length: int = 0) -> int:
        w = self._wire(inode)
        return errno.ENOENT if w is None else int(self._inner.notify_inval_inode(w, off, length))

    def notify_inval_entry(self, parent_inode: int, name: bytes,
                           expire_only: bool = False) -> int:
        w = self._wire(parent_inode)
        return errno.ENOENT if w is None else int(
            self._inner.notify_inval_entry(w, name, expire_only))

    def notify_delete(self, parent_inode: int, inode: int, name: bytes) -> int:
        p, w = self._wire(parent_inode), self._wire(inode)
        if p is None or w is None:
            return errno.ENOENT
        return int(self._inner.notify_delete(p, w, name))

    def notify_store(self, inode: int, offset: int, data: bytes) -> int:
        w = self._wire(inode)
        return errno.ENOENT if w is None else int(self._inner.notify_store(w, offset, data))

    def notify_retrieve(self, inode: int, offset: int, size: int,
                        timeout: float = 5.0) -> bytes | None:
        w = self._wire(inode)
        if w is None:
            return None
        got: bytes | None = self._inner.notify_retrieve(w, offset, size, timeout)
        return got

    def notify_prune(self, inodes: Sequence[int]) -> int:
        ws = [w for w in (self._wire(i) for i in inodes) if w is not None]
        return int(self._inner.notify_prune(ws))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _wrap(name: str, ids: IdMap, is_async: bool) -> Callable[..., Any]:
    params = list(inspect.signature(getattr(Operations, name)).parameters)[1:]
    nodes = [i for i, p in enumerate(params) if p in _INODE_ARGS]
    fhs = [i for i, p in enumerate(params) if p in _FH_ARGS]

    def translate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        a = list(args)
        for i in nodes:
            if i < len(a):
                a[i] = ids.node_in(a[i])
        for i in fhs:
            if i < len(a):
                a[i] = ids.fh_in(a[i])
        for k in kwargs:
            if k in _INODE_ARGS:
                kwargs[k] = ids.node_in(kwargs[k])
            elif k in _FH_ARGS:
                kwargs[k] = ids.fh_in(kwargs[k])
        return a

    def result(r: Any) -> Any:
        if name in _CREATED:
            fi, attr = r
            return ids.info(fi), ids.entry(attr, 1)
        if isinstance(r, EntryAttributes):
            return ids.entry(r, 1 if name in _COUNTED else 0)
        if isinstance(r, FileInfo):
            return ids.info(r)
        return r

    def release(args: tuple[Any, ...]) -> bool:
        """RELEASE of a handle from before the takeover: nothing to do."""
        return bool(name in _RELEASES and args and args[0] not in ids.fh_w2f)

    def done(args: tuple[Any, ...]) -> None:
        if name in _RELEASES and args:
            ids.fh_w2f.pop(args[0], None)

    def sync(self: _Isolated, *args: Any, **kwargs: Any) -> Any:
        if release(args):
            return None
        r = result(getattr(self._inner, name)(*translate(args, kwargs), **kwargs))
        done(args)
        return r

    async def coro(self: _Isolated, *args: Any, **kwargs: Any) -> Any:
        if release(args):
            return None
        r = result(await getattr(self._inner, name)(*translate(args, kwargs), **kwargs))
        done(args)
        return r

    return coro if is_async else sync


class _Isolated(Operations):
    _inner: Operations
    _ids: IdMap

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        if key == "notifier":       # the server's: hand the filesystem a translating one
            self._inner.notifier = None if value is None else _Notifier(value, self._ids)


def isolate(ops: Operations, base_node: int, base_fh: int) -> Operations:
    """``ops`` behind fresh wire numbers above ``base_node`` / ``base_fh`` (see module doc)."""
    ids = IdMap(base_node, base_fh)
    cls = type(ops)
    body: dict[str, Any] = {"__doc__": f"{cls.__name__} behind fresh nodeids and fh values"}
    for name, base in vars(Operations).items():
        if name.startswith("_") or not callable(base) or name in _NO_WRAP:
            continue
        impl = getattr(cls, name, None)
        if impl is base:
            continue            # not implemented: the dispatcher keeps its ENOSYS rule
        body[name] = _wrap(name, ids, inspect.iscoroutinefunction(impl))

    def forget(self: _Isolated, inode_list: Sequence[tuple[int, int]]) -> None:
        mine = [(ino, n) for w, n in inode_list
                if (ino := ids.forget(w, n)) is not None and w != _ROOT]
        if mine:
            self._inner.forget(mine)

    def readdir(self: _Isolated, fh: int, start_id: int, token: Any) -> None:
        inner_fh = ids.fh_in(fh)
        assert inner_fh is not None
        proxy_token: Any = _Token(token, ids)
        self._inner.readdir(inner_fh, start_id, proxy_token)

    def opendir(self: _Isolated, inode: int, ctx: Any) -> int:
        return ids.fh_out(self._inner.opendir(ids.node_in(inode), ctx))

    def init(self: _Isolated) -> None:
        self._inner.init()

    def destroy(self: _Isolated) -> None:
        self._inner.destroy()

    for name, fn in (("forget", forget), ("readdir", readdir), ("opendir", opendir),
                     ("init", init), ("destroy", destroy)):
        if getattr(cls, name) is not getattr(Operations, name):
            body[name] = fn
    proxy_cls = type(f"Isolated{cls.__name__}", (_Isolated,), body)
    proxy: _Isolated = proxy_cls()
    proxy._inner = ops
    proxy._ids = ids
    for name, value in vars(Operations).items():
        if not name.startswith("_") and not callable(value) and name != "notifier":
            setattr(proxy, name, getattr(ops, name))
    return proxy
