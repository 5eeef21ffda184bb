"""``python -m fusewire.recovery.successor --socket PATH``: a server that attaches to a keeper."""

from __future__ import annotations

import sys

from fusewire.recovery.takeover import main

if __name__ == "__main__":
    sys.exit(main())
