"""libc bindings passthrough needs that :mod:`os` lacks (ctypes).

The ``*at()`` calls with flags Python does not expose (``AT_EMPTY_PATH`` on
``fchownat``/``utimensat``/``linkat``), ``renameat2``, ``fallocate``,
``name_to_handle_at``/``open_by_handle_at``, ``statx`` and the ``readdir(3)``
family used to list a directory with its cookies.  Each binding raises nothing:
callers check the return value (``_c`` turns a negative one into OSError).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_STATX_BTIME = 0x800
_MAX_HANDLE_SZ = 128

_libc = ctypes.CDLL(None, use_errno=True)


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _os_error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


def _c(ret: int) -> int:
    if ret < 0:
        raise _os_error()
    return ret


def _bind(name: str, argtypes: list[type]) -> Callable[..., int]:
    fn = getattr(_libc, name)
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_renameat2 = _bind("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_uint])
_fchownat = _bind("fchownat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                               ctypes.c_uint32, ctypes.c_int])
_utimensat = _bind("utimensat", [ctypes.c_int, ctypes.c_char_p,
                                 ctypes.POINTER(_Timespec), ctypes.c_int])
_linkat = _bind("linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_int])
_fallocate = _bind("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                 ctypes.c_int64])
_name_to_handle_at = _bind("name_to_handle_at", [ctypes.c_int, ctypes.c_char_p,
                                                 ctypes.c_char_p,
                                                 ctypes.POINTER(ctypes.c_int), ctypes.c_int])
_open_by_handle_at = _bind("open_by_handle_at", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int])
_fdopendir = _libc.fdopendir
_fdopendir.argtypes = [ctypes.c_int]
_fdopendir.restype = ctypes.c_void_p
_readdir_c = _libc.readdir
_readdir_c.argtypes = [ctypes.c_void_p]
_readdir_c.restype = ctypes.POINTER(_Dirent)
_seekdir = _libc.seekdir
_seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_seekdir.restype = None
_closedir = _libc.closedir
_closedir.argtypes = [ctypes.c_void_p]
_statx = _bind("statx", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                         ctypes.c_char_p])


