"""``python -m fusewire.compat.pyfuse3 SCRIPT ARGS...``: run a pyfuse3 script on fusewire."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run SCRIPT as __main__ with ``import pyfuse3`` resolving to fusewire.compat.pyfuse3."""
    from fusewire.compat import pyfuse3
    from fusewire.compat._runner import run_script

    return run_script("fusewire.compat.pyfuse3", argv,
                      "'import pyfuse3' (and pyfuse3.asyncio)", pyfuse3.install)


if __name__ == "__main__":
    sys.exit(main())
