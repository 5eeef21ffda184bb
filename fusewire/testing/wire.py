"""Kernel-side codecs for tests: re-exported from the core module :mod:`fusewire.wire`.

The request encoder and the one reply decoder live in the sans-IO core
(:mod:`fusewire.wire`); this module keeps the old import path working.
"""

from __future__ import annotations

from fusewire.wire import (
    KERNEL_FLAGS,
    NAME_MAX,
    READLINK_MAX,
    Dirent,
    DirentPlus,
    EntryWithHandle,
    KernelRuleError,
    ReplyRuleError,
    ReplySizeError,
    SessionLike,
    decode_dirents,
    decode_notify,
    decode_reply,
    encode_init,
    encode_request,
    make_session,
    split_reply,
)

__all__ = [
    "KERNEL_FLAGS",
    "NAME_MAX",
    "READLINK_MAX",
    "Dirent",
    "DirentPlus",
    "EntryWithHandle",
    "KernelRuleError",
    "ReplyRuleError",
    "ReplySizeError",
    "SessionLike",
    "decode_dirents",
    "decode_notify",
    "decode_reply",
    "encode_init",
    "encode_request",
    "make_session",
    "split_reply",
]
