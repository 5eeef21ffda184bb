"""``python -m fusewire.compat.pyfuse3 SCRIPT ARGS...``: run a pyfuse3 script on fusewire."""

from __future__ import annotations

import builtins
import os
import runpy
import sys


def main(argv: list[str] | None = None) -> int:
    """Run SCRIPT as __main__ with ``import pyfuse3`` resolving to fusewire.compat.pyfuse3."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write("usage: python -m fusewire.compat.pyfuse3 SCRIPT.py [ARGS...]\n"
                         "Runs SCRIPT.py with 'import pyfuse3' (and pyfuse3.asyncio) "
                         "resolving to fusewire.compat.pyfuse3.\n")
        return 2
    script = args[0]
    if not os.path.isfile(script):
        sys.stderr.write(f"fusewire.compat.pyfuse3: {script}: no such file\n")
        return 2
    from fusewire.compat import pyfuse3

    pyfuse3.install()
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, init_globals={"__builtins__": builtins}, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
