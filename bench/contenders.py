"""The contenders that bench/run.py measures, and how to prepare and start each.

A contender is a name, a kind and, for FUSE servers, a command line: run.py
mounts it on a fresh directory, waits until the mount shows in /proc/mounts and
stat() of the mountpoint answers, runs the client, then stops the server
(SIGTERM to the pid it started, ``umount -l`` if the mount is still there,
SIGKILL to that pid only if it still runs).

Kinds:

kernel       no server: tmpfs (the ceiling for in-memory servers) or a fresh
             directory on the filesystem that holds the passthrough sources
memfs        an in-memory FUSE server
passthrough  a FUSE server that mirrors a fresh source directory (SRC)

``prepare`` makes a contender runnable (compiles the C server, installs a
Python peer into the bench venv) and returns None, or the reason why it
cannot run; run.py then records "not run: <reason>".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"

Kind = Literal["kernel", "memfs", "passthrough"]


@dataclass
class Env:
    """Where things are, and what prepare() may do to get them."""

    build_dir: Path = BENCH_DIR / "build"
    bench_venv: Path = Path("/work/bench-venv")
    project_python: Path = Path("/work/venv/bin/python")
    install: bool = True  # may run apt-get and pip
    log: Callable[[str], None] = print
    _apt_updated: bool = False
    _checked: dict[str, str | None] = field(default_factory=dict)

    @property
    def bench_python(self) -> Path:
        return self.bench_venv / "bin" / "python"

    def run(self, argv: list[str], env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", **(env or {}))
        return subprocess.run(argv, capture_output=True, text=True, check=False, env=env)

    # -- Debian packages -------------------------------------------------

    def apt_installed(self, package: str) -> bool:
        out = self.run(["dpkg-query", "-W", "-f=${Status}", package])
        return out.returncode == 0 and "install ok installed" in out.stdout

    def apt_ensure(self, *candidates: str) -> str | None:
        """Install the first of candidates (alternative names) that apt knows."""
        if any(self.apt_installed(p) for p in candidates):
            return None
        if not self.install:
            return f"{' or '.join(candidates)} not installed (--no-install)"
        if shutil.which("apt-get") is None:
            return "apt-get not found"
        for attempt in range(2):
            for package in candidates:
                if self.run(["apt-cache", "show", package]).returncode != 0:
                    continue
                self.log(f"apt-get install {package}")
                out = self.run(["apt-get", "install", "-y", "-q", package])
                if out.returncode == 0:
                    return None
                return f"apt-get install {package} failed: {_tail(out.stderr)}"
            if attempt == 0 and not self._apt_updated:
                self.log("apt-get update")
                self._apt_updated = True
                self.run(["apt-get", "update", "-q"])
        return f"no Debian package among: {', '.join(candidates)}"

    # -- the bench venv --------------------------------------------------

    def pip_ensure(self, module: str, package: str, env: dict[str, str]) -> str | None:
        """Make `import module` work in the bench venv, installing package if needed."""
        key = f"pip:{module}"
        if key in self._checked:
            return self._checked[key]
        reason = self._pip_ensure(module, package, env)
        self._checked[key] = reason
        return reason

    def _pip_ensure(self, module: str, package: str, env: dict[str, str]) -> str | None:
        if not self.bench_python.exists():
            if not self.install:
                return f"no bench venv at {self.bench_venv} (--no-install)"
            self.log(f"creating the bench venv {self.bench_venv}")
            out = self.run([sys.executable, "-m", "venv", str(self.bench_venv)])
            if out.returncode != 0:
                return f"cannot create {self.bench_venv}: {_tail(out.stderr)}"
        check = [str(self.bench_python), "-c", f"import {module}"]
        out = self.run(check, env)
        if out.returncode == 0:
            return None
        if not self.install:
            return f"import {module} fails in {self.bench_venv}: {_tail(out.stderr)}"
        self.log(f"pip install {package} into {self.bench_venv}")
        pip = self.run([str(self.bench_python), "-m", "pip", "install", "-q", package])
        if pip.returncode != 0:
            return f"pip install {package} failed: {_tail(pip.stderr)}"
        out = self.run(check, env)
        if out.returncode != 0:
            return f"import {module} still fails: {_tail(out.stderr)}"
        return None


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


# -- preparers -----------------------------------------------------------

def c_binary(env: Env, program: str) -> Path:
    return env.build_dir / program


def prepare_c(program: str) -> Callable[[Env], str | None]:
    """A preparer that compiles peers/PROGRAM.c against Debian's libfuse3-dev."""

    def prepare(env: Env) -> str | None:
        key = f"cc:{program}"
        if key not in env._checked:
            reason = env.apt_ensure("libfuse3-dev") or env.apt_ensure("pkg-config")
            if reason is None:
                reason = _compile(env, PEERS_DIR / f"{program}.c", c_binary(env, program))
            env._checked[key] = reason
        return env._checked[key]

    return prepare


