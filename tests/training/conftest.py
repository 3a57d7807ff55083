"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from modetune.cli import main
from tests.training.equivalence import train_args


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny recipe in one process at batch 4: what the multi-process runs (batch 2 x 2 ranks) must equal."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(train_args(tiny_model_dir, out, 4)) == 0
    return out
