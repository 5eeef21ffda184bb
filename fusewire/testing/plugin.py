"""pytest plugin: ``fuse_ops``, ``fuse_emulator`` and ``fuse_mount`` fixtures.

Enabled through the ``pytest11`` entry point ``fusewire``.  Override
``fuse_ops`` (a fixture returning an Operations instance; MemFS by default)
in a conftest or test module to test your own filesystem; parametrize
``fuse_emulator`` indirectly with a minor (``45`` by default).

``fuse_mount`` mounts ``fuse_ops`` for real in a temporary directory with
:class:`fusewire.server.loop.Server` and yields the mountpoint path; it is
skipped with the reason when ``/dev/fuse`` cannot be opened, and always
unmounted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fusewire.operations import Operations
from fusewire.server import mount as _mount
from fusewire.testing.emulator import KernelEmulator

__all__ = ["fuse_emulator", "fuse_mount", "fuse_ops"]


@pytest.fixture
def fuse_ops() -> Operations:
    """The filesystem under test (override me); a fresh MemFS by default."""
    from fusewire.examples.memfs import MemFS

    return MemFS()


@pytest.fixture
def fuse_emulator(request: pytest.FixtureRequest, fuse_ops: Operations) -> KernelEmulator:
    """An emulated 6.18 kernel (7.45, or the minor given by indirect parametrization)."""
    minor = int(getattr(request, "param", 45))
    return KernelEmulator(fuse_ops, minor=minor)


@pytest.fixture
def fuse_mount(fuse_ops: Operations, tmp_path: Path) -> Iterator[Path]:
    """A real mount of ``fuse_ops`` served in a thread; yields the mountpoint."""
    problem = _mount.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    from fusewire.server.loop import Server, serve_in_thread

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = Server(fuse_ops, str(mnt))
    try:
        thread = serve_in_thread(server)
    except OSError as exc:
        server.close(unmount=True)
        pytest.skip(f"cannot mount FUSE at {mnt}: {exc}")
    try:
        yield mnt
    finally:
        server.stop()
        server.close(unmount=True)
        thread.join(10)
