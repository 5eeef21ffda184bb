"""The server side: dispatch, the select loop, mounting."""

from fusewire.server.loop import Server, serve_in_thread

__all__ = ["Server", "serve_in_thread"]
