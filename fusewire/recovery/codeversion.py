"""Which code a server runs: staleness of a warm spare, and the code version in the journal.

A warm spare imports the filesystem's modules long before it serves.  If
those files change on disk meanwhile (the operator edited or upgraded the
filesystem and runs ``fusewire upgrade``), the spare must not serve what it
imported: :func:`loaded_files` records the files behind every module it
imported (outside the standard library) and :func:`changed_files` tells,
at takeover, whether any of them differs now (inode, size or mtime), in
which case the spare re-executes itself into the code on disk.

:func:`code_version` is a short content hash of the filesystem's own module
package and of fusewire: the journal records it (META ``code``), so a
successor can say in the log and in ``fusewire status`` when it replays a
journal that other code wrote.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig

__all__ = ["changed_files", "code_version", "drop_bytecode", "loaded_files"]

Fingerprint = dict[str, tuple[int, int, int]]


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.join(os.path.realpath(paths[k]), "")
                 for k in ("stdlib", "platstdlib") if k in paths)


def _module_files() -> list[tuple[str, str]]:
    """(module name, source file) of every imported module outside the standard library."""
    skip = _stdlib_dirs()
    out = []
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            continue
        real = os.path.realpath(path)
        if real.startswith(skip) and "site-packages" not in real:
            continue
        out.append((name, real))
    return out


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def loaded_files() -> Fingerprint:
    """``path -> (inode, size, mtime_ns)`` of the source files of the imported modules."""
    out: Fingerprint = {}
    for _, path in _module_files():
        st = _stat(path)
        if st is not None:
            out[path] = st
    return out


def changed_files(before: Fingerprint) -> list[str]:
    """The files of ``before`` that differ on disk now (changed, replaced or removed)."""
    return [p for p, st in before.items() if _stat(p) != st]


def drop_bytecode(paths: list[str]) -> None:
    """Remove the cached bytecode of ``paths`` (best effort).

    Python trusts a ``.pyc`` whose recorded source mtime (whole seconds) and
    size match; an edit within the same second that keeps the size would
    otherwise be served from the old bytecode.
    """
    for p in paths:
        try:
            os.unlink(importlib.util.cache_from_source(p))
        except (OSError, ValueError, NotImplementedError):
            pass


def _package_files(module: str) -> list[str]:
    """Every source file of ``module``'s top-level package (the module's file if it is
    not in a package): the same set whatever a process happens to have imported."""
    mod = sys.modules.get(module.partition(".")[0])
    path = getattr(mod, "__file__", None)
    if not isinstance(path, str):
        return []
    if os.path.basename(path) != "__init__.py":
        return [path]
    out = []
    for root, dirs, names in os.walk(os.path.dirname(path)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
    return out


def code_version(fs_module: str) -> str:
    """A 12-hex-digit content hash of fusewire's sources and the filesystem's package."""
    h = hashlib.sha256()
    paths = _package_files("fusewire")
    if fs_module.partition(".")[0] != "fusewire":
        paths += _package_files(fs_module)
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:12]
