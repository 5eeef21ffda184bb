"""Benchmark fusewire against libfuse C, the Python FUSE libraries and the kernel.

    python bench/run.py [--quick] [--runs N] [--only NAME,...] [--pin same|split|none]
                        [--json FILE] [--doc FILE | --no-doc]

For each run and each contender (round-robin, so slow drift hits everyone):
make a fresh directory, mount the contender on it, wait until the mount is in
/proc/mounts and stat() of it answers, run bench/fsclient.py against it in a
separate process, stop the server (SIGTERM, then ``umount -l`` and SIGKILL of
that one pid if needed; processes the server itself started and left behind
are stopped by pid and reported) and remove the directory. The medians, min-max ranges,
server CPU and memory go into the marked section of docs/performance.md
(between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``), with ratios to
the libfuse C server. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contenders import BENCH_DIR, CONTENDERS, REPO_DIR, Contender, Env, Paths, select
from fsclient import Params, process_tree

CLIENT = BENCH_DIR / "fsclient.py"
DOC_BEGIN = "<!-- bench:begin -->"
DOC_END = "<!-- bench:end -->"
DOC_TEMPLATE = """# Performance

Measured with `python bench/run.py` (see bench/README.md for the workloads, the
contenders and the CPU-placement caveat). The section between the markers is
rewritten by each run; text outside it is kept.

