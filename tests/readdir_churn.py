"""A directory listing read page by page while entries come and go (shared by the
memfs readdir tests: per-entry ListingToken pages and packed wire pages)."""

from __future__ import annotations

from collections.abc import Callable

from fusewire.examples.memfs import MemFS
from fusewire.types import RequestContext

CTX = RequestContext(uid=0, gid=0, pid=1, umask=0o022)


def list_with_churn(fs: MemFS, d: int, read_page: Callable[[int, int], list[tuple[bytes, int]]],
                    make: Callable[[bytes], None]) -> tuple[list[bytes], set[bytes]]:
    """Read ``d`` (holding n0000..n0299) page by page; after each page unlink two
    entries (ahead of and behind the cursor) and, for the first 20 pages, create
    new0000..; ``read_page(fh, cookie)`` gives ``[(name, next_cookie), ...]``.

    Returns the names seen and the names removed.
    """
    fh = fs.opendir(d, CTX)
    seen: list[bytes] = []
    cookie, step, removed = 0, 0, set()
    while True:
        page = read_page(fh, cookie)
        if not page:
            break
        seen += [name for name, _ in page]
        cookie = page[-1][1]
        for j in (step * 7 % 300, (step * 13 + 150) % 300):
            name = b"n%04d" % j
            if name not in removed:
                fs.unlink(d, name, CTX)
                removed.add(name)
        if step < 20:
            make(b"new%04d" % step)
        step += 1
        assert step < 1000, "the listing never ends"
    fs.releasedir(fh)
    return seen, removed
