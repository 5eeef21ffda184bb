"""Recovery under systemd: the service's fd store holds what a keeper would.

``fusewire fdstore FS [SOURCE] MOUNTPOINT [-o OPTS]`` runs as the main process
of a ``Type=notify`` service (see docs/recovery.md for the unit).  On its
first start (no ``$LISTEN_FDS``) it mounts, creates the journal memfd, and
hands both to the service manager over ``$NOTIFY_SOCKET`` *before* it serves
anything::

    FDSTORE=1 / FDNAME=fuse        + the /dev/fuse fd   (SCM_RIGHTS)
    FDSTORE=1 / FDNAME=journal.0   + the journal memfd
    FDSTORE=1 / FDNAME=fsdata.N    + the filesystem's recovery_fds, if any

The manager keeps duplicates of both.  When the service dies (or is
restarted) the manager starts it again with the stored fds at 3, 4, ...
(``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID``: the sd_listen_fds
protocol); the new process takes the connection over from the same open
file and the same journal, exactly as a successor does from a keeper.

A compaction writes a new memfd; it is stored as ``journal.N+1`` first and
only then is ``journal.N`` removed (FDSTOREREMOVE), so a crash between the
two leaves both, and a restart takes the highest N.  When the filesystem
is unmounted the server removes its fds from the store and exits 0.
SIGTERM (``systemctl restart``) is a graceful hand-over: finish the request
in hand, compact, mark the journal, exit.
"""

from __future__ import annotations

import argparse
import array
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from fusewire.recovery import journal as jn
from fusewire.recovery.takeover import Control, CrashHook, take_over

__all__ = ["FdStoreControl", "listen_fds", "notify", "run_fdstore"]

log = logging.getLogger("fusewire.recovery")

SD_LISTEN_FDS_START = 3
FUSE_NAME = "fuse"
JOURNAL_PREFIX = "journal."
#: the filesystem's recovery_fds (memfs's data memfd), in order
FS_PREFIX = "fsdata."


