"""`sharp-export parity` end to end on a tiny ONNX artifact: pass, damaged weights (exit 3), golden bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sharp_export.cli import cli
from sharp_export.contract import ExportRequest
from sharp_export.export import run_export


@pytest.fixture(scope="module")
def artifact(golden_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "tiny_onnx"
    request = ExportRequest(
        target="onnx",
        output=out,
        preset="tiny",
        checkpoint=golden_dir / "weights_perturbed.safetensors",
        options={"external_data": "always"},
    )
    return run_export(request)


@pytest.fixture(scope="module")
def image(golden_dir):
    return str(golden_dir / "input_640x480.png")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_artifact_passes_and_report_is_written(artifact, image, tmp_path):
    report = tmp_path / "parity.json"
    result = invoke("parity", artifact, "--images", image, "--poses", "1", "--report", report)
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["passed"] and document["failures"] == []
    psnr = [v for v in document["views"] if v["metric"] == "psnr_db"]
    assert len(psnr) == 1 and psnr[0]["value"] > 60  # measured 108 dB (fp32 ORT vs torch)
    gated = {a["metric"] for a in document["attributes"] if a["status"] != "INFO"}
    assert {"means_rel_depth", "scales_log", "quat_angle_deg", "colors_abs", "opacities_abs"} <= gated


def damaged_copy(artifact, tmp_path):
    """A copy whose first initializer (in model.onnx.data) is scaled by 1.5: same size, wrong numbers."""
    copy = tmp_path / "damaged"
    shutil.copytree(artifact, copy)
    model = onnx.load(str(copy / "model.onnx"), load_external_data=False)
    # Pick the patch-embedding conv weight of the patch ViT: every Gaussian depends on it.
    init = next(i for i in model.graph.initializer if "patch_encoder.patch_embed.proj.weight" in i.name)
    entries = {e.key: e.value for e in init.external_data}
    offset, length = int(entries["offset"]), int(entries["length"])
    with open(copy / entries["location"], "r+b") as handle:
        handle.seek(offset)
        values = np.frombuffer(handle.read(length), dtype=np.float32) * 1.5
        handle.seek(offset)
        handle.write(values.astype(np.float32).tobytes())
    return copy


def test_damaged_weights_fail_with_exit_code_3(artifact, image, tmp_path):
    damaged = damaged_copy(artifact, tmp_path)
    result = invoke("parity", damaged, "--images", image, "--poses", "1", "--report", tmp_path / "p.json")
    assert result.exit_code == 3, result.output
    assert "parity failed" in result.output and "mean_vectors.means_rel_depth" in result.output
    assert not json.loads((tmp_path / "p.json").read_text())["passed"]


def test_golden_bundle_checks_without_weights(artifact, image, golden_dir, tmp_path):
    bundle = tmp_path / "golden"
    weights = golden_dir / "weights_perturbed.safetensors"
    made = invoke(
        "parity", "--preset", "tiny", "-c", weights, "--images", image, "--poses", "2", "--write-golden", bundle
    )
    assert made.exit_code == 0, made.output
    assert (bundle / "golden.json").is_file() and (bundle / "golden.npz").is_file()

    good = invoke("parity", artifact, "--golden", bundle, "--report", tmp_path / "g.json")
    assert good.exit_code == 0, good.output
    views = {v["view"] for v in json.loads((tmp_path / "g.json").read_text())["views"]}
    assert views == {"input_640x480:first", "input_640x480:quarter"}

    bad = invoke("parity", damaged_copy(artifact, tmp_path), "--golden", bundle, "--report", tmp_path / "b.json")
    assert bad.exit_code == 3, bad.output


def test_usage_errors_are_one_line(tmp_path):
    result = invoke("parity", tmp_path / "missing")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "does not exist" in result.output
    result = invoke("parity", "--write-golden", tmp_path / "g", "--golden", tmp_path)
    assert result.exit_code == 1 and "--write-golden takes no ARTIFACT" in result.output
