"""The server side: dispatch, the select loop, mounting.

``Server`` and ``serve_in_thread`` are loaded lazily so that
``fusewire.server.mount`` stays importable with the standard library alone
(a helper running as another user may not see construct).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusewire.server.loop import Server, serve_in_thread

__all__ = ["Server", "serve_in_thread"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fusewire.server import loop

        return getattr(loop, name)
    raise AttributeError(name)
