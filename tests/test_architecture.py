"""The layer rules hold: the import contract (pyproject.toml), modules that import on their own,
and the torch-free commands working with torch made unimportable."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI_MODULES = sorted(f"convspec.compiler.cli.{m.name}" for m in pkgutil.iter_modules([str(REPO / "compiler" / "cli")]))
TORCH_FREE_CLI = [f"convspec.compiler.cli{m}" for m in ("", "._common", ".spec", ".deploy", ".serve", ".compare")]
# Why a finder and not sys.modules[name] = None: scipy (under sklearn) probes sys.modules["torch"]
# and breaks on None; a finder makes ``import torch`` fail exactly as on a machine without torch.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_import_contract_holds():
    """specs <- runtime <- compiler, no torch where none may be, no import cycles (lint-imports)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports; raise SystemExit(lint_imports())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_the_contract_catches_a_cycle(tmp_path):
    """The acyclic contract is not vacuous: a graph with runtime.images -> runtime.predictor fails it."""
    import grimp

    graph = grimp.build_graph("convspec.runtime", "convspec.specs")
    graph.add_import(importer="convspec.runtime.images", imported="convspec.runtime.predictor")
    breakers = graph.nominate_cycle_breakers("convspec.runtime")
    assert breakers, "adding a back edge must create a cycle the contract reports"
    clean = grimp.build_graph("convspec.runtime", "convspec.specs")
    assert not clean.nominate_cycle_breakers("convspec.runtime")


@pytest.mark.parametrize("module", CLI_MODULES)
def test_each_cli_module_imports_on_its_own(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", TORCH_FREE_CLI)
def test_torch_free_cli_modules_import_without_torch(module):
    code = BLOCK_TORCH + f"import {module}\nassert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


EVALUATE_RUN = (
    BLOCK_TORCH
    + """
from convspec.compiler.cli import main
sys.argv = ["convspec", "evaluate", sys.argv[1], sys.argv[2], "--format", "json"]
main()
"""
)


def test_evaluate_run_folder_is_torch_free(digits_run):
    """``convspec evaluate RUN`` rebuilds the builtin test split (data.loading) without torch."""
    proc = subprocess.run(
        [sys.executable, "-c", EVALUATE_RUN, str(digits_run / "model.onnx"), str(digits_run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    results = json.loads((digits_run / "results.json").read_text())
    assert got["images"] == sum(results["counts"]["test"].values())
    assert got["accuracy"] == pytest.approx(results["test"]["metrics"]["accuracy"])