{block}
"""

FULL = Params()
QUICK = Params(storm_cap_s=1.0, storm_max_ops=50_000, names=2_000, lookup_passes=3,
               readdir_max=20, readdir_cap_s=1.0, seq_mib=32, seq_cap_s=5.0,
               small_files=500, small_cap_s=3.0, fixture_cap_s=5.0, scaling_cap_s=1.0)

# Where the server and the client run: (server CPUs, client CPUs) for taskset.
PINNING: dict[str, tuple[str | None, str | None]] = {
    "same": ("0", "0"),
    "split": ("1", "0"),
    "none": (None, None),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- mounts and processes ------------------------------------------------

def _unescape(field: str) -> str:
    """Undo /proc/mounts' octal escapes (\\040 for a space, and so on)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path: Path) -> dict[str, str] | None:
    """The /proc/mounts entry whose mountpoint is path, if any."""
    target = str(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if _unescape(parts[1]) == target:
                return {"source": parts[0], "fstype": parts[2], "options": parts[3]}
    return None


def stat_answers(path: Path, timeout: float) -> bool:
    """stat(path) in a helper thread, so that a hung server cannot hang us."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            os.stat(path)
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a server log, without traceback carets and blank lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [line.strip() for line in text if line.strip(" ^~\t")]
    return " | ".join(kept[-lines:])


@dataclass
class Server:
    """A FUSE server that this harness started, and its mountpoint."""

    proc: subprocess.Popen[bytes]
    mnt: Path
    log_path: Path

    def wait_ready(self, timeout: float) -> tuple[dict[str, str] | None, str | None]:
        """(mount entry, None) once mounted and answering, else (None, reason)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                tail = log_tail(self.log_path)
                return None, f"server exited with rc {rc} before mounting: {tail}"
            entry = mount_entry(self.mnt)
            if entry is not None:
                if stat_answers(self.mnt, max(1.0, deadline - time.monotonic())):
                    return entry, None
                return None, "mounted, but stat() of the mountpoint did not answer"
            time.sleep(0.05)
        return None, f"not mounted within {timeout:.0f} s: {log_tail(self.log_path)}"

    def stop(self) -> dict[str, Any]:
        """SIGTERM our pid; umount -l if the mount stays; SIGKILL our pid if it stays.

        Processes the server started (its descendants when stop() begins) must
        go with it; any still alive afterwards are signalled by pid (checked
        against their start time) and reported as "leftover".
        """
        info: dict[str, Any] = {"rc": self.proc.poll(), "forced_umount": False, "killed": False}
        descendants = [(pid, fields[19]) for pid, fields in process_tree(self.proc.pid)
                       if pid != self.proc.pid]  # field 22: start time
        if info["rc"] is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                info["rc"] = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if mount_entry(self.mnt) is not None:
            info["forced_umount"] = True
            subprocess.run(["umount", "-l", str(self.mnt)], check=False, capture_output=True)
        if self.proc.poll() is None:
            info["killed"] = True
            self.proc.kill()  # this pid only
            info["rc"] = self.proc.wait(timeout=10)
        info["rc"] = self.proc.returncode
        leftover = _still_running(descendants)
        if leftover:
            info["leftover"] = leftover
            log(f"warning: the server left processes {leftover} running: stopping them")
            for pid in leftover:
                _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _still_running(descendants) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in _still_running(descendants):
                _signal(pid, signal.SIGKILL)
        return info


def _still_running(processes: list[tuple[int, str]]) -> list[int]:
    """The pids among (pid, start time) that still run (and were not reused)."""
    alive = []
    for pid, start in processes:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            alive.append(pid)
    return alive


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus is not None else []


# -- one measurement -----------------------------------------------------

@dataclass
class Outcome:
    ok: bool
    reason: str | None = None   # why not, when not ok
    fatal: bool = False         # do not try this contender again
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    env: Env
    params: Params
    pin: str
    workdir: Path
    log_dir: Path
    mount_timeout: float
    workloads: str | None
    client_timeout_s: float | None = None

    def client_timeout(self) -> float:
        if self.client_timeout_s is not None:
            return self.client_timeout_s
        p = self.params
        budget = (4 * p.storm_cap_s + p.readdir_cap_s + 3 * p.seq_cap_s + 2 * p.small_cap_s
                  + p.fixture_cap_s)
        return 1.5 * budget + 60

    def measure(self, c: Contender, run: int) -> Outcome:
        tmp = Path(tempfile.mkdtemp(prefix=f"fwbench-{c.name}-{run}-", dir=self.workdir))
        paths = Paths(mnt=tmp / "mnt", src=tmp / "src")
        paths.mnt.mkdir()
        paths.src.mkdir()
        server: Server | None = None
        record: dict[str, Any] = {"run": run}
        try:
            if c.kernel_mount == "tmpfs":
                out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755",
                                      "fwbench-tmpfs", str(paths.mnt)],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    return Outcome(False, f"mount -t tmpfs failed: {out.stderr.strip()}", True)
                record["mount"] = mount_entry(paths.mnt)
            elif c.command is not None:
                server_cpus = PINNING[self.pin][0]
                argv = [*taskset(server_cpus), *c.command(self.env, paths)]
                record["command"] = shlex.join(argv)
                log_path = self.log_dir / f"{c.name}-{run}.log"
                with open(log_path, "wb") as log_file:
                    # cwd: ``python -m fusewire`` puts the working directory first on
                    # sys.path, so run from another checkout it would serve that one
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env=dict(os.environ, **c.env), cwd=REPO_DIR)
                server = Server(proc, paths.mnt, log_path)
                entry, reason = server.wait_ready(self.mount_timeout)
                if reason is not None:
                    return Outcome(False, reason, True, record)
                record["mount"] = entry
                record["server_cpus"] = _cpus_allowed(proc.pid)
            report, reason, hung = self._client(c, paths.mnt, server)
            if report is None:  # a client that hung will hang again: no more runs
                return Outcome(False, reason, hung, record)
            record.update(report)
            return Outcome(True, record=record)
        finally:
            if server is not None:
                record["server_stop"] = server.stop()
            elif c.kernel_mount == "tmpfs" and mount_entry(paths.mnt) is not None:
                subprocess.run(["umount", str(paths.mnt)], check=False)
            if mount_entry(paths.mnt) is None:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                log(f"warning: {paths.mnt} is still mounted; left {tmp} in place")

    def _client(self, c: Contender, target: Path, server: Server | None
                ) -> tuple[dict[str, Any] | None, str | None, bool]:
        """(report, None, False), or (None, why not, whether the client hung)."""
        argv = [*taskset(PINNING[self.pin][1]), sys.executable, str(CLIENT), str(target),
                "--params", json.dumps(asdict(self.params)),
                "--kind", "kernel" if c.kind == "kernel" else "fuse"]
        if server is not None:
            argv += ["--server-pid", str(server.proc.pid)]
        if c.kind == "passthrough" or c.name == "kernel_backing":
            argv.append("--cold")
        if self.workloads:
            argv += ["--workloads", self.workloads]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
        try:
            out, err = client.communicate(timeout=self.client_timeout())
        except subprocess.TimeoutExpired:
            os.killpg(client.pid, signal.SIGKILL)  # the client and its forked workers
            _, err = client.communicate()
            started = [line[len("# start "):] for line in err.decode(errors="replace").splitlines()
                       if line.startswith("# start ")]
            during = f" in workload {started[-1]}" if started else ""
            return None, f"client timed out after {self.client_timeout():.0f} s{during}", True
        except BaseException:  # interrupted: take the client down with us
            os.killpg(client.pid, signal.SIGKILL)
            client.communicate()
            raise
        if client.returncode != 0:
            tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
            return None, f"client failed (rc {client.returncode}): {tail}", False
        report: dict[str, Any] = json.loads(out)
        errors = [f"{r['workload']}: {r['error']}" for r in report["results"] if r["error"]]
        if errors:
            log(f"{c.name}: workload errors: {'; '.join(errors)}")
        return report, None, False


