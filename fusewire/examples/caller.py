"""Run a request's file operations with the caller's identity, per thread.

A server that runs as root and touches a real filesystem on behalf of other
users must not lend them its privileges.  :class:`CallerIdentity` switches
the *calling thread* to the request's credentials for the duration of a
``with`` block:

* ``setfsuid``/``setfsgid`` (per-thread by nature) to ``ctx.uid``/``ctx.gid``;
* ``setgroups`` through the raw system call to ``ctx.groups`` (glibc's
  ``setgroups()``, and so ``os.setgroups``, changes *every* thread of the
  process, which would leak one caller's groups into another's request);
* ``capset`` of the thread's effective set to empty for callers other than
  root, so no capability (CAP_SYS_ADMIN for ``trusted.*`` xattrs,
  CAP_SETFCAP for file capabilities, CAP_MKNOD, CAP_FOWNER ...) acts for
  them; the permitted set is kept, so the switch back works.

The backing filesystem then checks permissions, assigns ownership, applies
set-group-ID inheritance and default ACLs exactly as for the caller itself.
Everything is restored when the block ends, also on exceptions; if the
restore itself fails the thread cannot be trusted any more and
:class:`IdentityError` is raised (the caller should stop serving).

:meth:`CallerIdentity.umask` gives the thread its own umask for a create:
the caller's (``ctx.umask``, with FUSE_DONT_MASK the kernel sends the mode
unmasked), so the source filesystem applies it, or a parent's default ACL
instead of it, exactly as for the caller, with no fix-up afterwards.  It unshares the thread's
filesystem attributes (``unshare(CLONE_FS)``) on first use: the thread then
has its own cwd and umask, which fusewire's threads never change.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fusewire.types import RequestContext

__all__ = ["CallerIdentity", "IdentityError"]

# (setfsuid, setfsgid, setgroups, capget, capset) by machine
_SYSCALLS = {
    "x86_64": (122, 123, 116, 125, 126),
    "aarch64": (151, 152, 159, 90, 91),
    "riscv64": (151, 152, 159, 90, 91),
    "ppc64le": (138, 139, 81, 183, 184),
    "s390x": (215, 216, 206, 184, 185),
}
_CAP_VERSION_3 = 0x20080522
_CLONE_FS = 0x200

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class IdentityError(RuntimeError):
    """The thread's own identity could not be restored (it must stop serving)."""


def _check(ret: int) -> int:
    if ret < 0:
        code = ctypes.get_errno() or errno.EPERM
        raise OSError(code, os.strerror(code))
    return ret


class CallerIdentity:
    """Switch the current thread to a request's credentials (see the module docs).

    ``enabled`` is true when the process may switch (effective uid 0 on a
    machine whose system call numbers are known).  When it is false,
    :meth:`acting_as` does nothing: the server can only ever act as itself.
    """

    def __init__(self) -> None:
        numbers = _SYSCALLS.get(platform.machine())
        self.enabled = os.geteuid() == 0 and numbers is not None
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.groups = tuple(os.getgroups())
        self._local = threading.local()
        (self._sys_setfsuid, self._sys_setfsgid, self._sys_setgroups, sys_capget,
         self._sys_capset) = numbers or (-1, -1, -1, -1, -1)
        self._c_uid = ctypes.c_long(self.uid)
        self._c_gid = ctypes.c_long(self.gid)
        self._base_groups = (ctypes.c_uint32 * max(1, len(self.groups)))(*self.groups)
        self._cap_header = ctypes.byref(_CapHeader(_CAP_VERSION_3, 0))   # pid 0: this thread
        self._caps_full = (_CapData * 2)()
        self._caps_none = (_CapData * 2)()
        if self.enabled:
            _check(_syscall(sys_capget, self._cap_header, self._caps_full))
            for i in range(2):
                self._caps_none[i].permitted = self._caps_full[i].permitted
                self._caps_none[i].inheritable = self._caps_full[i].inheritable

    def _setgroups(self, groups: tuple[int, ...]) -> None:
        arr = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
        _check(_syscall(self._sys_setgroups, ctypes.c_long(len(groups)), arr))

    @staticmethod
    def _setfs(number: int, value: int) -> None:
        _syscall(number, ctypes.c_long(value))
        if _syscall(number, ctypes.c_long(-1)) != value:   # -1 only asks
            raise OSError(errno.EPERM, "setfsuid/setfsgid refused")

    def _restore(self) -> None:
        """Back to the server's own identity (no checks: failing leaves less privilege)."""
        _syscall(self._sys_capset, self._cap_header, self._caps_full)
        _syscall(self._sys_setfsuid, self._c_uid)
        _syscall(self._sys_setfsgid, self._c_gid)
        arr = self._base_groups
        if _syscall(self._sys_setgroups, ctypes.c_long(len(self.groups)), arr) < 0:
            raise IdentityError("cannot restore the server's own groups: "
                                f"{os.strerror(ctypes.get_errno())}")

    def _apply(self, ctx: RequestContext) -> None:
        try:
            if ctx.uid != 0:
                self._setgroups(ctx.groups)
            self._setfs(self._sys_setfsgid, ctx.gid)
            self._setfs(self._sys_setfsuid, ctx.uid)
            if ctx.uid != 0:
                _check(_syscall(self._sys_capset, self._cap_header, self._caps_none))
        except BaseException:
            self._restore()
            raise

    def enter(self, ctx: RequestContext) -> bool:
        """Switch to ``ctx``; True if :meth:`leave` must be called afterwards."""
        if (not self.enabled or (ctx.uid == self.uid and ctx.gid == self.gid)
                or getattr(self._local, "ctx", None) is not None):
            return False            # nothing to switch, or already switched (nested)
        self._apply(ctx)
        self._local.ctx = ctx
        return True

    def leave(self) -> None:
        """Undo :meth:`enter` (call it only when that returned True)."""
        self._local.ctx = None
        self._restore()

    @contextmanager
    def acting_as(self, ctx: RequestContext) -> Iterator[None]:
        """Run the block with ``ctx``'s fsuid, fsgid, groups and (no) capabilities."""
        switched = self.enter(ctx)
        try:
            yield
        finally:
            if switched:
                self.leave()

    @contextmanager
    def as_server(self) -> Iterator[None]:
        """Inside :meth:`acting_as`: the server's own identity for the block."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            yield
            return
        self._restore()
        self._local.ctx = None
        try:
            yield
        finally:
            self._apply(ctx)
            self._local.ctx = ctx

    def _own_fs(self) -> bool:
        """unshare(CLONE_FS) for this thread once; False if the kernel refused."""
        state = getattr(self._local, "own_fs", None)
        if state is None:
            state = _libc.unshare(_CLONE_FS) == 0
            self._local.own_fs = state
        return bool(state)

    @contextmanager
    def umask(self, mask: int = 0) -> Iterator[bool]:
        """Umask ``mask`` for this thread during the block; yields False if impossible.

        A filesystem that asks for FUSE_DONT_MASK gets the caller's umask in
        ``ctx.umask`` and the unmasked mode: creating with that umask lets the
        source filesystem ignore it where the parent has a default ACL.
        """
        if not self._own_fs():
            yield False
            return
        old = os.umask(mask & 0o777)
        try:
            yield True
        finally:
            os.umask(old)
