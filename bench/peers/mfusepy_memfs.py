"""An in-memory filesystem on mfusepy (here on libfuse 3's high-level API), for bench/run.py.

Usage: FUSE_LIBRARY_NAME=fuse3 python mfusepy_memfs.py MOUNTPOINT [--single] [--debug]

The filesystem logic is in pathmemfs.py, shared with fusepy_memfs.py. mfusepy
picks libfuse 2 when both are installed, so bench/run.py sets
FUSE_LIBRARY_NAME=fuse3. Timeouts are 0. libfuse handles SIGTERM: it unmounts
and exits.
"""

from __future__ import annotations

import argparse

import mfusepy  # type: ignore[import-untyped]
from pathmemfs import PathMemFS


class MemFS(PathMemFS, mfusepy.Operations):  # type: ignore[misc]
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--single", action="store_true", help="single-threaded loop (-s)")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output (-d)")
    args = parser.parse_args()
    mfusepy.FUSE(MemFS(), args.mountpoint, foreground=True, nothreads=args.single,
                 debug=args.debug, fsname="mfusepy_memfs", subtype="mfusepy_memfs",
                 attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()
