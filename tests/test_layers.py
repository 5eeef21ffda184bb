"""The import layering of fusewire, enforced.

Every module's imports are read from its AST, including imports inside
functions (lazy ones) and under ``if TYPE_CHECKING`` (a type-only import is
still an arrow in the design).  Each module belongs to a layer; an import may
point to the same layer or a lower one, never up:

    core      opcodes, structs, connection, wire, handles, errors, types, operations, readdir
    server    server/*          (serves an Operations over a Connection)
    examples  examples/*        (filesystems written against the core API)
    tools     recovery/*, testing/*, compat/*   (use the server and the examples)
    cli       cli, demo         (the command line; nothing else may import it)
    main      __main__

There is also no import cycle between modules (lazy imports included; the
imports under ``if TYPE_CHECKING`` do not run and do not count for cycles).
A new module must be given a layer in :data:`LAYERS` below: the test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fusewire

PKG = Path(fusewire.__file__).parent

CORE, SERVER, EXAMPLES, TOOLS, CLI, MAIN = range(6)
LAYER_NAMES = ("core", "server", "examples", "tools", "cli", "main")

#: Module name prefixes and their layers; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "fusewire": CORE,  # the package itself: re-exports the user API
    "fusewire.opcodes": CORE,
    "fusewire.structs": CORE,
    "fusewire.connection": CORE,
    "fusewire.errors": CORE,
    "fusewire.types": CORE,
    "fusewire.operations": CORE,
    "fusewire.readdir": CORE,
    "fusewire.wire": CORE,          # the kernel's side: request encoder, the one reply decoder
    "fusewire.handles": CORE,       # the draft LOOKUP_HANDLE profiles (next to the protocol)
    # modules other branches of this round add (harmless while absent)
    "fusewire.locks": CORE,         # the lock table memfs and others use
    "fusewire.recovery_api": CORE,  # the recovery contract next to Operations
    "fusewire.pathops": CORE,       # the path-based user API
    "fusewire.path_api": CORE,      # PathOperations (what a path filesystem implements)
    "fusewire.path_nodes": CORE,    # PathAdapter's table records
    "fusewire.path_recovery": CORE,  # PathAdapter's recovery hooks
    "fusewire.server": SERVER,
    "fusewire.examples": EXAMPLES,
    "fusewire.recovery": TOOLS,
    "fusewire.testing": TOOLS,
    "fusewire.compat": TOOLS,
    "fusewire.cli": CLI,
    "fusewire.demo": CLI,
    "fusewire.__main__": MAIN,
}

#: Upward arrows that exist today, each with its reason.  Keep this short.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
    # (the draft LOOKUP_HANDLE profile lives in the core: fusewire/handles.py)
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The layer of ``module`` by its longest matching prefix, or None."""
    best: tuple[int, int] | None = None
    for prefix, layer in LAYERS.items():
        matches = module == prefix or module.startswith(prefix + ".")
        if matches and (best is None or len(prefix) > best[0]):
            best = (len(prefix), layer)
    return None if best is None else best[1]


def _resolve(name: str) -> str | None:
    """The fusewire module an imported name refers to (a submodule if there is one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else (
                test.attr if isinstance(test, ast.Attribute) else "")
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    inside.update(id(n) for n in ast.walk(stmt))
    return inside


def imports_of(module: str, *, runtime_only: bool = False) -> set[str]:
    """Every fusewire module ``module`` imports, at any depth of its code.

    ``runtime_only`` leaves out the imports under ``if TYPE_CHECKING:``.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = _type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fusewire"):
                    target = _resolve(alias.name)
                    if target:
                        found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if not mod.startswith("fusewire"):
                continue
            for alias in node.names:
                # ``from fusewire.server import mount`` imports a submodule
                target = _resolve(f"{mod}.{alias.name}") if alias.name != "*" else None
                if target is None or target == module:
                    target = _resolve(mod)
                if target:
                    found.add(target)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith("fusewire")):
            target = _resolve(node.args[0].value)
            if target:
                found.add(target)
    found.discard(module)
    return found


