"""Package layers (``[tool.importlinter]`` in pyproject.toml), enforced by import-linter.

Why a test: CI runs the test suite, so a lower layer importing a higher one (the core reaching into
protocols, datasets asking the runner's profiles, ...) fails CI with the linter's report instead of
surviving review. grimp reads the source, so imports inside functions count like top-level ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "datasets", "methods", "protocols")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run lint-imports on ``config`` from ``cwd`` (whose packages it analyses); no cache, so nothing is
    written into the tree and a stale graph can never hide a new import."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} missing: install the test extras (pip install -e '.[test]')")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd)})


def test_layers_hold():
    res = _lint(REPO / "pyproject.toml", REPO)
    assert res.returncode == 0, f"import layers broken (lint-imports):\n{res.stdout}\n{res.stderr}"
    assert "0 broken" in res.stdout, res.stdout


def test_every_benchmark_module_has_a_layer():
    """A new benchmark/ module outside every layer would be checked by no rule: name it in the contract."""
    from importlinter import api

    layers = next(c for c in api.read_configuration(str(REPO / "pyproject.toml"))["contracts_options"]
                  if c["type"] == "layers")["layers"]
    named = {m.strip().strip("()") for layer in layers for m in layer.replace("|", ":").split(":")}
    modules = {f"benchmark.{p.stem}" for p in (REPO / "benchmark").glob("*.py") if p.stem != "__init__"}
    assert not modules - named, f"benchmark modules in no layer of pyproject.toml: {sorted(modules - named)}"
    assert {"protocols", "methods", "datasets"} <= named


# (file to edit in a copy of the tree, lazy import that breaks a layer, what the report must name)
VIOLATIONS = [
    ("datasets/phantom.py", "from benchmark.profiles import get_profile",
     "datasets is not allowed to import benchmark.profiles"),
    ("benchmark/registry.py", "from protocols.tables import TableSpec",
     "benchmark.registry is not allowed to import protocols"),
    ("methods/intensity.py", "from protocols import suites", "methods is not allowed to import protocols"),
    ("datasets/store.py", "import methods.ae", "datasets is not allowed to import methods"),
    ("protocols/figures.py", "from benchmark.runner import plan_run",
     "protocols is not allowed to import benchmark.runner"),
]


def _not_source(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or (Path(folder) / n).is_dir())]


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The four packages' .py files only (the linter reads nothing else), copied once."""
    root = tmp_path_factory.mktemp("layers")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=_not_source)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("path, line, expected", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_a_violating_lazy_import_is_caught(tree_copy, path, line, expected):
    target = tree_copy / path
    original = target.read_text()
    target.write_text(original + f"\n\ndef _layer_violation():  # added by tests/test_layers.py\n    {line}\n")
    try:
        res = _lint(tree_copy / "pyproject.toml", tree_copy)
    finally:
        target.write_text(original)
    assert res.returncode != 0, f"lint-imports missed `{line}` in {path}:\n{res.stdout}"
    assert expected in res.stdout, res.stdout
