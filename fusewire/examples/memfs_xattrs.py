"""MemFS's extended attributes: user.*, trusted.* and security.* names.

One job: the xattr operations, with their permission rules and the bytes they
count against ``max_bytes``.  :class:`MemFSXattrs` is a mixin of
:class:`fusewire.examples.memfs.MemFS`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fusewire.examples.memfs_nodes import (
    _XATTR_PREFIXES,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    _err,
    _Inode,
    _now,
)

if TYPE_CHECKING:
    from fusewire.types import RequestContext

__all__ = ["MemFSXattrs"]


class MemFSXattrs:
    """Extended-attribute methods of MemFS (a mixin; MemFS sets the attributes)."""

    _used: int
    max_bytes: int
    _lock: threading.RLock

    if TYPE_CHECKING:
        def _get(self, ino: int) -> _Inode: ...
        def _need(self, node: _Inode, want: int, ctx: RequestContext) -> None: ...
        def _immutable(self, node: _Inode, *, append_ok: bool = False) -> None: ...

    def _check_xattr(self, node: _Inode, name: bytes, ctx: RequestContext,
                     write: bool) -> None:
        if not name or len(name) > XATTR_NAME_MAX:
            raise _err(errno.ERANGE)
        if name.startswith(b"system."):
            # POSIX ACLs are not evaluated by memfs: refusing them makes tools
            # (cp -a, setfacl) fall back to chmod instead of storing an ACL
            # that silently fails to change the mode.
            raise _err(errno.EOPNOTSUPP)
        if not name.startswith(_XATTR_PREFIXES):
            raise _err(errno.EOPNOTSUPP)
        if name.startswith(b"trusted.") and ctx.uid != 0:
            raise _err(errno.EPERM if write else errno.ENODATA)
        if name.startswith(b"security.") and write and ctx.uid != 0:
            raise _err(errno.EPERM)       # e.g. security.capability needs CAP_SETFCAP
        if name.startswith(b"user."):
            if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
                raise _err(errno.EPERM if write else errno.ENODATA)
            if stat.S_ISDIR(node.mode) and node.mode & stat.S_ISVTX and write \
                    and ctx.uid not in (0, node.uid):
                raise _err(errno.EPERM)
            self._need(node, os.W_OK if write else os.R_OK, ctx)

    def setxattr(self, inode: int, name: bytes, value: bytes, flags: int,
                 ctx: RequestContext) -> None:
        """Set an xattr (XATTR_CREATE: EEXIST if present, XATTR_REPLACE: ENODATA if not)."""
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise _err(errno.EINVAL)
        if len(value) > XATTR_SIZE_MAX:
            raise _err(errno.E2BIG)
        with self._lock:
            node = self._get(inode)
            self._check_xattr(node, name, ctx, True)
            self._immutable(node)
            present = node.xattrs is not None and name in node.xattrs
            if flags & XATTR_CREATE and present:
                raise _err(errno.EEXIST)
            if flags & XATTR_REPLACE and not present:
                raise _err(errno.ENODATA)
            old = len(name) + len(node.xattrs[name]) if node.xattrs and present else 0
            growth = len(name) + len(value) - old
            if growth > 0 and self._used + growth > self.max_bytes:
                raise _err(errno.ENOSPC)
            if node.xattrs is None:
                node.xattrs = {}
            node.xattrs[bytes(name)] = bytes(value)
            self._used += growth
            node.ctime = _now()

    def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        """Return an xattr's value or raise ENODATA."""
        with self._lock:
            node = self._get(inode)
            if node.xattrs is None and name.startswith(b"security.") \
                    and len(name) <= XATTR_NAME_MAX:
                # the kernel's security.capability probe before a new file's first
                # write: _check_xattr lets every such read through, so ENODATA now
                raise _err(errno.ENODATA)
            self._check_xattr(node, name, ctx, False)
            if node.xattrs is None or name not in node.xattrs:
                raise _err(errno.ENODATA)
            return node.xattrs[name]

    def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        """List xattr names (trusted.* only for root)."""
        with self._lock:
            node = self._get(inode)
            if not node.xattrs:
                return []
            return [n for n in node.xattrs
                    if ctx.uid == 0 or not n.startswith(b"trusted.")]

    def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        """Remove an xattr or raise ENODATA."""
        with self._lock:
            node = self._get(inode)
            self._check_xattr(node, name, ctx, True)
            self._immutable(node)
            if node.xattrs is None or name not in node.xattrs:
                raise _err(errno.ENODATA)
            self._used -= len(name) + len(node.xattrs.pop(name))
            if not node.xattrs:
                node.xattrs = None
            node.ctime = _now()
