"""Small files, measured in CPU time: server and client run time per file, pinned.

    python bench/cpu_per_file.py [--rounds 3] [--files 2000] [--reps 5]
        [--build-dir bench/build] [--project-python PY] [--repo DIR ...]

bench/run.py's small-files workload (create + write 4 KiB + close, then
unlink) against libfuse C single-threaded (bench/peers/memfs_ll.c, ``-s``) and
fusewire's memfs from each ``--repo`` checkout (default: this one), every
server and client pinned to CPU 0 as ``bench/run.py --pin same`` does.  For
each it prints the server's and the client's run time per file, read from
``/proc/PID/task/*/schedstat`` (nanoseconds), best of ``--rounds``.

Why: with server and client on one CPU and one request in flight, the CPU is
never idle, so the rate on an idle machine is 1 / (server + client time per
file), and run time per file is far steadier than the wall clock when other
work shares the machine.  The estimated ratio ``(C server + C client) /
(fusewire server + fusewire client)`` is what the wall-clock ratio of
``bench/run.py --workloads smallfiles`` tends to on a quiet machine.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

CLIENT = r"""
import os, sys, time
def run_ns():
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[0])
mnt, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = os.path.join(mnt, "small")
os.mkdir(d)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
data = b"s" * 4096
flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
r0, t0 = run_ns(), time.perf_counter()
for _ in range(reps):
    for i in range(n):
        fd = os.open(f"s{i:05d}", flags, 0o644, dir_fd=dfd)
        os.write(fd, data)
        os.close(fd)
    for i in range(n):
        os.unlink(f"s{i:05d}", dir_fd=dfd)
print(run_ns() - r0, time.perf_counter() - t0)
"""


def _run_ns(pid: int) -> int:
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass        # a thread that ended
    return total


def measure(argv: list[str], env: dict[str, str] | None, cwd: str, files: int,
            reps: int) -> tuple[float, float, float]:
    """(server µs/file, client µs/file, wall files/s) for one mounted server;
    ``MNT`` in ``argv`` is replaced by a fresh mountpoint."""
    mnt = tempfile.mkdtemp(prefix="cpu-per-file-")
    argv = [mnt if a == "MNT" else a for a in argv]
    server = subprocess.Popen(["taskset", "-c", "0", *argv], env=env, cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"{argv[0]} did not mount {mnt}")
            time.sleep(0.05)
        before = _run_ns(server.pid)
        out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", CLIENT, mnt,
                              str(files), str(reps)],
                             capture_output=True, text=True, check=True).stdout.split()
        after = _run_ns(server.pid)
    finally:
        subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        server.wait(20)
        os.rmdir(mnt)
    n = files * reps
    return (after - before) / n / 1000, int(out[0]) / n / 1000, n / float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5, help="create..unlink passes per round")
    ap.add_argument("--build-dir", type=Path, default=BENCH_DIR / "build")
    ap.add_argument("--project-python", default=sys.executable)
    ap.add_argument("--repo", action="append", type=Path,
                    help="a fusewire checkout to measure (repeatable; default: this one)")
    args = ap.parse_args()
    repos = args.repo or [BENCH_DIR.parent]
    contenders: dict[str, tuple[list[str], dict[str, str] | None, str]] = {
        "libfuse_c_st": ([str(args.build_dir / "memfs_ll"), "-s", "-f", "MNT"], None, "/"),
    }
    for repo in repos:
        contenders[f"fusewire_memfs {repo}"] = (
            [args.project_python, "-m", "fusewire", "mount", "memfs", "MNT", "-f", "-o",
             "entry_timeout=0,attr_timeout=0"],
            dict(os.environ, PYTHONPATH=str(repo)), str(repo))
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in contenders}
    for _ in range(args.rounds):             # round-robin, like bench/run.py
        for name, (argv, env, cwd) in contenders.items():
            results[name].append(measure(argv, env, cwd, args.files, args.reps))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"small files, pinned to CPU 0, best of {args.rounds} rounds of "
          f"{args.reps} x {args.files} files; load average {' '.join(load)}")
    totals = {}
    for name, runs in results.items():
        srv = min(r[0] for r in runs)
        cli = min(r[1] for r in runs)
        wall = max(r[2] for r in runs)
        totals[name] = srv + cli
        print(f"  {name}: server {srv:.1f} µs/file, client {cli:.1f} µs/file, "
              f"estimated {1e6 / (srv + cli):,.0f} files/s (best wall {wall:,.0f}/s)")
    c = totals["libfuse_c_st"]
    for name, total in totals.items():
        if name != "libfuse_c_st":
            print(f"  {name}: estimated ratio to libfuse_c_st {c / total:.3f}")


if __name__ == "__main__":
    main()
