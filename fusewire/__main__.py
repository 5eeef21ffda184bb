"""``python -m fusewire``: the same CLI as the ``fusewire`` command."""

import sys

from fusewire.cli import main

sys.exit(main())
