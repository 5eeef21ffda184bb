"""An in-memory filesystem on fusepy (libfuse 2's high-level API), for bench/run.py.

Usage: python fusepy_memfs.py MOUNTPOINT [--single] [--debug]

The filesystem logic is in pathmemfs.py, shared with mfusepy_memfs.py.
Timeouts are 0 and big_writes is on, so the kernel sends 128 KiB WRITEs as the
libfuse 3 peers get by default. libfuse handles SIGTERM: it unmounts and exits.
"""

from __future__ import annotations

import argparse

import fuse  # type: ignore[import-untyped]
from pathmemfs import PathMemFS


class MemFS(PathMemFS, fuse.Operations):  # type: ignore[misc]
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--single", action="store_true", help="single-threaded loop (-s)")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output (-d)")
    args = parser.parse_args()
    fuse.FUSE(MemFS(), args.mountpoint, foreground=True, nothreads=args.single,
              debug=args.debug, fsname="fusepy_memfs", subtype="fusepy_memfs",
              attr_timeout=0, entry_timeout=0, negative_timeout=0, big_writes=True)


if __name__ == "__main__":
    main()
