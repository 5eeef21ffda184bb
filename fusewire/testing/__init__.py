"""Testing toolkit: kernel-side wire codecs, hypothesis strategies, an emulated kernel,
a ready state machine and a pytest plugin (see docs/testing.md)."""

from __future__ import annotations

from fusewire.testing.emulator import KernelEmulator, NoReplyError, Pending
from fusewire.wire import (
    KERNEL_FLAGS,
    KernelRuleError,
    ReplyRuleError,
    ReplySizeError,
    decode_notify,
    decode_reply,
    encode_init,
    encode_request,
    make_session,
)

__all__ = [
    "KERNEL_FLAGS",
    "KernelEmulator",
    "KernelRuleError",
    "NoReplyError",
    "Pending",
    "ReplyRuleError",
    "ReplySizeError",
    "decode_notify",
    "decode_reply",
    "encode_init",
    "encode_request",
    "make_session",
]