def _cpus_allowed(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# -- summary tables ------------------------------------------------------

@dataclass(frozen=True)
class Row:
    key: str     # workload, or workload.extra_field
    label: str


def rows_for(p: Params) -> list[Row]:
    return [
        Row("getattr", "getattr storm, stat(name) (ops/s)"),
        Row("fstat", "fstat storm, fstat(fd) (ops/s)"),
        Row("pgetattr", f"{p.procs}-process getattr storm (aggregate ops/s)"),
        Row("lookup", f"lookup storm, {p.names:,} names (ops/s)"),
        Row("readdir", f"readdir of {p.names:,} entries (entries/s)"),
        Row("fixture", f"create+close {p.names:,} empty files (files/s)"),
        Row("seqwrite", f"seq write {p.seq_mib} MiB, 128 KiB blocks + fsync (MiB/s)"),
        Row("seqread", "seq read, FUSE file's page cache dropped (MiB/s)"),
        Row("seqread_cold", "seq read, drop_caches (passthrough/backing only) (MiB/s)"),
        Row("smallfiles", f"{p.small_files:,} small files, create+write 4 KiB+close, "
            "then unlink (files/s)"),
        Row("smallfiles.create_files_s", "  create+write+close phase (files/s)"),
        Row("smallfiles.unlink_files_s", "  unlink phase (files/s)"),
    ]


CPU_ROWS: list[tuple[str, str, str]] = [
    # (workload, label, "us" per op or "s/GiB")
    ("getattr", "stat(name), µs/op", "us"),
    ("fstat", "fstat(fd), µs/op", "us"),
    ("pgetattr", "2-process stat, µs/op", "us"),
    ("lookup", "lookup, µs/op", "us"),
    ("readdir", "readdir, µs/entry", "us"),
    ("fixture", "create+close, µs/file", "us"),
    ("smallfiles", "small file create..unlink, µs/file", "us"),
    ("seqwrite", "seq write, s/GiB", "s/GiB"),
    ("seqread", "seq read, s/GiB", "s/GiB"),
    ("seqread_cold", "seq read cold, s/GiB", "s/GiB"),
]


@dataclass(frozen=True)
class Target:
    """A goal of the performance issue: ``contender`` reaches ``goal`` x ``reference``."""

    workloads: tuple[str, ...]
    contender: str
    reference: str
    goal: float


_META = ("getattr", "fstat", "pgetattr", "lookup")
TARGETS: list[Target] = [
    *(Target(_META, "fusewire_memfs", ref, goal) for ref, goal in (
        ("pyfuse3_mem", 3.0), ("fusepy_mem", 2.0), ("mfusepy_mem", 2.0),
        ("libfuse_c_st", 0.5))),
    Target(("readdir",), "fusewire_memfs", "libfuse_c_st", 0.5),
    Target(("readdir",), "fusewire_memfs", "pyfuse3_mem", 50.0),
    Target(("seqwrite", "seqread"), "fusewire_memfs", "libfuse_c_st", 0.8),
    Target(("seqwrite", "seqread"), "fusewire_pt_backing", "kernel_backing", 0.9),
    Target(("smallfiles",), "fusewire_memfs", "libfuse_c_st", 0.8),
    # issue 10: recoverable memfs side by side with plain memfs
    Target(_META, "fusewire_memfs_recoverable", "fusewire_memfs", 0.9),
    Target(("fixture",), "fusewire_memfs_recoverable", "fusewire_memfs", 0.8),
    Target(("seqwrite",), "fusewire_memfs_recoverable", "fusewire_memfs", 0.5),
]


def targets_table(contenders: dict[str, Any]) -> list[str]:
    """One row per target and workload: the measured ratio of medians, and met or not."""
    rows = []
    for t in TARGETS:
        if not (contenders.get(t.contender, {}).get("runs")
                and contenders.get(t.reference, {}).get("runs")):
            continue
        for w in t.workloads:
            mine = collect(contenders[t.contender]["runs"], w)
            ref = collect(contenders[t.reference]["runs"], w)
            if not mine or not ref or statistics.median(ref) <= 0:
                continue
            ratio = statistics.median(mine) / statistics.median(ref)
            rows.append([w, f"`{t.contender}` / `{t.reference}`", f">= {t.goal:g}",
                         f"{ratio:.2f}", "met" if ratio >= t.goal else "**not met**"])
    if not rows:
        return []
    return ["### Targets of the performance issue", "",
            "Ratio of medians from the table above; see the notes below the tables for "
            "where the time goes when a target is not met.", "",
            *table(["workload", "contender / reference", "goal", "measured", "status"], rows), ""]


#: (contender, reference, goal): at every client count >= 2 of the scaling workload
SCALING_TARGETS = [("fusewire_pt_2proc", "fusewire_pt", 1.5)]


def scaling_curves(contenders: dict[str, Any], field: str = "clients"
                   ) -> dict[str, dict[int, float]]:
    """Per contender that ran the scaling workload: client count -> median ops/s.

    ``field`` "server_cpu_s" or "client_cpu_s" gives the median CPU µs per op
    instead (server: its process tree; clients: the forked storm processes).
    """
    curves: dict[str, dict[int, float]] = {}
    for name, c in contenders.items():
        per: dict[int, list[float]] = {}
        for run in c["runs"]:
            for r in run.get("results", []):
                if r["workload"] != "scaling" or r["error"]:
                    continue
                extra = r["extra"]
                for n, value in extra.get(field, {}).items():
                    if value is None:
                        continue
                    if field != "clients":
                        ops = extra.get("ops", {}).get(n)
                        if not ops:
                            continue
                        value = value / ops * 1e6
                    per.setdefault(int(n), []).append(float(value))
        if per:
            curves[name] = {n: statistics.median(v) for n, v in sorted(per.items())}
    return curves


def scaling_table(contenders: dict[str, Any], pin: str) -> list[str]:
    """Aggregate stat/lookup ops/s per client count; ratio to the contender's 1 client."""
    curves = scaling_curves(contenders)
    if not curves:
        return []
    counts = sorted({n for curve in curves.values() for n in curve})
    rows = []
    for n in counts:
        cells = [str(n)]
        for curve in curves.values():
            if n not in curve:
                cells.append("-")
                continue
            one = curve.get(1)
            ratio = f" (\N{MULTIPLICATION SIGN}{curve[n] / one:.2f})" if one else ""
            cells.append(fmt(curve[n]) + ratio)
        rows.append(cells)
    out = ["### Scaling: stat/lookup storms from N client processes", "",
           ("Aggregate ops/s of N forked clients each stat()ing 64 names in turn (timeouts 0: "
            "LOOKUP + GETATTR per stat), median over runs; in brackets the ratio to the same "
            "contender with 1 client."
            + ("" if pin == "none" else f" **Pinned (`--pin {pin}`)**: every client shares "
               "the client CPU, so this shows no scaling; use `--pin none`.")), "",
           *table(["clients", *curves], rows), ""]
    cpu_rows = []
    server_cpu = scaling_curves(contenders, "server_cpu_s")
    client_cpu = scaling_curves(contenders, "client_cpu_s")
    for n in counts:
        cells = [str(n)]
        for name in curves:
            srv = server_cpu.get(name, {}).get(n)
            cli = client_cpu.get(name, {}).get(n)
            cells.append("-" if srv is None and cli is None else
                         f"{fmt(srv) if srv is not None else '-'} / "
                         f"{fmt(cli) if cli is not None else '-'}")
        cpu_rows.append(cells)
    if server_cpu or client_cpu:
        out += [("CPU per stat, µs (server process tree / the client processes; 10 ms "
                 "ticks for the server): throughput with N free CPUs is at most "
                 "N / (server + client)."), "",
                *table(["clients", *curves], cpu_rows), ""]
    for mine, ref, goal in SCALING_TARGETS:
        if mine in curves and ref in curves:
            for n in counts:
                if n >= 2 and n in curves[mine] and curves[ref].get(n):
                    ratio = curves[mine][n] / curves[ref][n]
                    out.append(f"- `{mine}` / `{ref}` at {n} clients: {ratio:.2f} (goal >= "
                               f"{goal:g}: {'met' if ratio >= goal else '**not met**'})")
            out.append("")
    return out


def value_of(result: dict[str, Any], key: str) -> float | None:
    """A result's rate, or for "workload.field" keys that field of its extras."""
    if result.get("error"):
        return None
    value = result["extra"].get(key.split(".", 1)[1]) if "." in key else result["rate"]
    return None if value is None else float(value)


def collect(runs: list[dict[str, Any]], key: str) -> list[float]:
    workload = key.split(".", 1)[0]
    values = []
    for run in runs:
        for r in run.get("results", []):
            if r["workload"] == workload:
                v = value_of(r, key)
                if v is not None:
                    values.append(v)
    return values


def cpu_per_op(runs: list[dict[str, Any]], workload: str, unit: str) -> list[float]:
    values = []
    for run in runs:
        for r in run.get("results", []):
            if r["workload"] != workload or r["error"] or r["server_cpu_s"] is None:
                continue
            if r["ops"] <= 0:
                continue
            if unit == "us":
                values.append(r["server_cpu_s"] / r["ops"] * 1e6)
            else:  # ops are MiB
                values.append(r["server_cpu_s"] / r["ops"] * 1024)
    return values


def fmt(x: float) -> str:
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.2f}M"
    if ax >= 1e4:
        return f"{x / 1e3:.1f}k"
    if ax >= 1e3:
        return f"{x / 1e3:.2f}k"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# Ratios are taken against the first of these that ran, per contender group.
