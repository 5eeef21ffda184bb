"""Build the API reference from the docstrings: ``python docs/build.py [OUTDIR]``.

Writes static HTML (pdoc, the ``docs`` extra) to OUTDIR (default
``build/api``); open ``OUTDIR/index.html``.  Exits non-zero if a documented
module cannot be imported, so CI catches a broken reference.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: the public modules, in the order the reference lists them
MODULES = [
    "fusewire",
    "fusewire.operations",
    "fusewire.types",
    "fusewire.pathops",
    "fusewire.compat",
    "fusewire.compat.fusepy",
    "fusewire.compat.pyfuse3",
    "fusewire.server",
    "fusewire.server.loop",
    "fusewire.server.mount",
    "fusewire.readdir",
    "fusewire.connection",
    "fusewire.errors",
    "fusewire.opcodes",
    "fusewire.structs",
    "fusewire.recovery",
    "fusewire.testing",
    "fusewire.testing.emulator",
    "fusewire.testing.strategies",
    "fusewire.testing.capture",
    "fusewire.testing.replay",
    "fusewire.testing.procs",
]


def main(argv: list[str]) -> int:
    try:
        import pdoc
    except ImportError:
        sys.stderr.write("docs/build.py: pdoc is not installed (pip install -e '.[docs]')\n")
        return 1
    out = Path(argv[0] if argv else Path(__file__).resolve().parent.parent / "build" / "api")
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure makes the reference incomplete
            missing.append(f"{name}: {type(exc).__name__}: {exc}")
    if missing:
        sys.stderr.write("docs/build.py: cannot import\n  " + "\n  ".join(missing) + "\n")
        return 1
    pdoc.render.configure(docformat="restructuredtext", footer_text="fusewire API reference",
                          search=True, show_source=True)
    pdoc.pdoc(*MODULES, output_directory=out)
    print(f"API reference: {out / 'index.html'} ({len(MODULES)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
