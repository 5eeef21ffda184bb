"""``fusewire demo``: mount memfs on a temporary directory, use it, unmount."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

__all__ = ["run_demo"]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_demo() -> int:
    """Mount memfs in a child process, exercise it with ordinary tools, unmount."""
    from fusewire.server import mount as _mount

    mnt = tempfile.mkdtemp(prefix="fusewire-demo-")
    _say(f"$ fusewire mount memfs {mnt}")
    rc = subprocess.call([sys.executable, "-m", "fusewire", "mount", "memfs", mnt])
    if rc != 0:
        _say("mount failed")
        return rc
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                if f" {mnt} " in line:
                    _say("  mounted: " + line.strip())
        os.makedirs(os.path.join(mnt, "docs/notes"))
        with open(os.path.join(mnt, "docs/hello.txt"), "w", encoding="utf-8") as f:
            f.write("hello from fusewire\n" * 3)
        os.symlink("hello.txt", os.path.join(mnt, "docs/link"))
        os.link(os.path.join(mnt, "docs/hello.txt"), os.path.join(mnt, "docs/hard"))
        os.setxattr(os.path.join(mnt, "docs/hello.txt"), "user.colour", b"blue")
        for cmd in (["ls", "-la", os.path.join(mnt, "docs")],
                    ["cat", os.path.join(mnt, "docs/link")],
                    ["stat", "-c", "%n: %s bytes, %h links, mode %A",
                     os.path.join(mnt, "docs/hello.txt")],
                    ["df", "-h", mnt]):
            _say("$ " + " ".join(cmd))
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            _say("  " + out.strip().replace("\n", "\n  "))
        colour = os.getxattr(os.path.join(mnt, "docs/hello.txt"), "user.colour")
        _say(f"$ getfattr user.colour -> {colour.decode()}")
        t0 = time.perf_counter()
        n = 2000
        for _ in range(n):
            os.stat(os.path.join(mnt, "docs/hello.txt"))
        _say(f"{n} stat() calls: {n / (time.perf_counter() - t0):,.0f}/s")
    finally:
        _say(f"$ fusewire umount {mnt}")
        _mount.unmount(mnt, lazy=True)
        os.rmdir(mnt)
    _say("demo finished: memfs mounted, used and unmounted")
    return 0
