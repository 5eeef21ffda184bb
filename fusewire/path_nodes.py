"""The records of :class:`fusewire.PathAdapter`'s inode table: nodes and directory handles."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusewire.types import (
    EntryAttributes,
)

if TYPE_CHECKING:
    pass

from fusewire.path_api import Attributes

__all__: list[str] = []

_ROOT = 1
_HIDDEN_PREFIX = b".fuse_hidden"


class _Node:
    __slots__ = ("hidden", "ident", "last", "links", "nlookup", "nodeid", "opens",
                 "stale_path")

    def __init__(self, nodeid: int) -> None:
        self.nodeid = nodeid
        #: (parent nodeid, name) of each name this node is known under
        self.links: list[tuple[int, bytes]] = []
        #: the subset of links that are hidden open-unlinked names
        self.hidden: list[tuple[int, bytes]] = []
        self.nlookup = 0
        self.opens = 0
        #: the user's st_ino (use_ino), or None
        self.ident: int | None = None
        #: the last path of a node that lost all its names
        self.stale_path = b"/"
        #: the last attributes answered (fstat of a removed, still open directory)
        self.last: EntryAttributes | None = None


class _DirHandle:
    __slots__ = ("entries", "nodeid", "user_fh")

    def __init__(self, nodeid: int, user_fh: int) -> None:
        self.nodeid = nodeid
        self.user_fh = user_fh
        self.entries: list[tuple[bytes, Attributes | None]] | None = None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent == b"/" else parent + b"/" + name


