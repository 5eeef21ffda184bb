"""Server memory with a full node table: memfs holding 100,000 looked-up empty files.

    python bench/bench_memory.py [--files 100000] [--dirs 100] [--no-flat] [--json FILE]

For each layout (``--dirs`` directories of files/dirs entries each, then one
flat directory of all the files unless ``--no-flat``) the script starts a
fresh ``python -m fusewire mount memfs MNT -f`` server process (entry and
attribute timeouts of an hour, so the kernel keeps every name it learns),
reads the server's ``VmRSS`` from ``/proc/PID/status`` once the mount
answers, creates the empty files the way ``touch`` does (open with O_CREAT,
close), stats every one of them (each name is then held by the kernel with
a lookup count, and the server's node table has an entry per file), and
reads ``VmRSS`` and ``VmHWM`` again.  The files are empty, so all memory
beyond the baseline is per-file overhead: memfs inodes and directory
entries, the dispatcher's lookup counts, and whatever the request path left
allocated.  Target: under 100 MB beyond the baseline for 100,000 files.

Prints a markdown table (``--json FILE`` also writes the raw numbers; ``-``
for stdout).  Needs root (mount(2)) or a working fusermount3.  Each server is
stopped by the pid this script started (SIGTERM, then SIGKILL), after a lazy
unmount; the temporary directories are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusewire.server import mount as fm  # noqa: E402

TARGET_MB = 100.0
MB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")


class MemfsServer:
    """A memfs server process on a fresh mountpoint, stopped by its pid."""

    def __init__(self, mnt: Path, log: Path, python: str) -> None:
        self.mnt = mnt
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [python, "-m", "fusewire", "mount", "memfs", str(mnt), "-f",
             "-o", "entry_timeout=3600,attr_timeout=3600"],
            env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if fm.is_mounted(str(self.mnt)):
                os.stat(self.mnt)
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.mnt} not mounted after {timeout} s")

    def rss(self) -> int:
        return _status_kib(self.pid, "VmRSS") * 1024

    def hwm(self) -> int:
        return _status_kib(self.pid, "VmHWM") * 1024

    def stop(self) -> None:
        try:
            if fm.is_mounted(str(self.mnt)):
                fm.unmount(str(self.mnt), lazy=True)
        except OSError:
            subprocess.run(["umount", "-l", str(self.mnt)], check=False,
                           stderr=subprocess.DEVNULL)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _layout(files: int, dirs: int) -> list[tuple[str, int]]:
    """(directory relative to the mount, number of files) for each directory."""
    if dirs <= 1:
        return [("flat", files)]
    per, extra = divmod(files, dirs)
    return [(f"d{i:04d}", per + (1 if i < extra else 0)) for i in range(dirs)]


def measure(files: int, dirs: int, workdir: Path, python: str) -> dict[str, Any]:
    """One server, one layout: RSS before, after creating and stating ``files``."""
    base = Path(tempfile.mkdtemp(prefix="fwmem-", dir=workdir))
    mnt = base / "mnt"
    mnt.mkdir()
    server = MemfsServer(mnt, base / "server.log", python)
    try:
        server.wait_ready()
        rss0 = server.rss()
        layout = _layout(files, dirs)
        t0 = time.perf_counter()
        for dname, n in layout:
            d = mnt / dname
            d.mkdir()
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for j in range(n):
                    os.close(os.open(f"f{j:06d}", os.O_WRONLY | os.O_CREAT, 0o644,
                                     dir_fd=dfd))
            finally:
                os.close(dfd)
        t_create = time.perf_counter() - t0
        rss_created = server.rss()
        t0 = time.perf_counter()
        seen = 0
        for dname, n in layout:
            dfd = os.open(mnt / dname, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for j in range(n):
                    st = os.stat(f"f{j:06d}", dir_fd=dfd, follow_symlinks=False)
                    seen += st.st_size == 0
            finally:
                os.close(dfd)
        t_stat = time.perf_counter() - t0
        if seen != files:
            raise RuntimeError(f"stat saw {seen} empty files of {files}")
        rss1, hwm = server.rss(), server.hwm()
        return {
            "layout": "flat" if dirs <= 1 else f"{len(layout)} dirs x {files // len(layout)}",
            "files": files, "dirs": len(layout) if dirs > 1 else 0,
            "rss_baseline": rss0, "rss_after_create": rss_created, "rss_after_stat": rss1,
            "vm_hwm": hwm, "beyond_baseline": rss1 - rss0,
            "per_file": (rss1 - rss0) / files,
            "create_s": t_create, "stat_s": t_stat,
            "target_met": (rss1 - rss0) / MB < TARGET_MB,
        }
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| layout | files | RSS before | RSS after | beyond baseline | per file | peak RSS "
        "| create | stat | < 100 MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['layout']} | {r['files']:,} | {r['rss_baseline'] / MB:.1f} MB "
            f"| {r['rss_after_stat'] / MB:.1f} MB | {r['beyond_baseline'] / MB:.1f} MB "
            f"| {r['per_file']:.0f} B | {r['vm_hwm'] / MB:.1f} MB "
            f"| {r['create_s']:.1f} s | {r['stat_s']:.1f} s "
            f"| {'yes' if r['target_met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=100, help="directories for the spread layout")
    ap.add_argument("--no-flat", action="store_true", help="skip the flat-directory layout")
    ap.add_argument("--json", metavar="FILE", help="also write raw results ('-': stdout)")
    ap.add_argument("--workdir", default="/tmp", help="parent of the temporary mountpoints")
    ap.add_argument("--python", default=sys.executable, help="interpreter running the server")
    args = ap.parse_args(argv)
    layouts = [args.dirs] + ([] if args.no_flat else [1])
    results = [measure(args.files, d, Path(args.workdir), args.python) for d in layouts]
    print(render(results))
    if args.json:
        text = json.dumps({"target_mb": TARGET_MB, "python": args.python,
                           "kernel": os.uname().release, "results": results}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if all(r["target_met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