def notify(state: str, fds: Sequence[int] = ()) -> bool:
    """sd_notify: send ``state`` (and ``fds``, SCM_RIGHTS) to ``$NOTIFY_SOCKET``.

    Returns False when there is no service manager to tell.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path[0] == "@":                          # abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(path)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
            if fds else []
        sock.sendmsg([state.encode()], anc)
    return True


def listen_fds(unset: bool = True) -> list[tuple[str, int]]:
    """The fds passed by the service manager: ``[(name, fd), ...]`` (sd_listen_fds).

    Only when ``$LISTEN_PID`` is this process; the fds start at 3 and are made
    close-on-exec.  ``unset`` removes the variables so children do not see them.
    """
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES", "")
    if unset:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
    if not (pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        return []
    labels = names.split(":") if names else []
    out = []
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        out.append((labels[i] if i < len(labels) else "unknown", fd))
    return out


class FdStoreControl(Control):
    """Reports to the service manager instead of a keeper."""

    def __init__(self, generation: int, mode_hint: str = "", fs_fds: int = 0) -> None:
        self.generation = generation
        self.mode_hint = mode_hint
        self.fs_fds = fs_fds

    def ready(self, info: dict[str, Any]) -> None:
        notify(f"READY=1\nSTATUS=serving ({self.mode_hint}{info.get('recovery')} recovery, "
               f"takeover {info.get('takeover_ms')} ms, journal.{self.generation})")

    def swap_journal(self, fd: int) -> None:
        new = self.generation + 1
        notify(f"FDSTORE=1\nFDNAME={JOURNAL_PREFIX}{new}", [fd])
        notify(f"FDSTOREREMOVE=1\nFDNAME={JOURNAL_PREFIX}{self.generation}")
        self.generation = new

    def handover(self) -> None:
        notify("STOPPING=1\nSTATUS=handing over to the next start")

    def keep(self, fds: Sequence[int]) -> None:
        for i, fd in enumerate(fds):
            notify(f"FDSTORE=1\nFDNAME={FS_PREFIX}{i}", [fd])
        self.fs_fds = len(fds)

    def unmounted(self) -> None:
        notify(f"FDSTOREREMOVE=1\nFDNAME={FUSE_NAME}")
        notify(f"FDSTOREREMOVE=1\nFDNAME={JOURNAL_PREFIX}{self.generation}")
        for i in range(self.fs_fds):
            notify(f"FDSTOREREMOVE=1\nFDNAME={FS_PREFIX}{i}")
        notify("STOPPING=1\nSTATUS=unmounted")


def _journal_generation(name: str) -> int | None:
    if not name.startswith(JOURNAL_PREFIX):
        return None
    tail = name[len(JOURNAL_PREFIX):]
    return int(tail) if tail.isdigit() else None


def run_fdstore(fs: str, source: str | None, mountpoint: str, options: list[str]) -> int:
    """Mount or take over ``mountpoint`` with the fd store as the keeper; serve."""
    from fusewire.server import mount as _mount

    t0 = time.monotonic()
    crash = CrashHook(os.environ.get("FUSEWIRE_CRASH_AT"))
    mountpoint = os.path.abspath(mountpoint)
    meta: dict[str, Any] = {"mountpoint": mountpoint, "fs": fs, "source": source,
                            "options": options}
    passed = listen_fds()
    fuse = [fd for name, fd in passed if name == FUSE_NAME]
    journals = sorted((g, fd) for name, fd in passed
                      if (g := _journal_generation(name)) is not None)
    fs_fds = [fd for _, fd in sorted(
        (int(name[len(FS_PREFIX):]), fd) for name, fd in passed
        if name.startswith(FS_PREFIX) and name[len(FS_PREFIX):].isdigit())]
    for name, fd in passed:
        if (fd not in fuse[:1] and fd not in fs_fds
                and (not journals or fd != journals[-1][1])):
            log.info("closing unexpected stored fd %d (%s)", fd, name)
            os.close(fd)
    for g, _fd in journals[:-1]:      # a crash between store and remove left two
        notify(f"FDSTOREREMOVE=1\nFDNAME={JOURNAL_PREFIX}{g}")
    if not fuse:
        if not os.environ.get("NOTIFY_SOCKET"):
            log.warning("no $NOTIFY_SOCKET: nothing will hold the mount if this process dies")
        opts = _mount.parse_options(options, fsname=f"fusewire-{fs}",
                                    subtype=fs if ":" not in fs else None)
        from fusewire.recovery.keeper import _checks_permissions

        fuse_fd = _mount.mount(mountpoint, opts,
                               checks_permissions=_checks_permissions(fs, source, options))
        journal_fd = jn.new_memfd()
        generation = 0
        # both must be in the store before the INIT reply reveals anything
        notify(f"FDSTORE=1\nFDNAME={FUSE_NAME}", [fuse_fd])
        notify(f"FDSTORE=1\nFDNAME={JOURNAL_PREFIX}{generation}", [journal_fd])
        first = True
    else:
        fuse_fd = fuse[0]
        first = False
        if journals:
            generation, journal_fd = journals[-1]
        else:
            log.error("the fd store has the connection but no journal: state is lost")
            generation, journal_fd = 0, jn.new_memfd()
            notify(f"FDSTORE=1\nFDNAME={JOURNAL_PREFIX}0", [journal_fd])
    control = FdStoreControl(generation, "" if first else "restarted, ", len(fs_fds))
    return take_over(fuse_fd, journal_fd, meta, control, first=first, graceful=False, t0=t0,
                     crash=crash, fs_fds=fs_fds)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``fusewire fdstore``."""
    from fusewire.recovery.keeper import add_fs_arguments
    return add_fs_arguments(p or argparse.ArgumentParser(prog="fusewire fdstore"))


def run_args(args: argparse.Namespace) -> int:
    """Run from parsed arguments."""
    if len(args.paths) == 2:
        source: str | None = os.path.abspath(args.paths[0])
        mountpoint = args.paths[1]
    elif len(args.paths) == 1:
        source, mountpoint = None, args.paths[0]
    else:
        raise SystemExit("usage: fusewire fdstore FS [SOURCE] MOUNTPOINT")
    return run_fdstore(args.fs, source, mountpoint, list(args.options))


def main(argv: list[str] | None = None) -> int:
    """``python -m fusewire.recovery.fdstore``."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s server[{os.getpid()}] %(levelname)s %(message)s")
    return run_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