GRAPH: dict[str, set[str]] = {m: imports_of(m) for m in MODULES}
#: the same without the imports made for annotations only (they never execute)
RUNTIME_GRAPH: dict[str, set[str]] = {m: imports_of(m, runtime_only=True) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {missing}"


def test_the_walker_sees_lazy_and_type_only_imports() -> None:
    # cli imports the recovery plugin inside a function; operations names
    # ReaddirToken under TYPE_CHECKING: both must be edges.
    assert "fusewire.recovery.commands" in GRAPH["fusewire.cli"]
    assert "fusewire.readdir" in GRAPH["fusewire.operations"]
    assert "fusewire.server.mount" in GRAPH["fusewire.server.loop"]


def test_no_upward_imports() -> None:
    bad = []
    for module, targets in sorted(GRAPH.items()):
        mine = layer_of(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is None or theirs <= mine:
                continue
            if (module, target) in KNOWN_EXCEPTIONS:
                continue
            bad.append(f"{module} ({LAYER_NAMES[mine]}) imports {target} "
                       f"({LAYER_NAMES[theirs]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_only_main_imports_the_cli() -> None:
    importers = sorted(m for m, targets in GRAPH.items()
                       if "fusewire.cli" in targets and m != "fusewire.__main__")
    assert not importers, f"only fusewire.__main__ may import fusewire.cli: {importers}"


def test_known_exceptions_still_exist() -> None:
    # A fixed exception must leave the list, so the list never hides a new arrow.
    # (An entry naming a module that no longer exists hides nothing either.)
    stale = [pair for pair in KNOWN_EXCEPTIONS
             if pair[0] in GRAPH and pair[1] in GRAPH and pair[1] not in GRAPH[pair[0]]]
    assert not stale, f"remove fixed entries from KNOWN_EXCEPTIONS: {stale}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    # Lazy imports count; imports under ``if TYPE_CHECKING:`` do not (two
    # modules may name each other's types in annotations).
    cycles = _cycles(RUNTIME_GRAPH)
    assert not cycles, f"import cycles (lazy imports included): {cycles}"


def test_type_checking_imports_are_told_apart() -> None:
    assert "fusewire.readdir" in GRAPH["fusewire.operations"]
    assert "fusewire.readdir" not in RUNTIME_GRAPH["fusewire.operations"]


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", ["ReaddirToken", "Operations", "RequestContext"])
def test_handler_types_are_exported_from_fusewire(name: str) -> None:
    assert name in fusewire.__all__
    assert getattr(fusewire, name).__module__.split(".")[1] in (
        "readdir", "operations", "types")


def test_build_ops_raises_ordinary_exceptions(tmp_path: Path) -> None:
    from fusewire.errors import UsageError
    from fusewire.examples import build_ops
    from fusewire.examples.memfs import MemFS

    extra = {"entry_timeout": "2.5", "fsname": "x"}
    ops = build_ops("memfs", None, extra)
    assert isinstance(ops, MemFS)
    assert extra == {"fsname": "x"}  # consumed what it understood, left the rest
    for kind, source, opts, words in [
        ("nosuchfs", None, {}, "unknown filesystem"),
        ("passthrough", None, {}, "SOURCE"),
        ("no_such_module_xyz:Fs", None, {}, "cannot import"),
        ("fusewire.examples.memfs:NoSuchClass", None, {}, "has no"),
        ("fusewire.errors:UsageError", None, {}, "not an Operations"),
        ("memfs", None, {"attr_timeout": "soon"}, "not a number"),
    ]:
        with pytest.raises(UsageError, match=words):
            build_ops(kind, source, dict(opts))
    assert isinstance(build_ops("passthrough", str(tmp_path), {}), fusewire.Operations)


def test_cli_turns_a_bad_spec_into_one_line() -> None:
    from fusewire.cli import build_ops

    with pytest.raises(SystemExit) as e:
        build_ops("nosuchfs", None, {})
    assert str(e.value).startswith("fusewire: unknown filesystem 'nosuchfs'")
    assert "\n" not in str(e.value)


# --- struct formats come from the schemas ---------------------------------------------

#: Files outside fusewire/structs that may still spell a struct format, how many
#: times at most, and why.  Adding a literal format anywhere else (or one more
#: here) fails: take it from fusewire.structs.codec.CODECS (``.struct``, or
#: ``.head(n)`` for the leading fields) instead.
LITERAL_FORMATS: dict[str, tuple[int, str]] = {
    "fusewire/server/mount.py": (3, "native C ints of SCM_RIGHTS and FUSE_DEV_IOC_CLONE's "
                                    "argument: the host's ABI, not the FUSE wire"),
    "fusewire/recovery/wire.py": (2, "SO_PEERCRED's struct ucred: the host's ABI"),
    "fusewire/recovery/journal.py": (7, "the journal's own on-disk records "
                                     "(docs/recovery.md), incl. the one-node ADD"),
    "fusewire/testing/capture.py": (4, "the capture file's own format (docs/capture-format.md)"),
    "fusewire/testing/procserver.py": (1, "length prefix of its own subprocess pipe"),
    "fusewire/examples/memfs.py": (5, "memfs's own file-handle bytes (inode, generation); "
                                      "the host's FS_IOC_* ioctl arguments (fsxattr)"),
    "fusewire/examples/memfs_acl.py": (2, "the kernel's posix_acl_xattr value (header "
                                          "and entry) of system.posix_acl_*: the host's "
                                          "ABI, not the FUSE wire"),
    "fusewire/examples/passthrough.py": (2, "statx of the host's syscall"),
    "fusewire/examples/passthrough_nodes.py": (1, "passthrough's own handle bytes"),
    "fusewire/examples/passthrough_recovery.py": (8, "struct file_handle of the host's "
                                                     "syscalls, passthrough's own handle "
                                                     "bytes"),
    "fusewire/server/processes.py": (10, "the multi-process nodeid table's own layout in "
                                         "shared memory"),
    "fusewire/path_recovery.py": (1, "the path API's own file-handle bytes"),
    "fusewire/connection.py": (3, "counted arrays whose length is in the message: "
                                  "supp_groups' gids, and notify_prune's nodeids "
                                  "(pack_u64s/unpack_u64s, which the decoders share)"),
}

_STRUCT_CALLS = {"Struct", "pack", "pack_into", "unpack", "unpack_from", "iter_unpack",
                 "calcsize"}


def _literal_formats() -> dict[str, list[int]]:
    """Lines that call struct.* with a literal (or f-string) format, by file.

    Formats computed from the codecs (``_OUT_HDR.format + ...``) do not count.
    """
    found: dict[str, list[int]] = {}
    for module, path in MODULES.items():
        rel = path.relative_to(PKG.parent).as_posix()
        if module.startswith("fusewire.structs"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _STRUCT_CALLS
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "struct"
                    and node.args
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
                found.setdefault(rel, []).append(node.lineno)
    return found


def test_struct_formats_come_from_the_schemas() -> None:
    bad = []
    for rel, lines in sorted(_literal_formats().items()):
        allowed, _why = LITERAL_FORMATS.get(rel, (0, ""))
        if len(lines) > allowed:
            bad.append(f"{rel}: {len(lines)} literal struct formats (allowed {allowed}) "
                       f"at lines {lines}")
    assert not bad, ("use fusewire.structs.codec.CODECS instead of a literal format:\n"
                     + "\n".join(bad))


def test_the_out_header_is_declared_once() -> None:
    # fuse_out_header used to be re-declared in 7 files: now only the schema has it.
    for path in MODULES.values():
        if "structs" in path.parts:
            continue
        text = path.read_text()
        assert '"<IiQ"' not in text and '"<LlQ"' not in text, path


def test_mount_helpers_import_without_construct() -> None:
    # fusewire.server.mount runs in helpers that may not see construct (another
    # user's interpreter): it, the package, the CLI's entry and the spec
    # builder must import with the standard library alone.
    import subprocess
    import sys

    code = ("import sys; sys.modules['construct'] = None\n"
            "import fusewire, fusewire.server.mount, fusewire.cli, fusewire.examples\n"
            "assert 'fusewire.structs.codec' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_type_a_handler_receives_or_returns_is_exported() -> None:
    # A filesystem author imports everything from ``fusewire``: each fusewire
    # class named in an Operations method's signature lives in the core layer
    # and is in fusewire.__all__.
    import inspect
    import typing

    import fusewire.operations as ops_module

    found: set[type] = set()

    def walk(hint: object) -> None:
        if isinstance(hint, type) and hint.__module__.startswith("fusewire"):
            found.add(hint)
        for arg in typing.get_args(hint):
            walk(arg)

    namespace = {**vars(ops_module), "ReaddirToken": fusewire.ReaddirToken}
    for name, fn in inspect.getmembers(fusewire.Operations, inspect.isfunction):
        if not name.startswith("_"):
            for hint in typing.get_type_hints(fn, globalns=namespace).values():
                walk(hint)
    assert fusewire.ReaddirToken in found
    for cls in found:
        assert layer_of(cls.__module__) == CORE, cls
        assert cls.__name__ in fusewire.__all__, f"fusewire does not export {cls.__name__}"
        assert getattr(fusewire, cls.__name__) is cls
