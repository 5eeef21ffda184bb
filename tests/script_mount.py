"""Mount helpers for tests whose server is a script (examples/, compat shims), not the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import conftest
import pytest

from fusewire.server.mount import dev_fuse_problem


class ScriptServer(conftest.FuseServer):
    """``python SCRIPT ARGS...`` serving ``mountpoint``; torn down like FuseServer."""

    def __init__(self, argv: list[str], mountpoint: Path, logdir: Path,
                 pythonpath: list[str] | None = None) -> None:
        self.mountpoint = mountpoint
        self.errfile = logdir / f"server-{mountpoint.name}.stderr"
        self.argv = [sys.executable, *argv]
        self._err = open(self.errfile, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(self.argv, env=conftest.server_env(pythonpath), cwd="/",
                                     stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err)
        self._watchdog = None
        self.watchdog_fired = False


def start_script(argv: list[str], mountpoint: Path, logdir: Path,
                 pythonpath: list[str] | None = None) -> ScriptServer:
    """Start ``python ARGV`` (it mounts ``mountpoint``); wait until the mount answers."""
    problem = dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mountpoint.mkdir(parents=True, exist_ok=True)
    srv = ScriptServer(argv, mountpoint, logdir, pythonpath)
    srv.wait_ready()
    return srv
