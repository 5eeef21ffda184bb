"""A ready hypothesis state machine that drives an Operations through the emulator.

``make_state_machine(ops_factory, minor=45)`` returns a
:class:`~hypothesis.stateful.RuleBasedStateMachine` subclass; its ``TestCase``
attribute is a ``unittest.TestCase`` pytest collects::

    TestMemFS = make_state_machine(MemFS, minor=40).TestCase

Rules create, write, read, list, rename and remove files and directories,
forget and evict cached inodes, interrupt and resend requests.  Invariants:
every request that needs a reply got exactly one (the emulator checks its
size), the kernel's and the server's lookup counts agree and are never
negative, nothing stays in flight, and forgotten nodeids are never sent again
(the filesystem keeps working after re-lookup).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fusewire.opcodes.flags import Opcode
from fusewire.operations import Operations
from fusewire.structs.codec import CODECS
from fusewire.testing.emulator import KernelEmulator

__all__ = ["FuseStateMachine", "make_state_machine"]

_NAMES = st.sampled_from(["a", "b", "c", "d"])
_DIRS = st.sampled_from(["", "/d", "/e"])
_TOLERATED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
              errno.EINVAL, errno.EBUSY, errno.ENODATA, errno.EPERM}


class FuseStateMachine(RuleBasedStateMachine):
    """Base class; :func:`make_state_machine` binds ``ops_factory`` and ``minor``."""

    ops_factory: Callable[[], Operations]
    minor: int = 45

    def __init__(self) -> None:
        super().__init__()
        self.emu = KernelEmulator(self.ops_factory(), minor=self.minor)
        self.model: dict[str, bytes | None] = {}  # path -> contents (None: directory)

    def _try(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            assert exc.errno in _TOLERATED, f"{fn.__name__}{args}: {exc}"
            return None

    @rule(parent=_DIRS, name=_NAMES)
    def mkdir(self, parent: str, name: str) -> None:
        self._try(self.emu.mkdir, f"{parent}/{name}" if parent else f"/{name}")

    @rule(parent=_DIRS, name=_NAMES, data=st.binary(max_size=64), off=st.integers(0, 16))
    def create_write(self, parent: str, name: str, data: bytes, off: int) -> None:
        path = f"{parent}/{name}"
        h = self._try(self.emu.open, path, os.O_CREAT | os.O_RDWR)
        if h is None:
            return
        try:
            assert self.emu.write(h, data, off) == len(data)
            if data:
                assert self.emu.read(h, len(data), off) == data
        finally:
            self.emu.close(h)

    @rule(parent=_DIRS, name=_NAMES)
    def read(self, parent: str, name: str) -> None:
        h = self._try(self.emu.open, f"{parent}/{name}", os.O_RDONLY)
        if h is not None:
            size = self.emu.fstat(h).size
            assert len(self.emu.read(h, size + 10, 0)) == size
            self.emu.close(h)

    @rule(parent=_DIRS, name=_NAMES)
    def unlink(self, parent: str, name: str) -> None:
        self._try(self.emu.unlink, f"{parent}/{name}")

    @rule(parent=_DIRS, name=_NAMES)
    def rmdir(self, parent: str, name: str) -> None:
        self._try(self.emu.rmdir, f"{parent}/{name}")

    @rule(p1=_DIRS, n1=_NAMES, p2=_DIRS, n2=_NAMES, flags=st.sampled_from([0, 0, 1, 2]))
    def rename(self, p1: str, n1: str, p2: str, n2: str, flags: int) -> None:
        self._try(self.emu.rename, f"{p1}/{n1}", f"{p2}/{n2}", flags)

    @rule(parent=_DIRS)
    def readdir(self, parent: str) -> None:
        names = self._try(self.emu.readdir, parent or "/")
        if names is not None:
            assert len(names) == len(set(names))
            for n in names:
                self._try(self.emu.stat, f"{parent}/{n.decode()}")

    @rule(data=st.data())
    def forget_some(self, data: st.DataObject) -> None:
        if self.emu.nlookup:
            nodeid = data.draw(st.sampled_from(sorted(self.emu.nlookup)))
            if not self.emu._in_use(nodeid):
                n = data.draw(st.integers(1, self.emu.nlookup[nodeid]))
                self.emu.forget(nodeid, n)
                if nodeid not in self.emu.nlookup:
                    assert nodeid not in self.emu.dcache.values()

    @rule()
    def evict(self) -> None:
        self.emu.evict_all()

    @rule()
    def inc_epoch(self) -> None:
        self.emu.inc_epoch()

    @rule(resend=st.booleans())
    def interrupted_getattr(self, resend: bool) -> None:
        p = self.emu.submit(Opcode.GETATTR, 1, arg=CODECS["getattr_in"].zero())
        self.emu.send_interrupt(p.unique)
        if resend and self.emu.minor >= 40:
            self.emu.resend_pending()
        err, _reply = self.emu.complete(p)
        assert err in (0, errno.EINTR)

    @invariant()
    def counts_agree(self) -> None:
        kernel = self.emu.nlookup
        assert all(v > 0 for v in kernel.values())
        assert self.emu.dispatcher.nodes.counts == kernel
        assert not self.emu.conn.inflight
        assert not self.emu.pending
        assert self.emu.open_handles() == 0
        for nodeid in self.emu.dcache.values():
            assert nodeid in kernel
        assert self.emu.replies.get(Opcode.FORGET, 0) == 0
        assert self.emu.replies.get(Opcode.BATCH_FORGET, 0) == 0


def make_state_machine(ops_factory: Callable[[], Operations],
                       minor: int = 45) -> type[FuseStateMachine]:
    """A state machine class driving ``ops_factory()`` through a kernel at 7.``minor``."""
    name = f"FuseStateMachine_{getattr(ops_factory, '__name__', 'ops')}_{minor}"
    return type(name, (FuseStateMachine,), {"ops_factory": staticmethod(ops_factory),
                                            "minor": minor})