def _compile(env: Env, source: Path, binary: Path) -> str | None:
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return None
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc)"
    flags = env.run(["pkg-config", "--cflags", "--libs", "fuse3"])
    if flags.returncode != 0:
        return f"pkg-config fuse3 failed: {_tail(flags.stderr)}"
    binary.parent.mkdir(parents=True, exist_ok=True)
    argv = [compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source),
            *flags.stdout.split()]
    env.log(" ".join(argv))
    out = env.run(argv)
    if out.returncode != 0:
        return f"compiling {source.name} failed: {_tail(out.stderr)}"
    return None


def prepare_pyfuse3(env: Env) -> str | None:
    # pyfuse3 has no wheels: pip builds it against libfuse3-dev via pkg-config.
    return (env.apt_ensure("libfuse3-dev") or env.apt_ensure("pkg-config")
            or env.pip_ensure("pyfuse3", "pyfuse3", {}))


def prepare_mfusepy(env: Env) -> str | None:
    return env.apt_ensure("libfuse3-3", "libfuse3-4") or env.pip_ensure(
        "mfusepy", "mfusepy", MFUSEPY_ENV)


def prepare_fusepy(env: Env) -> str | None:
    # fusepy binds libfuse 2 only (Debian 12: libfuse2; later releases: libfuse2t64).
    return env.apt_ensure("libfuse2t64", "libfuse2") or env.pip_ensure("fuse", "fusepy", {})


def prepare_fusewire(env: Env) -> str | None:
    if not env.project_python.exists():
        return f"project python {env.project_python} not found"
    return None


def prepare_nothing(env: Env) -> str | None:
    return None


# -- the registry --------------------------------------------------------

MFUSEPY_ENV = {"FUSE_LIBRARY_NAME": "fuse3"}  # mfusepy prefers libfuse 2 when both exist
FUSEWIRE_OPTS = ["-f", "-o", "entry_timeout=0,attr_timeout=0"]


@dataclass(frozen=True)
class Paths:
    mnt: Path  # the mountpoint (for kernel_backing: the directory the client uses)
    src: Path  # a fresh source directory for passthrough servers


CommandFn = Callable[[Env, Paths], list[str]]


@dataclass(frozen=True)
class Contender:
    name: str
    kind: Kind
    summary: str
    command: CommandFn | None = None  # None: no server (kernel contenders)
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Env], str | None] = prepare_nothing
    kernel_mount: Literal["tmpfs", "none"] | None = None  # kernel contenders only

    @property
    def group(self) -> Literal["memfs", "passthrough"]:
        """What to compare with: in-memory servers, or passthroughs of SRC."""
        if self.kind == "passthrough" or self.kernel_mount == "none":
            return "passthrough"
        return "memfs"


def _memfs_ll(*flags: str) -> CommandFn:
    return lambda env, p: [str(c_binary(env, "memfs_ll")), *flags, "-f", str(p.mnt)]


def _ptfs_ll(*flags: str) -> CommandFn:
    return lambda env, p: [str(c_binary(env, "ptfs_ll")), str(p.src), *flags, "-f", str(p.mnt)]


def _bench_peer(script: str) -> CommandFn:
    return lambda env, p: [str(env.bench_python), str(PEERS_DIR / script), str(p.mnt)]


def _fusewire(*args: str, passthrough: bool = False) -> CommandFn:
    def command(env: Env, p: Paths) -> list[str]:
        fs = ["passthrough", str(p.src)] if passthrough else ["memfs"]
        return [str(env.project_python), "-m", "fusewire", "mount", *fs, str(p.mnt),
                *FUSEWIRE_OPTS, *args]
    return command


FUSEWIRE_ENV = {"PYTHONPATH": str(REPO_DIR)}

