"""On a Mac: load the converted package, predict, compare with the golden outputs, report the ANE share.

Skipped elsewhere (Core ML predicts only on macOS). Nothing here has been run yet: the numbers it prints
are the first on-device measurements, and the fp16 bounds are the provisional table rows until then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predicts only on macOS"),
]


@pytest.fixture(scope="module", params=[("fp32", "none"), ("fp16", "none"), ("fp16", "components")])
def artifact(request, golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("coremltools")
    from sharp_export.contract import ExportRequest
    from sharp_export.converters.coreml.target import parity_hook
    from sharp_export.export import run_export

    precision, split = request.param
    out = tmp_path_factory.mktemp("coreml_mac") / f"{precision}_{split}"
    export = ExportRequest(
        target="coreml",
        output=out,
        preset="tiny",
        checkpoint=golden_dir / "weights_perturbed.safetensors",
        precision=precision,
        options={"split": split},
    )
    return run_export(export, parity_hook=parity_hook)


def test_predict_matches_golden(artifact: Path, golden_dir: Path):
    from sharp_export.artifact import read_manifest
    from sharp_export.parity.compare import compare_gaussians
    from sharp_export.parity.report import format_table
    from sharp_export.registry import load_tolerances, open_runner

    manifest = read_manifest(artifact)
    assert manifest.parity["status"] == "passed", manifest.parity
    golden = np.load(golden_dir / "out_square_perturbed.npz")
    image = np.load(artifact / "reference_outputs.npz")["image"]
    with open_runner(artifact) as runner:
        candidate = runner.infer(image, np.array([1.0], dtype=np.float32))
    results = compare_gaussians(golden, candidate, load_tolerances("coreml", manifest.precision), space="raw")
    print(f"\nCore ML {manifest.precision} vs golden (device):\n{format_table(results)}")
    assert all(r.passed for r in results)


def test_compute_plan_neural_engine_share(artifact: Path):
    from sharp_export.artifact import read_manifest
    from sharp_export.runtime.coreml_runner import artifact_packages, compute_plan_summary

    manifest = read_manifest(artifact)
    for package in artifact_packages(artifact, manifest):
        plan = compute_plan_summary(package, "all")
        print(f"\nMLComputePlan {manifest.precision} {package.name}: {plan}")
        assert abs(sum(plan[k] for k in ("neural_engine", "gpu", "cpu", "unknown")) - 1.0) < 0.05
        if manifest.precision == "fp16" and package.name != "gaussians.mlpackage":
            assert plan["neural_engine"] > 0.0  # the network is fp16; its share is the number to report
