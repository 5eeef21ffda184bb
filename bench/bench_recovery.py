"""Recovery benchmarks: takeover latency with a large node table, and the cost of
recoverable mode on a metadata workload.

    python bench/bench_recovery.py [--nodes 100000] [--pt-nodes 20000] [--ops 20000]

Takeover latency is measured for memfs (snapshot + replayed log) and for
passthrough (nodes and handles reopened by file handle).

Needs root.  Everything it starts is killed by pid and unmounted at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusewire.recovery import commands, wire  # noqa: E402
from fusewire.server import mount as fm  # noqa: E402
from fusewire.testing.procs import children as _children  # noqa: E402
from fusewire.testing.procs import unmount_and_kill  # noqa: E402


class Recoverable:
    def __init__(self, mnt: Path, env: dict[str, str],
                 opts: str = "entry_timeout=60,attr_timeout=60", fs: str = "memfs",
                 source: Path | None = None) -> None:
        self.mnt = mnt
        paths = [str(source), str(mnt)] if source is not None else [str(mnt)]
        self.keeper = subprocess.Popen(
            [sys.executable, "-m", "fusewire.recovery.keeper", fs, *paths,
             "-o", opts], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pids: set[int] = set()
        st = commands.wait_ready(str(mnt), 30, keeper=self.keeper)
        assert st is not None

    def status(self) -> dict[str, object]:
        st = commands.status(str(self.mnt), 60)
        for k in ("server_pid", "spare_pid"):
            if st.get(k):
                self.pids.add(int(st[k]))  # type: ignore[call-overload]
        return st

    def close(self) -> None:
        unmount_and_kill(self.mnt, self.pids | _children(self.keeper.pid) | {self.keeper.pid})
        self.keeper.wait(10)


def wait_spare(r: Recoverable, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if r.status().get("spare_pid"):
            time.sleep(1.0)      # let the spare finish importing and queue its attach
            return
        time.sleep(0.05)


def takeover_latency(base: Path, env: dict[str, str], nodes: int, compact_first: bool,
                     rounds: int = 3, fs: str = "memfs") -> dict[str, float]:
    mnt = base / f"lat-{fs}-{int(compact_first)}"
    mnt.mkdir()
    source = None
    if fs == "passthrough":
        source = base / f"src-{fs}-{int(compact_first)}"
        source.mkdir()
    r = Recoverable(mnt, env, fs=fs, source=source)
    try:
        d = mnt / "d"
        d.mkdir()
        t = time.monotonic()
        for i in range(nodes):
            os.mknod(d / f"n{i}")
        fill = time.monotonic() - t
        if compact_first:
            old = r.status()["server_pid"]
            wire.request(wire.socket_path(str(mnt)), {"op": "upgrade"}, 120)
            commands.wait_ready(str(mnt), 120, after_pid=old)  # type: ignore[arg-type]
        best = []
        inner = []
        for k in range(rounds):
            wait_spare(r)
            st = r.status()
            pid = st["server_pid"]
            assert isinstance(pid, int)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            try:
                os.stat(mnt / f"fresh{k}")       # uncached: blocks until a server answers
            except FileNotFoundError:
                pass
            best.append((time.monotonic() - t0) * 1000)
            st2 = commands.wait_ready(str(mnt), 60, after_pid=pid)
            assert st2 is not None
            inner.append(float(st2["takeover_ms"]))  # type: ignore[arg-type]
        st = r.status()
        return {"nodes": float(st["nodes"]), "fill_s": fill,  # type: ignore[arg-type]
                "kill_to_answer_ms": min(best), "kill_to_answer_ms_max": max(best),
                "successor_takeover_ms": min(inner),
                "journal_MB": float(st["journal_bytes"]) / 1e6}  # type: ignore[arg-type]
    finally:
        r.close()


def metadata_storm(root: Path, ops: int) -> float:
    d = root / "storm"
    d.mkdir()
    t = time.monotonic()
    for i in range(ops):
        p = d / f"f{i}"
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        os.stat(p)
        os.stat(p)
    return 3 * ops / (time.monotonic() - t)


def throughput(base: Path, env: dict[str, str], ops: int) -> dict[str, float]:
    out = {}
    m1 = base / "plain"
    m1.mkdir()
    plain = subprocess.Popen([sys.executable, "-m", "fusewire", "mount", "memfs", str(m1),
                              "-f", "-o", "entry_timeout=1,attr_timeout=1"], env=env,
                             stdin=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.ismount(m1):
                break
            time.sleep(0.05)
        os.listdir(m1)
        out["plain_ops_s"] = metadata_storm(m1, ops)
    finally:
        try:
            fm.unmount(str(m1), lazy=True)
        except OSError:
            pass
        plain.kill()
        plain.wait()
    m2 = base / "rec"
    m2.mkdir()
    r = Recoverable(m2, env, "entry_timeout=1,attr_timeout=1")
    try:
        wait_spare(r)   # the spare's start-up would otherwise compete for the CPU
        out["recoverable_ops_s"] = metadata_storm(m2, ops)
    finally:
        r.close()
    out["overhead_pct"] = 100 * (1 - out["recoverable_ops_s"] / out["plain_ops_s"])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--pt-nodes", type=int, default=20_000,
                   help="nodes for the passthrough takeover (files on the real disk)")
    p.add_argument("--ops", type=int, default=20_000)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fwbench-rec-"))
    env = dict(os.environ, PYTHONPATH=str(REPO), FUSEWIRE_RUN_DIR=str(base / "run"))
    os.environ["FUSEWIRE_RUN_DIR"] = env["FUSEWIRE_RUN_DIR"]
    rows = []
    for compact in (True, False):
        res = takeover_latency(base, env, args.nodes, compact)
        rows.append(("memfs, " + ("after compaction" if compact else
                                  "full replay of the log"), res))
    for compact in (True, False):
        res = takeover_latency(base, env, args.pt_nodes, compact, fs="passthrough")
        rows.append(("passthrough, " + ("after compaction" if compact else
                                        "node keys in the log"), res))
    tp = throughput(base, env, args.ops)
    print(f"{'case':40} {'nodes':>8} {'kill->answer ms':>16} {'successor ms':>13} "
          f"{'journal MB':>10}")
    for name, res in rows:
        print(f"{name:40} {res['nodes']:8.0f} {res['kill_to_answer_ms']:16.1f} "
              f"{res['successor_takeover_ms']:13.1f} {res['journal_MB']:10.1f}")
    print()
    print(f"metadata storm (create+2 stat), {args.ops} files:")
    print(f"  plain       {tp['plain_ops_s']:10.0f} ops/s")
    print(f"  recoverable {tp['recoverable_ops_s']:10.0f} ops/s  "
          f"(overhead {tp['overhead_pct']:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
