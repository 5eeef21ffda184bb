"""The benchmark client: runs the workloads against one mounted directory.

bench/run.py starts this as a separate process (so that the client's CPU
placement can be pinned apart from the server's) once the contender is
mounted::

    python bench/fsclient.py MOUNTPOINT --params '{"storm_cap_s": 3, ...}' \
        [--server-pid PID] [--kind fuse|kernel] [--cold] [--workloads a,b]

and reads one JSON object from its stdout. Each workload reports what it did
(``ops`` in ``seconds``), its rate, and the server's CPU time over the
workload (utime + stime of the server's process tree, all threads included,
from /proc/PID/stat at clock-tick resolution). Only the standard library is
used.

Workloads, in the order they run (count-based ones stop at a time cap and
report what they did):

getattr      os.stat(name, dir_fd=d) of one 4 KiB file: LOOKUP + GETATTR
fstat        os.fstat(fd) of that file: GETATTR
pgetattr     2 forked processes doing the getattr storm at once (aggregate)
seqwrite     write a file in 128 KiB blocks, then fsync and close
seqread      posix_fadvise(DONTNEED) on that file, then read it in 128 KiB
             blocks (kind "kernel": a plain page-cache read)
seqread_cold only with --cold: echo 1 > /proc/sys/vm/drop_caches, then read
smallfiles   N x (create + write 4 KiB + close), then unlink them all
lookup       fixture: N empty files in a fresh directory (its create rate is
             reported as "fixture"); then os.stat of each name, several passes
readdir      os.listdir of that directory, repeatedly
scaling      1, 2, 4, ... forked client processes (up to the CPU count) each
             stat()ing 64 names in turn for a few seconds: aggregate ops/s per
             client count (run unpinned, --pin none, to see the curve)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

MiB = 1 << 20
BLOCK = 128 * 1024
WORKLOADS = ("getattr", "fstat", "pgetattr", "seqwrite", "seqread", "seqread_cold",
             "smallfiles", "lookup", "readdir", "scaling")


@dataclass(frozen=True)
class Params:
    """Sizes and caps; bench/run.py passes them as JSON."""

    storm_cap_s: float = 3.0       # getattr, fstat, pgetattr, lookup
    storm_max_ops: int = 200_000   # getattr and fstat
    procs: int = 2                 # pgetattr
    names: int = 10_000            # lookup fixture and readdir
    lookup_passes: int = 5
    readdir_max: int = 50
    readdir_cap_s: float = 3.0
    seq_mib: int = 256
    seq_cap_s: float = 15.0
    small_files: int = 2_000
    small_size: int = 4096
    small_cap_s: float = 10.0
    fixture_cap_s: float = 20.0
    scaling_cap_s: float = 2.0     # per client count
    scaling_max: int = 0           # most client processes; 0: the CPU count
    scaling_names: int = 64


def client_counts(most: int) -> list[int]:
    """1, 2, 4, ... up to ``most``, and ``most`` itself."""
    counts = []
    n = 1
    while n < most:
        counts.append(n)
        n *= 2
    return [*counts, most]


@dataclass
class Result:
    workload: str
    ops: float                       # operations, entries, files or MiB
    seconds: float
    unit: str
    server_cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def process_tree(root: int) -> list[tuple[int, list[str]]]:
    """(pid, /proc/PID/stat fields from field 3 on) of root and its live descendants."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))  # field 4: ppid
    tree: list[tuple[int, list[str]]] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree.append((pid, stats[pid]))
            todo.extend(children.get(pid, ()))
    return tree


