"""Run a script written for another binding, as ``python SCRIPT`` would, on fusewire.

``python -m fusewire.compat.fusepy`` and ``python -m fusewire.compat.pyfuse3``
share this: check the arguments, make the script's ``import`` of the other
binding resolve to the compat module, and run the script as ``__main__``.
"""

from __future__ import annotations

import builtins
import os
import runpy
import sys
from collections.abc import Callable


def run_script(prog: str, argv: list[str] | None, imports: str,
               install: Callable[[], None],
               quiet_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``argv[0]`` (default: ``sys.argv[1:]``) with ``install()`` done first.

    ``prog`` names the command in messages, ``imports`` says in the usage
    line which imports resolve to fusewire.  An exception of a type in
    ``quiet_errors`` has already told the user why (one line): exit 1.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(f"usage: python -m {prog} SCRIPT.py [ARGS...]\n"
                         f"Runs SCRIPT.py with {imports} resolving to {prog}.\n")
        return 2
    script = args[0]
    if not os.path.isfile(script):
        sys.stderr.write(f"{prog}: {script}: no such file\n")
        return 2
    install()
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    # as "python SCRIPT" would: __builtins__ is the module, not its dict (fusepy's
    # memory.py tests hasattr(__builtins__, "bytes"))
    try:
        runpy.run_path(script, init_globals={"__builtins__": builtins}, run_name="__main__")
    except quiet_errors:
        return 1
    return 0
