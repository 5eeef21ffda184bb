"""fusewire: the Linux FUSE wire protocol in pure Python, with crash recovery."""

from fusewire.operations import Notifier, Operations
from fusewire.pathops import PathAdapter, PathOperations
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

ROOT_INODE = 1

__version__ = "0.1.0"

__all__ = [
    "ROOT_INODE",
    "EntryAttributes",
    "FUSEError",
    "FileInfo",
    "Lock",
    "Notifier",
    "Operations",
    "PathAdapter",
    "PathOperations",
    "RequestContext",
    "SetattrFields",
    "StatvfsData",
]
