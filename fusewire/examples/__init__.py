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
import os
from collections.abc import Callable, MutableMapping

from fusewire.errors import UsageError
from fusewire.operations import Operations
from fusewire.pathops import PathAdapter, PathOperations

__all__ = ["EXAMPLES", "FS_ARG_PREFIX", "FS_OPTIONS", "build_ops", "fs_args"]

#: Spec names of the bundled examples.
EXAMPLES = ("memfs", "passthrough")


#: ``-o`` options each example consumes (the CLI refuses any other, with this list)
FS_OPTIONS: dict[str, tuple[str, ...]] = {
    "memfs": ("entry_timeout", "attr_timeout", "negative_timeout", "acl"),
    "passthrough": ("entry_timeout", "attr_timeout", "kernel_passthrough"),
}
#: ``-o fsarg.KEY=VALUE`` (what the CLI's ``--fs-arg KEY=VALUE`` becomes): a keyword
#: argument (a string) of a ``MODULE:CLASS`` filesystem's constructor
FS_ARG_PREFIX = "fsarg."


def _float(extra: MutableMapping[str, str], key: str, default: float) -> float:
    value = extra.pop(key, None)
    if not value:
        return default
    try:
        got = float(value)
    except ValueError:
        raise UsageError(f"-o {key}={value}: not a number of seconds") from None
    if not 0 <= got < float("inf"):
        raise UsageError(f"-o {key}={value}: not a number of seconds >= 0")
    return got


def _flag(extra: MutableMapping[str, str], key: str) -> bool:
    """Consume the value-less option ``key``: whether it was given."""
    if key not in extra:
        return False
    value = extra.pop(key)
    if value:
        raise UsageError(f"-o {key}={value}: {key} takes no value (write -o {key})")
    return True


def fs_args(extra: MutableMapping[str, str]) -> dict[str, str]:
    """Consume the ``fsarg.KEY=VALUE`` entries of ``extra``: ``{KEY: VALUE}``."""
    got = {}
    for key in [k for k in extra if k.startswith(FS_ARG_PREFIX)]:
        name = key[len(FS_ARG_PREFIX):]
        if not name.isidentifier():
            raise UsageError(f"--fs-arg {name!r}: KEY must be a Python identifier")
        got[name] = extra.pop(key)
    return got


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_ops(kind: str, source: str | None, extra: MutableMapping[str, str]) -> Operations:
    """Instantiate the filesystem ``kind`` names.

    ``kind`` is ``memfs``, ``passthrough`` (which needs ``source``, the
    directory to mirror) or ``MODULE:CLASS`` (any callable returning an
    :class:`~fusewire.Operations` or a :class:`~fusewire.PathOperations`;
    ``source``, when given, is its first argument, and ``fsarg.KEY=VALUE``
    entries of ``extra`` become its keyword arguments).  Consumes the options
    it understands from ``extra`` (:data:`FS_OPTIONS`: entry_timeout, attr_timeout,
    negative_timeout in seconds; memfs's acl (POSIX ACLs); kernel_passthrough) and
    leaves the rest.

    Raises :class:`UsageError` for an unknown kind, a missing source, a
    module or class that cannot be loaded, a constructor that raises (its
    exception is the cause), a factory that returns something else than an
    ``Operations``, or a malformed timeout.
    """
    if kind == "memfs":
        from fusewire.examples.memfs import MemFS

        entry = _float(extra, "entry_timeout", 1.0)
        attr = _float(extra, "attr_timeout", 1.0)
        negative = _float(extra, "negative_timeout", 0.0)
        acl = _flag(extra, "acl")
        return MemFS(entry_timeout=entry, attr_timeout=attr, negative_timeout=negative,
                     acl=acl)
    if kind == "passthrough":
        from fusewire.examples.passthrough import Passthrough

        entry = _float(extra, "entry_timeout", 1.0)
        attr = _float(extra, "attr_timeout", 1.0)
        if source is None:
            raise UsageError("passthrough needs a SOURCE directory")
        if not os.path.isdir(source):
            raise UsageError(f"passthrough source {source}: " + (
                "not a directory" if os.path.exists(source) else "no such directory"))
        kp = _flag(extra, "kernel_passthrough")
        return Passthrough(source, entry_timeout=entry, attr_timeout=attr,
                           kernel_passthrough=kp)
    if ":" in kind:
        module_name, _, cls = kind.partition(":")
        kwargs = fs_args(extra)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UsageError(f"{kind}: cannot import {module_name!r}: {e}") from e
        try:
            factory: Callable[..., object] = getattr(module, cls)
        except AttributeError:
            raise UsageError(f"{kind}: module {module_name!r} has no {cls!r}") from None
        if isinstance(factory, type) and not issubclass(factory,
                                                        (Operations, PathOperations)):
            raise UsageError(f"{kind} is not an Operations subclass")
        args = () if source is None else (source,)
        try:
            ops = factory(*args, **kwargs)
        except TypeError as e:
            if "argument" not in str(e):
                raise UsageError(f"{kind}: the constructor raised {_describe(e)}") from e
            raise UsageError(f"{kind}: {_describe(e)} (constructor arguments are given "
                             "with --fs-arg KEY=VALUE)") from e
        except Exception as e:
            raise UsageError(f"{kind}: the constructor raised {_describe(e)}") from e
        if isinstance(ops, PathOperations):
            ops = PathAdapter(ops)          # a path-based filesystem
        if not isinstance(ops, Operations):
            raise UsageError(f"{kind} is not an Operations subclass")
        return ops
    raise UsageError(f"unknown filesystem {kind!r} (memfs, passthrough or MODULE:CLASS)")
