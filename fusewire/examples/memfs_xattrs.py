"""MemFS's extended attributes: user.*, trusted.*, security.* and POSIX ACLs.

One job: the xattr operations, with their permission rules and the bytes they
count against ``max_bytes``.  With ACLs on (``MemFS(acl=True)``) the
``system.posix_acl_access`` and ``system.posix_acl_default`` values are
validated and stored like other xattrs, and setting an access ACL sets the
mode bits it implies (:mod:`fusewire.examples.memfs_acl` has the rules);
with ACLs off they are EOPNOTSUPP.  :class:`MemFSXattrs` is a mixin of
:class:`fusewire.examples.memfs.MemFS`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fusewire.examples.memfs_acl import (
    ACL_ACCESS,
    ACL_DEFAULT,
    acl_equiv_mode,
    decode_acl,
    encode_acl,
)
from fusewire.examples.memfs_nodes import (
    _XATTR_PREFIXES,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    _err,
    _in_group,
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
    enable_acl: bool

    if TYPE_CHECKING:
        def _get(self, ino: int) -> _Inode: ...
        def _need(self, node: _Inode, want: int, ctx: RequestContext) -> None: ...
        def _immutable(self, node: _Inode, *, append_ok: bool = False) -> None: ...

    def _check_xattr(self, node: _Inode, name: bytes, ctx: RequestContext,
                     write: bool) -> None:
        if not name or len(name) > XATTR_NAME_MAX:
            raise _err(errno.ERANGE)
        if name.startswith(b"system."):
            # Without ACLs, refusing them makes tools (cp -a, setfacl) fall back to
            # chmod instead of storing an ACL that silently fails to change the mode.
            if not self.enable_acl or name not in (ACL_ACCESS, ACL_DEFAULT):
                raise _err(errno.EOPNOTSUPP)
            if write and ctx.uid not in (0, node.uid):
                raise _err(errno.EPERM)       # only the owner (or CAP_FOWNER) sets ACLs
            return
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
            if name.startswith(b"system."):
                self._set_acl(node, name, value, ctx)
                return
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

    def _put_xattr(self, node: _Inode, name: bytes, value: bytes | None) -> None:
        """Store ``value`` under ``name``, or drop ``name`` where it is None (ENOSPC
        where the memory cap forbids it)."""
        old = node.xattrs.get(name) if node.xattrs is not None else None
        growth = (0 if value is None else len(name) + len(value)) \
            - (0 if old is None else len(name) + len(old))
        if growth > 0 and self._used + growth > self.max_bytes:
            raise _err(errno.ENOSPC)
        if value is None:
            if node.xattrs is not None:
                node.xattrs.pop(name, None)
                if not node.xattrs:
                    node.xattrs = None
        else:
            if node.xattrs is None:
                node.xattrs = {}
            node.xattrs[name] = value
        self._used += growth

    def _set_acl(self, node: _Inode, name: bytes, value: bytes, ctx: RequestContext) -> None:
        """setxattr of an ACL: EINVAL unless valid; no entries remove it; an access
        ACL sets the mode bits and is dropped where the mode says it all."""
        entries = decode_acl(value)
        if name == ACL_DEFAULT:
            if not stat.S_ISDIR(node.mode):
                if entries:
                    raise _err(errno.EACCES)
                return
            self._put_xattr(node, ACL_DEFAULT, encode_acl(entries) if entries else None)
        elif entries:
            mode, equivalent = acl_equiv_mode(entries, node.mode)
            if ctx.uid != 0 and not _in_group(ctx, node.gid):
                mode &= ~stat.S_ISGID         # as chmod(2) by a non-member
            self._put_xattr(node, ACL_ACCESS, None if equivalent else encode_acl(entries))
            node.mode = mode
        else:
            self._put_xattr(node, ACL_ACCESS, None)
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
            if name.startswith(b"system."):
                # removing an ACL that is not there succeeds (as on tmpfs)
                self._put_xattr(node, name, None)
                node.ctime = _now()
                return
            if node.xattrs is None or name not in node.xattrs:
                raise _err(errno.ENODATA)
            self._used -= len(name) + len(node.xattrs.pop(name))
            if not node.xattrs:
                node.xattrs = None
            node.ctime = _now()
