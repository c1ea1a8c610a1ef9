"""Export tests' fixtures: a copy of the session's digits run that a test may change."""

from __future__ import annotations

import shutil

import pytest

from convspec.compiler.run.folder import Run


@pytest.fixture
def run_copy(digits_run, tmp_path) -> Run:
    dst = tmp_path / "digits-cnn"
    shutil.copytree(digits_run, dst)
    return Run(dst)
