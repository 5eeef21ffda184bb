"""``pyfuse3.asyncio``: run :func:`fusewire.compat.pyfuse3.main` under asyncio.

Call :func:`enable` before ``asyncio.run(pyfuse3.main())``; without it
:func:`~fusewire.compat.pyfuse3.main` expects trio.  Also importable as
``pyfuse3_asyncio`` (pyfuse3 before 3.2 shipped it under that name).
"""

from __future__ import annotations

__all__ = ["disable", "enable", "enabled"]

#: whether main() runs under asyncio
enabled = False


def enable() -> None:
    """Switch to asyncio mode."""
    global enabled
    enabled = True


def disable() -> None:
    """Switch back to trio mode (the default)."""
    global enabled
    enabled = False
