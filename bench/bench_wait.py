"""Waiting handlers: worker threads (--workers N, sync handlers that block) against
one asyncio thread (async handlers that await), on the same workload.

    python bench/bench_wait.py [--clients 16] [--reads 20] [--delay 0.05]

Each of ``--clients`` client threads reads its own file ``--reads`` times;
every read waits ``--delay`` seconds in the server (bench/peers/sleepfs.py).
Printed per server: reads per second, and the median latency of a stat
issued while all clients wait (what a user's ``ls`` feels).  The ideal is
clients / delay reads per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from fusewire.testing.procs import unmount_and_kill  # noqa: E402


def mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def run_one(label: str, fs: str, extra: list[str], args: argparse.Namespace) -> None:
    mnt = Path(tempfile.mkdtemp(prefix="fusewire-wait-"))
    env = dict(os.environ, PYTHONPATH=f"{BENCH.parent}{os.pathsep}{BENCH / 'peers'}",
               SLEEPFS_DELAY=str(args.delay))
    proc = subprocess.Popen([sys.executable, "-m", "fusewire", "mount", f"sleepfs:{fs}",
                             str(mnt), "-f", *extra], env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{label}: the server did not mount")
            time.sleep(0.02)
        stop = threading.Event()
        lat: list[float] = []

        def client(i: int) -> None:
            fd = os.open(mnt / f"f{i}", os.O_RDONLY)
            for _ in range(args.reads):
                os.pread(fd, 4096, 0)
            os.close(fd)

        def stats() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                os.stat(mnt / "f63")
                lat.append(time.perf_counter() - t)
                time.sleep(0.005)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        st = threading.Thread(target=stats)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        st.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        stop.set()
        st.join()
        rate = args.clients * args.reads / dt
        print(f"{label:28} {rate:8.0f} reads/s (ideal {args.clients / args.delay:.0f})   "
              f"stat during the waits: median {statistics.median(lat) * 1e3:7.2f} ms, "
              f"max {max(lat) * 1e3:7.2f} ms")
    finally:
        unmount_and_kill(mnt, [proc.pid])
        proc.wait(10)
        os.rmdir(mnt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--reads", type=int, default=20)
    p.add_argument("--delay", type=float, default=0.05)
    args = p.parse_args()
    for workers in (0, 4, 16):
        run_one(f"sync, --workers {workers}", "SyncSleepFS",
                ["--workers", str(workers)] if workers else [], args)
    run_one("async, one thread", "AsyncSleepFS", [], args)


if __name__ == "__main__":
    main()
