"""fusewire: the Linux FUSE wire protocol in pure Python, with crash recovery."""

from fusewire.operations import Notifier, Operations
from fusewire.types import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    Lock,
    Pending,
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
    "Pending",
    "RequestContext",
    "SetattrFields",
    "StatvfsData",
]
