"""The Core ML parity hook off macOS (stores the reference, defers to a Mac) and how a proxy gates it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from sharp_export.artifact import IOSpec, Manifest
from sharp_export.contract import ExampleInputs, ParityContext
from sharp_export.converters.coreml.target import COREML_TARGET, REFERENCE_FILE, TOLERANCES_FILE, parity_hook
from sharp_export.export import apply_proxy
from sharp_export.reference.gaussians import Gaussians3D

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the hook runs the real runner")


def _inputs() -> tuple[ExampleInputs, Gaussians3D]:
    example = ExampleInputs(torch.rand(1, 3, 8, 8), torch.ones(1))
    reference = Gaussians3D(torch.rand(1, 32, 3), torch.rand(1, 32, 3), torch.rand(1, 32, 4), torch.rand(1, 32, 3),
                            torch.rand(1, 32))  # fmt: skip
    return example, reference


def _proxy(passed: bool) -> dict:
    metrics = {"means_rel_depth": {"passed": passed}, "colors_abs": {"passed": True}}
    return {"label": "PROXY: test", "passed": passed, "metrics": metrics}


def _context(tmp_path, example: ExampleInputs, reference: Gaussians3D, weights: str = "none") -> ParityContext:
    manifest = Manifest({}, "coreml", "fp16", {"weights": weights}, IOSpec((), ()), {}, {})
    return ParityContext(tmp_path, manifest, example, reference, COREML_TARGET, "fp16", "cpu")


def test_deferred_with_reference_bundle(tmp_path):
    example, reference = _inputs()
    summary = parity_hook(_context(tmp_path, example, reference))
    assert summary["status"] == "deferred" and "macOS" in summary["reason"]
    assert TOLERANCES_FILE not in summary["reason"]  # uncompressed weights: the table's own rows
    assert TOLERANCES_FILE in parity_hook(_context(tmp_path, example, reference, weights="int8"))["reason"]
    stored = np.load(tmp_path / REFERENCE_FILE)
    np.testing.assert_array_equal(stored["mean_vectors"], reference.mean_vectors.numpy())
    np.testing.assert_array_equal(stored["image"], example.image.numpy())


def test_passing_proxy_keeps_the_check_deferred():
    summary = apply_proxy({"status": "deferred"}, _proxy(True))
    assert summary["status"] == "deferred" and summary["proxy"]["passed"] is True


def test_failing_proxy_fails_a_deferred_check():
    summary = apply_proxy({"status": "deferred"}, _proxy(False))
    assert summary["status"] == "failed"
    assert summary["failures"] == ["means_rel_depth (proxy)"]


def test_no_proxy_for_fp32():
    assert apply_proxy({"status": "deferred"}, None) == {"status": "deferred", "proxy": None}
