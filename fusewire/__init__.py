"""fusewire: the Linux FUSE wire protocol in pure Python, with crash recovery."""

from fusewire.operations import Notifier, Operations
from fusewire.recovery_api import HandleRecovery, RecoveryMode, ReplayRecovery, now_ns
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
    "HandleRecovery",
    "Lock",
    "Notifier",
    "Operations",
    "RecoveryMode",
    "ReplayRecovery",
    "RequestContext",
    "SetattrFields",
    "StatvfsData",
    "now_ns",
]
