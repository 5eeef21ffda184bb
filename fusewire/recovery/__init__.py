"""Crash recovery and live upgrade for fusewire mounts (see docs/recovery.md).

A *keeper* process mounts and holds the ``/dev/fuse`` file and a memfd
journal; servers attach to it over a Unix socket, journal every state change
before the reply that reveals it is written, and a successor rebuilds from the
journal and takes the live connection over with FUSE_NOTIFY_RESEND.
"""

from __future__ import annotations

__all__: list[str] = []
