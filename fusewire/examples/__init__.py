"""Example filesystems, and building one from a spec string.

``memfs`` (in memory) and ``passthrough`` (mirrors a directory) live here;
:func:`build_ops` turns a spec (``memfs``, ``passthrough`` or
``MODULE:CLASS``) and ``-o`` style extras into an :class:`~fusewire.Operations`
instance.  It is the one place that knows the spec syntax: the CLI, the
recovery successor and capture replay all call it.  It raises
:class:`~fusewire.errors.UsageError` (a :class:`ValueError`) for a bad spec;
callers decide how to report it (the CLI prints one line).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, MutableMapping

from fusewire.errors import UsageError
from fusewire.operations import Operations

__all__ = ["EXAMPLES", "build_ops"]

#: Spec names of the bundled examples.
EXAMPLES = ("memfs", "passthrough")


def _float(extra: MutableMapping[str, str], key: str, default: float) -> float:
    value = extra.pop(key, None)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"-o {key}={value}: not a number of seconds") from None


def build_ops(kind: str, source: str | None, extra: MutableMapping[str, str]) -> Operations:
    """Instantiate the filesystem ``kind`` names.

    ``kind`` is ``memfs``, ``passthrough`` (which needs ``source``, the
    directory to mirror) or ``MODULE:CLASS`` (any zero-argument callable
    returning an :class:`~fusewire.Operations`).  Consumes the options it
    understands from ``extra`` (entry_timeout, attr_timeout,
    negative_timeout in seconds; kernel_passthrough) and leaves the rest.

    Raises :class:`UsageError` for an unknown kind, a missing source, a
    module or class that cannot be loaded, a factory that returns something
    else than an ``Operations``, or a malformed timeout.
    """
    entry = _float(extra, "entry_timeout", 1.0)
    attr = _float(extra, "attr_timeout", 1.0)
    negative = _float(extra, "negative_timeout", 0.0)
    if kind == "memfs":
        from fusewire.examples.memfs import MemFS

        return MemFS(entry_timeout=entry, attr_timeout=attr, negative_timeout=negative)
    if kind == "passthrough":
        from fusewire.examples.passthrough import Passthrough

        if source is None:
            raise UsageError("passthrough needs a SOURCE directory")
        kp = "kernel_passthrough" in extra
        extra.pop("kernel_passthrough", None)
        return Passthrough(source, entry_timeout=entry, attr_timeout=attr,
                           kernel_passthrough=kp)
    if ":" in kind:
        module_name, _, cls = kind.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UsageError(f"{kind}: cannot import {module_name!r}: {e}") from e
        try:
            factory: Callable[[], object] = getattr(module, cls)
        except AttributeError:
            raise UsageError(f"{kind}: module {module_name!r} has no {cls!r}") from None
        ops = factory()
        if not isinstance(ops, Operations):
            raise UsageError(f"{kind} is not an Operations subclass")
        return ops
    raise UsageError(f"unknown filesystem {kind!r} (memfs, passthrough or MODULE:CLASS)")
