"""Opcodes, notification codes, flag families, constants and the OPS table."""

from fusewire.opcodes.flags import *  # noqa: F403
from fusewire.opcodes.flags import __all__ as _flags_all
from fusewire.opcodes.table import (
    DRAFT_OPS,
    NOTIFICATIONS,
    OPS,
    PARENT_HANDLE_OPS,
    UNSUPPORTED,
    NotifyInfo,
    OpInfo,
    Reply,
    Trailing,
    ops_for_profile,
    ops_where,
)

__all__ = [
    *_flags_all,
    "DRAFT_OPS",
    "NOTIFICATIONS",
    "OPS",
    "PARENT_HANDLE_OPS",
    "UNSUPPORTED",
    "NotifyInfo",
    "OpInfo",
    "Reply",
    "Trailing",
    "ops_for_profile",
    "ops_where",
]