BASELINES: dict[str, list[str]] = {
    "memfs": ["libfuse_c_st", "libfuse_c_mt"],
    "passthrough": ["libfuse_c_pt", "libfuse_c_st"],
}
GROUP_TEXT = {"memfs": "in-memory servers and kernel_tmpfs",
              "passthrough": "passthroughs and kernel_backing"}


def summarize(data: dict[str, Any], override: str | None = None) -> list[str]:
    params = Params(**data["params"])
    contenders = data["contenders"]
    ran = [name for name, c in contenders.items() if c["runs"]]
    skipped = [(name, c["reason"]) for name, c in contenders.items() if not c["runs"]]
    baselines = {group: (override if override in ran else
                         next((b for b in names if b in ran), None))
                 for group, names in BASELINES.items()}
    baseline_of = {name: baselines[contenders[name]["group"]] for name in ran}
    meta = data["meta"]
    out: list[str] = []
    if meta["quick"]:
        out += [("**Preliminary: a `--quick` run** (reduced sizes and time caps, "
                 f"{meta['runs']} run). Do not quote these numbers."), ""]
    out += [
        (f"Generated {meta['date']} by `{meta['command']}`: {meta['runs']} run(s) per "
         f"contender, round-robin; CPU placement `--pin {meta['pin']}` "
         f"({meta['pin_text']}); {meta['machine']}; 1-minute load average "
         f"{meta.get('loadavg_start', ['?'])[0]} before and "
         f"{meta.get('loadavg_end', ['?'])[0]} after (the latter includes the benchmark)."),
        "",
    ]
    if any(baselines.values()):
        used = [f"`{b}` for the {GROUP_TEXT[g]}" for g, b in baselines.items() if b]
        out += [("Cells: median over runs, and in brackets the ratio to the median of the "
                 f"libfuse C server of the same kind ({'; '.join(used)}). Higher is better."),
                ""]
    header = ["workload", *ran]
    rows = []
    for row in rows_for(params):
        cells = [row.label]
        for name in ran:
            vals = collect(contenders[name]["runs"], row.key)
            if not vals:
                cells.append("-")
                continue
            med = statistics.median(vals)
            base = baseline_of[name]
            base_vals = collect(contenders[base]["runs"], row.key) if base else []
            ratio = ""
            if base_vals and statistics.median(base_vals) > 0:
                ratio = f" (\N{MULTIPLICATION SIGN}{med / statistics.median(base_vals):.2f})"
            cells.append(fmt(med) + ratio)
        if any(cell != "-" for cell in cells[1:]):
            rows.append(cells)
    if rows:
        out += ["### Median", "", *table(header, rows), ""]
    out += targets_table(contenders)
    out += scaling_table(contenders, meta["pin"])

    if any(len(contenders[name]["runs"]) > 1 for name in ran):
        rows = []
        for row in rows_for(params):
            cells = [row.label]
            for name in ran:
                vals = collect(contenders[name]["runs"], row.key)
                cells.append(f"{fmt(min(vals))}-{fmt(max(vals))} (n={len(vals)})"
                             if vals else "-")
            if any(cell != "-" for cell in cells[1:]):
                rows.append(cells)
        if rows:
            out += ["### Min-max over runs", "", *table(header, rows), ""]

    fuse_ran = [n for n in ran if contenders[n]["kind"] != "kernel"]
    rows = []
    for workload, label, unit in CPU_ROWS:
        cells = [label]
        for name in fuse_ran:
            vals = cpu_per_op(contenders[name]["runs"], workload, unit)
            cells.append(fmt(statistics.median(vals)) if vals else "-")
        if any(cell != "-" for cell in cells[1:]):
            rows.append(cells)
    totals = ["server CPU per run, s (all workloads)"]
    idle = ["RSS after mount, MiB"]
    peak = ["peak RSS (VmHWM), MiB"]
    threads = ["threads at the end"]
    procs = ["processes at the end"]
    for name in fuse_ran:
        runs = contenders[name]["runs"]
        cpu = [r["server_cpu_s"] for r in runs if r.get("server_cpu_s") is not None]
        totals.append(fmt(statistics.median(cpu)) if cpu else "-")
        idle.append(_mem(runs, "server_start", "VmRSS"))
        peak.append(_mem(runs, "server_end", "VmHWM"))
        threads.append(_mem(runs, "server_end", "Threads", scale=1))
        procs.append(_mem(runs, "server_end", "processes", scale=1))
    rows += [totals, idle, peak, threads]
    if any(cell not in ("-", "1.00") for cell in procs[1:]):
        rows.append(procs)
    if fuse_ran:
        out += ["### Server CPU and memory (median)", "",
                ("CPU is utime+stime of the server's process tree (all threads, and "
                 "child processes) from /proc/PID/stat, in 10 ms ticks: short workloads "
                 "are coarse. Memory is summed over that tree."), "",
                *table(["", *fuse_ran], rows), ""]

    capped = []
    errors = []
    for name in ran:
        for run in contenders[name]["runs"]:
            for r in run.get("results", []):
                if r["error"]:
                    errors.append(f"`{name}` {r['workload']} (run {run['run']}: {r['error']})")
                elif r["extra"].get("capped"):
                    capped.append(f"`{name}` {r['workload']} (run {run['run']}: "
                                  f"{fmt(r['ops'])} {r['unit'].split('/')[0]})")
    if capped:
        out += ["Hit a time cap (rates cover what was done): " + "; ".join(capped) + ".", ""]
    if errors:
        out += ["Workloads that failed (left out above): " + "; ".join(errors) + ".", ""]
    untidy = sorted({name for name, c in contenders.items()
                     for run in c["runs"] + c.get("failures", [])
                     if run.get("server_stop", {}).get("leftover")
                     or run.get("server_stop", {}).get("killed")})
    if untidy:
        out += ["Did not exit cleanly on SIGTERM (needed SIGKILL, or left child processes "
                "that the harness then stopped): " + ", ".join(f"`{n}`" for n in untidy)
                + ".", ""]

    out += ["### Contenders", ""]
    rows = []
    for name, c in contenders.items():
        status = "ran" if c["runs"] else f"not run: {c['reason'] or 'interrupted'}"
        rows.append([f"`{name}`", c["kind"], c["summary"], status])
    out += [*table(["contender", "kind", "what", "status"], rows), ""]
    commands = [(n, contenders[n]["command"]) for n in ran if contenders[n]["command"]]
    if commands:
        out += [("Server command lines (MNT and SRC are fresh directories under "
                 "--workdir each run):"), ""]
        out += [f"- `{n}`: `{cmd}`" for n, cmd in commands]
        out += [""]
    if skipped:
        out += ["Not run: " + "; ".join(f"`{n}` ({r})" for n, r in skipped) + ".", ""]
    return out


