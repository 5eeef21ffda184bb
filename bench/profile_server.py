"""Where a request's time goes: profile fusewire's memfs under a stat storm.

    python bench/profile_server.py [--ops N] [--profiler cprofile|none] [--pin]
        [--workload fstat|getattr|readdir|seqread|seqwrite|smallfiles] [--fs memfs|passthrough]

The server runs in this process (main thread) on a fresh mount with
``entry_timeout=0,attr_timeout=0``; a separate client process runs the
storm.  With ``--profiler cprofile`` the server's loop runs under cProfile
and the top functions by own time are printed; with ``none`` only the rate
is printed (compare the two to see the profiler's own distortion).  For
seqread/seqwrite ``--ops`` is the file size in MiB (128 KiB blocks).  ``--pin``
puts server and client on CPU 0 (the ping-pong case of docs/performance.md).
``--fs passthrough`` serves a passthrough of a fresh temporary directory
instead of memfs (one process; ``--processes`` serving is not profiled here).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusewire.examples.memfs import MemFS
from fusewire.examples.passthrough import Passthrough
from fusewire.server.loop import Server

CLIENT = r"""
import os, sys, time
mnt, workload, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if workload in ("seqread", "seqwrite"):
    name = os.path.join(mnt, "seq.bin")
    block = os.urandom(128 * 1024)
    t = time.perf_counter()
    if workload == "seqwrite":
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for _ in range(n * 8):
            os.write(fd, block)
        os.fsync(fd)
    else:
        fd = os.open(name, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        while os.read(fd, len(block)):
            pass
    os.close(fd)
    dt = time.perf_counter() - t
    print(f"{n / dt:,.0f} MiB/s ({workload} {n} MiB)")
elif workload == "smallfiles":
    d = os.path.join(mnt, "small")
    os.mkdir(d)
    block = os.urandom(4096)
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, block)
        os.close(fd)
    for i in range(n):
        os.unlink(os.path.join(d, f"f{i}"))
    dt = time.perf_counter() - t
    print(f"{n / dt:,.0f} files/s (create+write 4 KiB+close, then unlink)")
elif workload == "readdir":
    d = os.path.join(mnt, "big")
    t = time.perf_counter()
    total = 0
    for _ in range(n):
        total += sum(1 for _ in os.scandir(d))
    dt = time.perf_counter() - t
    print(f"{total / dt:,.0f} entries/s")
else:
    name = os.path.join(mnt, "f")
    fd = os.open(name, os.O_RDONLY)
    op = (lambda: os.fstat(fd)) if workload == "fstat" else (lambda: os.stat(name))
    for _ in range(1000):
        op()
    t = time.perf_counter()
    for _ in range(n):
        op()
    dt = time.perf_counter() - t
    print(f"{n / dt:,.0f} {workload}/s")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=50_000)
    ap.add_argument("--workload", choices=("fstat", "getattr", "readdir", "seqread", "seqwrite",
                                                 "smallfiles"), default="fstat")
    ap.add_argument("--profiler", choices=("cprofile", "none"), default="cprofile")
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--fs", choices=("memfs", "passthrough"), default="memfs")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    mnt = tempfile.mkdtemp(prefix="fusewire-prof-")
    src = tempfile.mkdtemp(prefix="fusewire-prof-src-") if args.fs == "passthrough" else None
    ops = (MemFS(entry_timeout=0, attr_timeout=0) if src is None
           else Passthrough(src, entry_timeout=0, attr_timeout=0))
    server = Server(ops, mnt, "fsname=prof")
    server.mount()
    prof = cProfile.Profile() if args.profiler == "cprofile" else None

    def serve() -> None:
        if prof is not None:
            prof.enable()
        try:
            server.serve(install_signals=False)
        finally:
            if prof is not None:
                prof.disable()

    t = threading.Thread(target=serve)
    t.start()
    try:
        if not server.ready.wait(10):
            raise SystemExit("no INIT")
        Path(mnt, "f").write_bytes(b"x" * 4096)
        n = args.ops
        if args.workload == "readdir":
            Path(mnt, "big").mkdir()
            for i in range(10_000):
                Path(mnt, "big", f"file-{i:05d}").touch()
            n = max(1, args.ops // 10_000)
        pre = ["taskset", "-c", "0"] if args.pin else []
        if args.workload == "seqread":
            n = max(1, args.ops)
            Path(mnt, "seq.bin").write_bytes(os.urandom(n * 1024 * 1024))
        elif args.workload == "seqwrite":
            n = max(1, args.ops)
        out = subprocess.run([*pre, sys.executable, "-c", CLIENT, mnt, args.workload, str(n)],
                             check=True, capture_output=True, text=True)
        print(out.stdout.strip())
    finally:
        server.close()
        t.join(10)
        time.sleep(0.1)
        os.rmdir(mnt)
        if src is not None:
            shutil.rmtree(src)
    if prof is not None:
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    main()
