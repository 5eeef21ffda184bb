"""The package people install: version, metadata, license; the wheel in a fresh venv (slow)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import conftest
import pytest

import fusewire

ROOT = conftest.REPO_ROOT


def test_version_command() -> None:
    r = subprocess.run([sys.executable, "-m", "fusewire", "--version"], capture_output=True,
                       text=True, env=conftest.server_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"fusewire {fusewire.__version__}"


def test_metadata_complete() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert {"Homepage", "Repository", "Issues", "Documentation", "Changelog"} <= set(meta["urls"])
    assert meta["keywords"] and meta["authors"]
    assert any(c.startswith("Development Status") for c in meta["classifiers"])
    assert meta["dependencies"] == ["construct>=2.10,<2.11"]       # runtime: construct only
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_wheel_installs_and_demo_runs(tmp_path: Path) -> None:
    """What CI does in .ci/run: build, twine check, fresh venv, fusewire demo."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "-q", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    artifacts = sorted(dist.iterdir())
    subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, artifacts)],
                   check=True, capture_output=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(p for p in artifacts if p.suffix == ".whl")
    subprocess.run([str(venv / "bin/pip"), "install", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    r = subprocess.run([str(venv / "bin/fusewire"), "demo"], cwd="/", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "demo finished" in r.stdout