def _mem(runs: list[dict[str, Any]], where: str, key: str, scale: int = 1024) -> str:
    vals = [r[where][key] / scale for r in runs if r.get(where) and r[where].get(key)]
    return fmt(statistics.median(vals)) if vals else "-"


def write_doc(path: Path, lines: list[str]) -> None:
    block = "\n".join([DOC_BEGIN, *lines, DOC_END])
    if path.exists():
        text = path.read_text()
        if DOC_BEGIN in text and DOC_END in text:
            head, _, rest = text.partition(DOC_BEGIN)
            _, _, tail = rest.partition(DOC_END)
            text = head + block + tail
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = DOC_TEMPLATE.format(block=block)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- main ----------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    names = ", ".join(c.name for c in CONTENDERS)
    parser = argparse.ArgumentParser(
        description="Mount each contender, run the workloads, write docs/performance.md.",
        epilog=f"contenders: {names}")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and time caps, 1 run (unless --runs)")
    parser.add_argument("--runs", type=int, default=None, help="runs per contender (default 3)")
    parser.add_argument("--only", default=None,
                        help="comma-separated contenders or prefixes (kernel, libfuse_c, ...)")
    parser.add_argument("--pin", choices=sorted(PINNING), default="same",
                        help="taskset the server and the client onto CPU 0 (same), "
                        "server 1 / client 0 (split), or not at all (none); default same")
    parser.add_argument("--workloads", default=None,
                        help="comma-separated subset of fsclient.py's workloads")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="measure nothing: write the tables from a --json file")
    parser.add_argument("--doc", type=Path, default=REPO_DIR / "docs" / "performance.md",
                        help="markdown file whose marked section gets the tables")
    parser.add_argument("--no-doc", action="store_true", help="do not write --doc")
    parser.add_argument("--baseline", default=None,
                        help="take every ratio against this contender (default: libfuse_c_st "
                        "for in-memory servers, libfuse_c_pt for passthroughs)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get/pip install missing peers: skip them")
    parser.add_argument("--bench-venv", type=Path, default=Path("/work/bench-venv"),
                        help="venv for the Python peers (created if missing)")
    parser.add_argument("--project-python", type=Path, default=Path("/work/venv/bin/python"),
                        help="python that runs fusewire")
    parser.add_argument("--build-dir", type=Path, default=BENCH_DIR / "build",
                        help="where the C servers are compiled")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="parent of the fresh mount and source directories")
    parser.add_argument("--mount-timeout", type=float, default=20.0,
                        help="seconds to wait for a server to mount")
    parser.add_argument("--client-timeout", type=float, default=None,
                        help="seconds before a client run is killed (default: from the caps)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the server logs even when every contender ran")
    return parser.parse_args()


