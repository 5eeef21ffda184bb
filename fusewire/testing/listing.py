"""A readdir token for unit tests: call a filesystem's ``readdir`` without a kernel.

:class:`ListingToken` is a :class:`~fusewire.readdir.ReaddirToken`
that keeps each entry as ``(name, attributes, next_id)`` instead of packing
it, and stops accepting after ``capacity`` entries (to exercise resumption
at a cookie)::

    tok = ListingToken(plus=False, capacity=3)
    fs.readdir(fh, 0, tok)
    names = [name for name, _, _ in tok.entries]
    fs.readdir(fh, tok.entries[-1][2], ListingToken())   # the rest
"""

from __future__ import annotations

from fusewire.readdir import ReaddirToken
from fusewire.types import EntryAttributes

__all__ = ["ListingToken"]


class ListingToken(ReaddirToken):
    """Collects ``(name, attributes, next_id)`` up to ``capacity`` entries."""

    __slots__ = ("capacity", "entries")

    def __init__(self, plus: bool = False, capacity: int = 10**9) -> None:
        super().__init__(0, plus)
        self.capacity = capacity
        self.entries: list[tuple[bytes, EntryAttributes, int]] = []

    def add(self, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
        """Record an entry; False once ``capacity`` entries are held."""
        if next_id <= 0:
            raise ValueError(f"next_id must be positive, got {next_id}")
        if len(self.entries) >= self.capacity:
            return False
        self.entries.append((name, attr, next_id))
        if self.plus and attr.st_ino and name not in (b".", b".."):
            self.counted.append(attr.st_ino)
        return True

    def add_name(self, name: bytes, ino: int, mode: int, next_id: int) -> bool:
        """Record a READDIR entry (attributes reduced to ``st_ino`` and ``st_mode``)."""
        if self.plus:
            raise ValueError("READDIRPLUS entries need attributes: use add()")
        return self.add(name, EntryAttributes(ino, st_mode=mode), next_id)

    def __len__(self) -> int:
        return len(self.entries)
