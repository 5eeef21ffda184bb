"""Passthrough's node descriptors, opened lazily by file handle and bounded.

A node keeps the source's file handle (``name_to_handle_at``); its ``O_PATH``
descriptor is opened on first use with ``open_by_handle_at`` (as the server:
that needs CAP_DAC_READ_SEARCH) and checked against the node's
``(st_dev, st_ino)``.  When no handler is running (the count kept by the
handler wrapper drops to zero) and more than ``limit`` node descriptors are
open, the cache closes idle ones down to half the limit, so a tree with far
more nodes than the descriptor limit can be served.  Closing only at that
quiet point means no handler ever sees a descriptor of its node closed (and
its number reused) under it.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from fusewire.examples.passthrough_libc import _open_by_handle_at

__all__ = ["DescriptorCache"]


class _Lazy(Protocol):
    """What the cache needs of a node (see passthrough_nodes._Node)."""

    raw_fd: int
    handle: bytes | None
    key: tuple[int, int]


class DescriptorCache:
    """Open-on-demand node descriptors, at most ``limit`` kept while idle."""

    def __init__(self, limit: int, mount_fd: int,
                 as_server: Callable[[], AbstractContextManager[object]]) -> None:
        self.limit = max(16, limit)
        self._mount_fd = mount_fd
        self._as_server = as_server
        self._lock = threading.Lock()
        self._active = 0
        #: nodes whose descriptor is open and may be closed again: id(node) -> node
        self._open: dict[int, _Lazy] = {}
        self.reopened = 0

    def track(self, node: _Lazy) -> None:
        """``node`` (with a handle and an open descriptor) may be closed when idle."""
        with self._lock:
            self._open[id(node)] = node

    def discard(self, node: _Lazy) -> int:
        """``node`` is gone: its descriptor (-1 if closed) for the caller to close."""
        with self._lock:
            self._open.pop(id(node), None)
            fd, node.raw_fd = node.raw_fd, -1
        return fd

    def reopen(self, node: _Lazy) -> int:
        """The node's descriptor, opened again from its handle (ESTALE if it is gone)."""
        handle = node.handle
        if handle is None:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        with self._as_server():
            fd = _open_by_handle_at(self._mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if (st.st_dev, st.st_ino) != node.key:
            os.close(fd)
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        with self._lock:
            if node.raw_fd >= 0:          # another handler reopened it meanwhile
                current = node.raw_fd
            else:
                node.raw_fd = fd
                self._open[id(node)] = node
                self.reopened += 1
                return fd
        os.close(fd)
        return current

    def enter(self) -> None:
        """A handler starts (no descriptor is closed until every one has left)."""
        with self._lock:
            self._active += 1

    def leave(self) -> None:
        """A handler ends; the last one out trims the idle descriptors."""
        with self._lock:
            self._active -= 1
        self.trim_if_idle()

    def trim_if_idle(self) -> None:
        """Close idle descriptors beyond the limit, if no handler is running now."""
        close: list[int] = []
        with self._lock:
            if self._active == 0 and len(self._open) > self.limit:
                keep = self.limit // 2
                for key in list(self._open)[:len(self._open) - keep]:
                    node = self._open.pop(key)
                    if node.raw_fd >= 0:
                        close.append(node.raw_fd)
                        node.raw_fd = -1
        for fd in close:
            os.close(fd)

    def open_count(self) -> int:
        """How many node descriptors the cache holds open now."""
        return len(self._open)

    def close(self) -> None:
        """Close the mount descriptor (the nodes' own are closed by their owner)."""
        os.close(self._mount_fd)