CONTENDERS: tuple[Contender, ...] = (
    Contender("kernel_tmpfs", "kernel", "tmpfs mounted on the fresh directory: no FUSE, "
              "the ceiling for in-memory servers", kernel_mount="tmpfs"),
    Contender("kernel_backing", "kernel", "a fresh directory on the filesystem of the "
              "passthrough sources (ext4 here): the ceiling for passthroughs",
              kernel_mount="none"),
    Contender("libfuse_c_st", "memfs", "bench/peers/memfs_ll.c on libfuse3's low-level API, "
              "single-threaded loop (-s)", _memfs_ll("-s"), prepare=prepare_c("memfs_ll")),
    Contender("libfuse_c_mt", "memfs", "bench/peers/memfs_ll.c, libfuse's multi-threaded "
              "loop (its defaults)", _memfs_ll(), prepare=prepare_c("memfs_ll")),
    Contender("libfuse_c_pt", "passthrough", "bench/peers/ptfs_ll.c: passthrough of SRC on "
              "libfuse3's low-level API, single-threaded loop (-s)", _ptfs_ll("-s"),
              prepare=prepare_c("ptfs_ll")),
    Contender("libfuse_c_pt_mt", "passthrough", "bench/peers/ptfs_ll.c, libfuse's "
              "multi-threaded loop (its defaults)", _ptfs_ll(), prepare=prepare_c("ptfs_ll")),
    Contender("pyfuse3_mem", "memfs", "bench/peers/pyfuse3_memfs.py on pyfuse3 (libfuse3 "
              "low-level API, trio)", _bench_peer("pyfuse3_memfs.py"), prepare=prepare_pyfuse3),
    Contender("mfusepy_mem", "memfs", "bench/peers/mfusepy_memfs.py on mfusepy (libfuse3 "
              "high-level API, multi-threaded)", _bench_peer("mfusepy_memfs.py"),
              env=MFUSEPY_ENV, prepare=prepare_mfusepy),
    Contender("fusepy_mem", "memfs", "bench/peers/fusepy_memfs.py on fusepy (libfuse2 "
              "high-level API, multi-threaded, big_writes)", _bench_peer("fusepy_memfs.py"),
              prepare=prepare_fusepy),
    Contender("fusewire_memfs", "memfs", "fusewire's memfs", _fusewire(),
              env=FUSEWIRE_ENV, prepare=prepare_fusewire),
    Contender("fusewire_memfs_recoverable", "memfs", "fusewire's memfs with --recoverable",
              _fusewire("--recoverable"), env=FUSEWIRE_ENV, prepare=prepare_fusewire),
    Contender("fusewire_memfs_async", "memfs", "bench/peers/async_memfs.py: fusewire's memfs "
              "with async def handlers (an asyncio task per request)",
              lambda env, p: [str(env.project_python), "-m", "fusewire", "mount",
                              "async_memfs:AsyncMemFS", str(p.mnt), "-f"],
              env={"PYTHONPATH": f"{REPO_DIR}{os.pathsep}{PEERS_DIR}"},
              prepare=prepare_fusewire),
    Contender("fusewire_pt", "passthrough", "fusewire's passthrough of SRC",
              _fusewire(passthrough=True), env=FUSEWIRE_ENV, prepare=prepare_fusewire),
    Contender("fusewire_pt_workers", "passthrough", "fusewire's passthrough of SRC with 2 "
              "worker threads on cloned fds (--workers 2)",
              _fusewire("--workers", "2", passthrough=True), env=FUSEWIRE_ENV,
              prepare=prepare_fusewire),
    Contender("fusewire_pt_2proc", "passthrough", "fusewire's passthrough of SRC served by "
              "2 processes on cloned fds (--processes 2)",
              _fusewire("--processes", "2", passthrough=True), env=FUSEWIRE_ENV,
              prepare=prepare_fusewire),
    Contender("fusewire_pt_backing", "passthrough", "fusewire's passthrough with kernel "
              "passthrough of reads and writes (backing files)",
              _fusewire("-o", "kernel_passthrough", passthrough=True), env=FUSEWIRE_ENV,
              prepare=prepare_fusewire),
)

BY_NAME = {c.name: c for c in CONTENDERS}


def select(spec: str | None) -> list[Contender]:
    """Contenders named in a comma-separated spec, in registry order.

    A token is a contender's name, or a prefix of names up to an underscore
    ("kernel" selects kernel_tmpfs and kernel_backing, "fusewire" all of
    fusewire's). None or "all" selects every contender.
    """
    if spec is None or spec == "all":
        return list(CONTENDERS)
    chosen: set[str] = set()
    for token in filter(None, (t.strip() for t in spec.split(","))):
        if token in BY_NAME:
            chosen.add(token)
            continue
        matches = [c.name for c in CONTENDERS if c.name.startswith(token + "_")]
        if not matches:
            raise ValueError(f"unknown contender {token!r}; known: {', '.join(BY_NAME)}")
        chosen.update(matches)
    return [c for c in CONTENDERS if c.name in chosen]
