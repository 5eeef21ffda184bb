"""Cleaning up after tests and benchmarks of mounts: by path and by pid, never by name.

A recoverable mount involves several processes (the keeper, its server, a
warm spare); a test that started the keeper ends exactly those::

    pids = {keeper.pid} | children(keeper.pid)
    unmount_and_kill(mountpoint, pids)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

from fusewire.server import mount as _mount

__all__ = ["children", "unmount_and_kill"]


def children(pid: int) -> set[int]:
    """The direct children of ``pid`` (all its threads'), from /proc; empty if it is gone."""
    out: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def unmount_and_kill(mountpoint: str | os.PathLike[str], pids: Iterable[int]) -> None:
    """Lazily unmount ``mountpoint`` (if mounted), then SIGKILL each of ``pids``."""
    try:
        _mount.unmount(os.fspath(mountpoint), lazy=True)
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
