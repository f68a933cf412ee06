"""Shared fixtures: where the golden data made by the official ml-sharp code lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_golden_dir() -> Path:
    """The tiny golden bundle: $SHARP_GOLDEN_DIR, else ../shared/golden/tiny next to the checkout."""
    env = os.environ.get("SHARP_GOLDEN_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "golden" / "tiny", REPO_ROOT / "shared" / "golden" / "tiny"]
    for path in candidates:
        if (path / "weights_perturbed.safetensors").is_file():
            return path
    raise FileNotFoundError(
        f"golden data not found in {[str(c) for c in candidates]}; "
        "set SHARP_GOLDEN_DIR to the shared/golden/tiny folder"
    )


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return find_golden_dir()