def _command_template(c: Contender, env: Env, cpus: str | None) -> str | None:
    """The server's command line with MNT and SRC for the fresh directories."""
    if c.command is None:
        return None
    return shlex.join([*taskset(cpus), *c.command(env, Paths(Path("MNT"), Path("SRC")))])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if args.render is not None:
        lines = summarize(json.loads(args.render.read_text()), args.baseline)
        print("\n".join(lines))
        if not args.no_doc:
            write_doc(args.doc, lines)
            log(f"wrote {args.doc}")
        return 0
    if os.geteuid() != 0:
        log("warning: not root: tmpfs mounts, drop_caches and FUSE mounts may fail")
    params = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 3)
    try:
        chosen = select(args.only)
    except ValueError as exc:
        log(str(exc))
        return 2
    if args.pin != "none" and shutil.which("taskset") is None:
        log("taskset not found: running unpinned")
        args.pin = "none"
    env = Env(build_dir=args.build_dir, bench_venv=args.bench_venv,
              project_python=args.project_python, install=not args.no_install, log=log)
    log_dir = Path(tempfile.mkdtemp(prefix="fwbench-logs-", dir=args.workdir))
    bench = Bench(env, params, args.pin, args.workdir, log_dir, args.mount_timeout,
                  args.workloads, args.client_timeout)
    # SIGTERM to the harness unwinds like Ctrl-C, through every cleanup below.
    signal.signal(signal.SIGTERM, _interrupt)

    server_cpus, client_cpus = PINNING[args.pin]
    pin_text = ("unpinned" if server_cpus is None
                else f"server on CPU {server_cpus}, client on CPU {client_cpus}")
    data: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "command": "python bench/run.py " + shlex.join(sys.argv[1:]),
            "quick": args.quick, "runs": runs, "pin": args.pin, "pin_text": pin_text,
            "machine": (f"{os.cpu_count()} CPUs, Linux {platform.release()}, "
                        f"Python {platform.python_version()}"),
            "logs": str(log_dir),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "params": asdict(params),
        "contenders": {c.name: {"kind": c.kind, "group": c.group, "summary": c.summary,
                                "command": _command_template(c, env, server_cpus),
                                "reason": None, "runs": []} for c in chosen},
    }
    active: list[Contender] = []
    for c in chosen:
        reason = c.prepare(env)
        if reason is None:
            active.append(c)
        else:
            log(f"{c.name}: not run: {reason}")
            data["contenders"][c.name]["reason"] = reason

    started = time.monotonic()
    try:
        for run in range(1, runs + 1):
            for c in list(active):
                log(f"run {run}/{runs}: {c.name}")
                t0 = time.monotonic()
                outcome = bench.measure(c, run)
                entry = data["contenders"][c.name]
                if outcome.ok:
                    outcome.record["wall_s"] = round(time.monotonic() - t0, 1)
                    entry["runs"].append(outcome.record)
                    log(f"  {c.name} done in {outcome.record['wall_s']} s")
                else:
                    log(f"  {c.name}: not run: {outcome.reason}")
                    entry["reason"] = outcome.reason
                    entry.setdefault("failures", []).append(outcome.record | {
                        "reason": outcome.reason})
                    if outcome.fatal:
                        active.remove(c)
    except KeyboardInterrupt:
        data["meta"]["interrupted"] = True
        log("interrupted")
    data["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    failed = any(c["reason"] for c in data["contenders"].values())
    if failed or args.keep_logs:
        log(f"measured in {time.monotonic() - started:.0f} s; server logs in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
        data["meta"]["logs"] = None
        log(f"measured in {time.monotonic() - started:.0f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {args.json}")
    lines = summarize(data, args.baseline)
    print("\n".join(lines))
    if args.no_doc:
        pass
    elif data["meta"].get("interrupted"):
        log(f"not writing {args.doc} after an interrupted run")
    else:
        write_doc(args.doc, lines)
        log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