class Server:
    """CPU time and memory of the server, from /proc.

    A server may hand work to child processes (fusewire's --recoverable mode
    runs the filesystem in a successor process), so each sample covers the
    server's whole process tree: utime + stime of each live process (a
    process's figure covers all its threads) plus cutime + cstime (the
    children it has reaped, whose time was counted live before).
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float | None:
        if self.pid is None:
            return None
        tree = process_tree(self.pid)
        if not tree:
            return None
        # Fields 14-17 (utime, stime, cutime, cstime) sit at [11:15].
        return sum(sum(int(x) for x in fields[11:15]) for _, fields in tree) / self.tick

    def memory_kib(self) -> dict[str, int]:
        """VmRSS, VmHWM and Threads summed over the tree, and its process count."""
        if self.pid is None:
            return {}
        out = {"VmRSS": 0, "VmHWM": 0, "Threads": 0, "processes": 0}
        for pid, _ in process_tree(self.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        if key in out:
                            out[key] += int(value.split()[0])
            except OSError:
                continue
            out["processes"] += 1
        return out


def timed_loop(step: Callable[[], object], max_ops: int, cap_s: float,
               batch: int = 128) -> tuple[int, float]:
    """Call step() up to max_ops times or until cap_s passes; return (ops, seconds)."""
    done = 0
    start = time.perf_counter()
    deadline = start + cap_s
    while done < max_ops:
        n = min(batch, max_ops - done)
        for _ in range(n):
            step()
        done += n
        if time.perf_counter() >= deadline:
            break
    return done, time.perf_counter() - start


class Client:
    def __init__(self, root: str, params: Params, server: Server, kind: str) -> None:
        self.root = root
        self.p = params
        self.server = server
        self.kind = kind
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.seq_bytes = 0
        self.names: int | None = None  # files in the lookup fixture, once made

    # -- fixtures --------------------------------------------------------

    def stat_target(self) -> str:
        name = "stat_target"
        if not os.path.exists(os.path.join(self.root, name)):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=self.root_fd)
            os.write(fd, b"x" * 4096)
            os.close(fd)
        return name

    # -- workloads -------------------------------------------------------

    def getattr(self) -> Result:
        name = self.stat_target()
        rfd = self.root_fd
        ops, secs = timed_loop(partial(os.stat, name, dir_fd=rfd),
                               self.p.storm_max_ops, self.p.storm_cap_s)
        return Result("getattr", ops, secs, "ops/s")

    def fstat(self) -> Result:
        fd = os.open(self.stat_target(), os.O_RDONLY, dir_fd=self.root_fd)
        try:
            ops, secs = timed_loop(partial(os.fstat, fd), self.p.storm_max_ops,
                                   self.p.storm_cap_s)
        finally:
            os.close(fd)
        return Result("fstat", ops, secs, "ops/s")

    def pgetattr(self) -> Result:
        name = self.stat_target()
        rfd = self.root_fd
        ops, wall, per_proc = self._forked_storms(
            self.p.procs, lambda _i: partial(os.stat, name, dir_fd=rfd), self.p.storm_cap_s)
        return Result("pgetattr", ops, wall, "ops/s", extra={"per_process_ops_s": per_proc})

    def scaling(self) -> Result:
        """Stat/lookup storms from 1, 2, 4, ... client processes at once."""
        os.mkdir("scaling", dir_fd=self.root_fd)
        dfd = os.open("scaling", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root_fd)
        names = [f"s{i:03d}" for i in range(self.p.scaling_names)]
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd))

        def step(i: int) -> Callable[[], object]:
            cycle = itertools.cycle(names[i % len(names):] + names[:i % len(names)])
            return lambda: os.stat(next(cycle), dir_fd=dfd)

        most = self.p.scaling_max or len(os.sched_getaffinity(0))
        curve: dict[str, float] = {}
        done: dict[str, int] = {}
        cpu: dict[str, float | None] = {}
        client_cpu: dict[str, float] = {}
        ops = 0
        wall = 0.0
        try:
            for n in client_counts(most):
                cpu0 = self.server.cpu()
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                ops, wall, _ = self._forked_storms(n, step, self.p.scaling_cap_s)
                ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                key = str(n)
                curve[key] = round(ops / wall) if wall > 0 else 0
                done[key] = ops
                cpu[key] = _delta(cpu0, self.server.cpu())
                client_cpu[key] = round(ru1.ru_utime - ru0.ru_utime
                                        + ru1.ru_stime - ru0.ru_stime, 3)
        finally:
            os.close(dfd)
        return Result("scaling", ops, wall, "ops/s",
                      extra={"clients": curve, "ops": done, "server_cpu_s": cpu,
                             "client_cpu_s": client_cpu})

    def _forked_storms(self, procs: int, step_for: Callable[[int], Callable[[], object]],
                       cap_s: float) -> tuple[int, float, list[int]]:
        """``procs`` forked processes run ``step_for(i)`` for ``cap_s`` from one start signal.

        Returns (total ops, wall seconds, per-process ops/s).
        """
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        pids = []
        for i in range(procs):
            pid = os.fork()
            if pid == 0:  # child: wait for the start byte, storm, report, exit
                code = 1
                try:
                    os.close(go_w)
                    step = step_for(i)
                    os.read(go_r, 1)
                    ops, secs = timed_loop(step, 10**12, cap_s)
                    os.write(res_w, f"{ops} {secs}\n".encode())
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(go_r)
        os.close(res_w)
        start = time.perf_counter()
        os.write(go_w, b"g" * len(pids))
        os.close(go_w)
        with os.fdopen(res_r) as results:
            lines = results.read().split("\n")
        wall = time.perf_counter() - start
        for pid in pids:
            os.waitpid(pid, 0)
        reports = [line.split() for line in lines if line]
        if len(reports) != len(pids):
            raise RuntimeError(f"only {len(reports)} of {len(pids)} processes reported")
        ops = sum(int(r[0]) for r in reports)
        per_proc = [round(int(r[0]) / float(r[1])) for r in reports]
        return ops, wall, per_proc

    def seqwrite(self) -> Result:
        block = os.urandom(BLOCK)
        total_blocks = self.p.seq_mib * MiB // BLOCK
        write = os.write
        start = time.perf_counter()
        fd = os.open("seq.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.root_fd)
        try:
            blocks, _ = timed_loop(partial(write, fd, block), total_blocks, self.p.seq_cap_s,
                                   batch=8)
            os.fsync(fd)
        finally:
            os.close(fd)
        secs = time.perf_counter() - start
        self.seq_bytes = blocks * BLOCK
        return Result("seqwrite", self.seq_bytes / MiB, secs, "MiB/s",
                      extra={"capped": blocks < total_blocks})

    def seqread(self) -> Result:
        if self.kind != "kernel":
            # Drop the file's pages from the page cache (on a FUSE mount, only
            # the FUSE file's: a passthrough's backing file stays cached).
            fd = os.open("seq.bin", os.O_RDONLY, dir_fd=self.root_fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return self._read_result("seqread")

    def seqread_cold(self) -> Result:
        method = "drop_caches"
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        except OSError:
            method = "fadvise"
            fd = os.open("seq.bin", os.O_RDONLY, dir_fd=self.root_fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        result = self._read_result("seqread_cold")
        result.extra["cache_drop"] = method
        return result

    def _read_result(self, workload: str) -> Result:
        buf = bytearray(BLOCK)
        readv = os.readv
        total = 0
        start = time.perf_counter()
        deadline = start + self.p.seq_cap_s
        fd = os.open("seq.bin", os.O_RDONLY, dir_fd=self.root_fd)
        try:
            while n := readv(fd, [buf]):
                total += n
                if total % (8 * MiB) == 0 and time.perf_counter() >= deadline:
                    break
        finally:
            os.close(fd)
        secs = time.perf_counter() - start
        return Result(workload, total / MiB, secs, "MiB/s",
                      extra={"capped": total < self.seq_bytes})

    def smallfiles(self) -> Result:
        os.mkdir("small", dir_fd=self.root_fd)
        dfd = os.open("small", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root_fd)
        data = b"s" * self.p.small_size
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        created: list[str] = []
        try:
            start = time.perf_counter()
            deadline = start + self.p.small_cap_s
            for i in range(self.p.small_files):
                name = f"s{i:05d}"
                fd = os.open(name, flags, 0o644, dir_fd=dfd)
                os.write(fd, data)
                os.close(fd)
                created.append(name)
                if time.perf_counter() >= deadline:
                    break
            mid = time.perf_counter()
            for name in created:
                os.unlink(name, dir_fd=dfd)
            end = time.perf_counter()
        finally:
            os.close(dfd)
        os.rmdir("small", dir_fd=self.root_fd)
        n = len(created)
        return Result("smallfiles", n, end - start, "files/s", extra={
            "create_files_s": n / (mid - start) if mid > start else 0.0,
            "unlink_files_s": n / (end - mid) if end > mid else 0.0,
            "capped": n < self.p.small_files,
        })

    def lookup(self) -> list[Result]:
        """The fixture (N empty files) and the lookup storm over their names."""
        names = [f"n{i:05d}" for i in range(self.p.names)]
        os.mkdir("names", dir_fd=self.root_fd)
        dfd = os.open("names", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        cpu0 = self.server.cpu()
        start = time.perf_counter()
        deadline = start + self.p.fixture_cap_s
        made = 0
        for name in names:
            os.close(os.open(name, flags, 0o644, dir_fd=dfd))
            made += 1
            if made % 256 == 0 and time.perf_counter() >= deadline:
                break
        fixture = Result("fixture", made, time.perf_counter() - start, "files/s",
                         server_cpu_s=_delta(cpu0, self.server.cpu()),
                         extra={"capped": made < len(names)})
        del names[made:]
        self.names = made
        stat = os.stat
        cpu0 = self.server.cpu()
        ops = 0
        start = time.perf_counter()
        deadline = start + self.p.storm_cap_s
        chunks = [names[i:i + 128] for i in range(0, len(names), 128)]
        for _ in range(self.p.lookup_passes):
            for chunk in chunks:
                for name in chunk:
                    stat(name, dir_fd=dfd)
                ops += len(chunk)
                if time.perf_counter() >= deadline:
                    break
            else:
                continue
            break
        secs = time.perf_counter() - start
        os.close(dfd)
        storm = Result("lookup", ops, secs, "ops/s",
                       server_cpu_s=_delta(cpu0, self.server.cpu()),
                       extra={"names": made})
        return [fixture, storm]

    def readdir(self) -> Result:
        path = os.path.join(self.root, "names")
        entries = 0
        listings = 0
        start = time.perf_counter()
        deadline = start + self.p.readdir_cap_s
        while listings < self.p.readdir_max:
            n = len(os.listdir(path))
            if self.names is not None and n != self.names:
                raise RuntimeError(f"listdir returned {n} entries, expected {self.names}")
            entries += n
            listings += 1
            if time.perf_counter() >= deadline:
                break
        return Result("readdir", entries, time.perf_counter() - start, "entries/s",
                      extra={"listings": listings})

    # -- driver ----------------------------------------------------------

    def run(self, workloads: list[str]) -> list[Result]:
        results: list[Result] = []
        for name in workloads:
            if name == "readdir" and self.names is None:
                results.extend(self._measure("lookup"))  # readdir needs the fixture
            results.extend(self._measure(name))
        return results

    def _measure(self, name: str) -> list[Result]:
        print(f"# start {name}", file=sys.stderr, flush=True)  # for run.py's timeout report
        cpu0 = self.server.cpu()
        try:
            out = getattr(self, name)()
        except (OSError, RuntimeError, ValueError) as exc:  # report it, go on with the next
            return [Result(name, 0, 0.0, "", error=f"{type(exc).__name__}: {exc}")]
        cpu1 = self.server.cpu()
        results = out if isinstance(out, list) else [out]
        mem = self.server.memory_kib()
        for r in results:
            if r.server_cpu_s is None:
                r.server_cpu_s = _delta(cpu0, cpu1)
            if mem:
                r.extra["server_rss_kib"] = mem.get("VmRSS")
        return results


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the benchmark workloads on a mount.")
    parser.add_argument("mountpoint")
    parser.add_argument("--params", default="{}", help="JSON object of Params fields")
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--kind", choices=("fuse", "kernel"), default="fuse")
    parser.add_argument("--cold", action="store_true", help="also run seqread_cold")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args()

    params = Params(**json.loads(args.params))
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if not args.cold:
        workloads = [w for w in workloads if w != "seqread_cold"]
    reads = [w for w in workloads if w in ("seqread", "seqread_cold")]
    if reads and "seqwrite" not in workloads:
        workloads.insert(workloads.index(reads[0]), "seqwrite")  # the reads need its file

    server = Server(args.server_pid)
    mem0 = server.memory_kib()
    cpu0 = server.cpu()
    client = Client(args.mountpoint, params, server, args.kind)
    results = client.run(workloads)
    report = {
        "params": asdict(params),
        "client_cpus": sorted(os.sched_getaffinity(0)),
        "server_start": mem0,
        "server_end": server.memory_kib(),
        "server_cpu_s": _delta(cpu0, server.cpu()),
        "results": [dict(asdict(r), rate=r.rate) for r in results],
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
