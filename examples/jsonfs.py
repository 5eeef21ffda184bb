"""A read-only filesystem over a JSON document (or any nested dict).

Usage: python examples/jsonfs.py DATA.json MOUNTPOINT [-o OPTIONS]

Objects become directories, everything else a file holding its value: strings
as UTF-8 text, other values as JSON.  ``{"etc": {"motd": "hi"}, "n": 3}``
gives ``etc/motd`` ("hi") and ``n`` ("3").  Written against
``fusewire.PathOperations``: the filesystem only answers questions about
paths; anything that would change it fails with EROFS.
"""

from __future__ import annotations

import errno
import json
import stat
import sys
import time
from collections.abc import Iterator
from typing import Any

from fusewire import EntryAttributes, FUSEError, PathAdapter, PathOperations
from fusewire.server import Server


class JsonFS(PathOperations):
    """The tree ``data``: dicts are directories, other values are files."""

    entry_timeout = attr_timeout = 60.0      # nothing ever changes

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.mtime_ns = time.time_ns()

    def _node(self, path: str) -> Any:
        node: Any = self.data
        for part in path.strip("/").split("/") if path != "/" else []:
            if not isinstance(node, dict) or part not in node:
                raise FUSEError(errno.ENOENT)
            node = node[part]
        return node

    @staticmethod
    def _content(value: Any) -> bytes:
        return value.encode() if isinstance(value, str) else json.dumps(value).encode()

    def getattr(self, path: str, fh: int | None = None) -> EntryAttributes:
        node = self._node(path)
        t = self.mtime_ns
        if isinstance(node, dict):
            return EntryAttributes(st_mode=stat.S_IFDIR | 0o555, st_nlink=2,
                                   st_atime_ns=t, st_mtime_ns=t, st_ctime_ns=t)
        size = len(self._content(node))
        return EntryAttributes(st_mode=stat.S_IFREG | 0o444, st_size=size,
                               st_blocks=(size + 511) // 512, st_atime_ns=t,
                               st_mtime_ns=t, st_ctime_ns=t)

    def readdir(self, path: str, fh: int) -> Iterator[str]:
        node = self._node(path)
        if not isinstance(node, dict):
            raise FUSEError(errno.ENOTDIR)
        yield from node

    def open(self, path: str, flags: int) -> int:
        if flags & 3 != 0:                   # O_WRONLY / O_RDWR
            raise FUSEError(errno.EROFS)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self._content(self._node(path))[offset:offset + size]


def main(argv: list[str]) -> int:
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o" and i + 1 < len(argv)]
    paths = [a for i, a in enumerate(argv) if a != "-o" and (i == 0 or argv[i - 1] != "-o")]
    if len(paths) != 2:
        sys.stderr.write("usage: python jsonfs.py DATA.json MOUNTPOINT [-o OPTIONS]\n")
        return 2
    try:
        with open(paths[0]) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"jsonfs.py: {paths[0]}: {exc}\n")
        return 1
    if not isinstance(data, dict):
        sys.stderr.write(f"jsonfs.py: {paths[0]}: the top level must be an object\n")
        return 1
    Server(PathAdapter(JsonFS(data)), paths[1], ["ro", *options], fsname="jsonfs").run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
