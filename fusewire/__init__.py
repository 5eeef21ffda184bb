"""fusewire: the Linux FUSE wire protocol in pure Python, with crash recovery."""

from typing import TYPE_CHECKING, Any

from fusewire.operations import Notifier, Operations
from fusewire.pathops import PathAdapter, PathOperations
from fusewire.recovery_api import (
    HandleRecovery,
    RecoveryMode,
    ReplayRecovery,
    nothing_changed,
    now_ns,
)
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

if TYPE_CHECKING:
    from fusewire.readdir import ReaddirToken

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
    "PathAdapter",
    "PathOperations",
    "Pending",
    "RecoveryMode",
    "ReplayRecovery",
    "RequestContext",
    "SetattrFields",
    "StatvfsData",
    "nothing_changed",
    "now_ns",
]

__all__ += ["ReaddirToken"]


def __getattr__(name: str) -> Any:
    # ReaddirToken is loaded on first use: it needs the struct codecs (construct),
    # and ``import fusewire`` stays standard-library only for helpers such as
    # fusewire.server.mount that may run where construct is not importable.
    if name == "ReaddirToken":
        from fusewire.readdir import ReaddirToken

        return ReaddirToken
    raise AttributeError(f"module 'fusewire' has no attribute {name!r}")
