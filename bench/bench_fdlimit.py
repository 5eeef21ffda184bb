"""Passthrough over a tree larger than the descriptor limit: descriptor count and time.

    python bench/bench_fdlimit.py [--files 100000] [--limit 20000] [--recoverable]

Builds ``--files`` small files in a fresh tmpfs-backed directory (under
/dev/shm), mounts ``fusewire mount passthrough SRC MNT`` with RLIMIT_NOFILE at
``--limit`` (soft and hard), then stat()s, opens and reads every file through
the mount, sampling the server's open descriptors (/proc/PID/fd) every 5,000
files.  Prints the peak descriptor count next to the limit, the elapsed times,
and whether every file read back right.  Root only (the node descriptors are
reopened by file handle).  Everything it mounts or starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _mounted(mnt: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(mnt) for line in f)


def _server_pid(mnt: Path, run: Path, recoverable: bool, default: int) -> int:
    if not recoverable:
        return default
    sys.path.insert(0, str(REPO))
    from fusewire.recovery import commands
    os.environ["FUSEWIRE_RUN_DIR"] = str(run)
    return int(commands.status(str(mnt))["server_pid"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--limit", type=int, default=20_000)
    ap.add_argument("--recoverable", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_fdlimit: needs root (open_by_handle_at)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="fwfd-", dir="/dev/shm"))
    src, mnt, run = base / "src", base / "mnt", base / "run"
    for d in (src, mnt):
        d.mkdir()
    run.mkdir(mode=0o700)
    t0 = time.monotonic()
    for i in range(args.files):
        d = src / f"d{i // 1000}"
        if i % 1000 == 0:
            d.mkdir()
        (d / f"f{i}").write_bytes(b"%d\n" % i)
    built = time.monotonic() - t0
    env = dict(os.environ, PYTHONPATH=str(REPO), FUSEWIRE_RUN_DIR=str(run))
    argv = [sys.executable, "-m", "fusewire", "mount", "passthrough", str(src), str(mnt)]
    argv += ["--recoverable"] if args.recoverable else ["-f"]

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.limit, args.limit))

    proc = subprocess.Popen(argv, env=env, preexec_fn=low, stdin=subprocess.DEVNULL)
    peak, bad = 0, 0
    try:
        if args.recoverable:
            proc.wait(60)
        deadline = time.monotonic() + 30
        while not _mounted(mnt):
            if time.monotonic() > deadline:
                raise SystemExit("bench_fdlimit: the mount did not appear")
            time.sleep(0.05)
        pid = _server_pid(mnt, run, args.recoverable, proc.pid)
        t1 = time.monotonic()
        for i in range(args.files):
            p = mnt / f"d{i // 1000}" / f"f{i}"
            os.stat(p)
            if i % 5000 == 0:
                peak = max(peak, len(os.listdir(f"/proc/{pid}/fd")))
        stat_s = time.monotonic() - t1
        t2 = time.monotonic()
        for i in range(args.files):
            p = mnt / f"d{i // 1000}" / f"f{i}"
            fd = os.open(p, os.O_RDONLY)
            try:
                bad += os.read(fd, 64) != b"%d\n" % i
            finally:
                os.close(fd)
            if i % 5000 == 0:
                peak = max(peak, len(os.listdir(f"/proc/{pid}/fd")))
        read_s = time.monotonic() - t2
        peak = max(peak, len(os.listdir(f"/proc/{pid}/fd")))
    finally:
        subprocess.run([sys.executable, "-m", "fusewire", "umount", str(mnt)], env=env,
                       capture_output=True)
        if _mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    mode = "recoverable" if args.recoverable else "plain"
    print(f"passthrough {mode}: {args.files} files, RLIMIT_NOFILE {args.limit}")
    print(f"  build {built:.1f} s, stat all {stat_s:.1f} s, open+read all {read_s:.1f} s")
    print(f"  server descriptors: peak {peak} (limit {args.limit}); wrong reads: {bad}")
    return 1 if bad or peak >= args.limit else 0


if __name__ == "__main__":
    sys.exit(main())
