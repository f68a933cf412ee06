"""Non-finite Gaussians are never written or shipped silently (issue 32, class 2).

The catalogue (tests/test_bad_inputs_safety.py) covers the commands: a checkpoint with NaN weights, a model or an
artifact whose outputs go NaN, in predict, a predict batch, run and parity. Here: the pieces every path uses
(``find_non_finite``, ``non_finite_error``), the parity harness side by side, and an export whose own check finds
NaN (kept, marked failed, exit 3, and a warning when packaged for Triton).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sharp_export.artifact import read_manifest
from sharp_export.cli import cli
from sharp_export.errors import ParityError, UserInputError
from sharp_export.parity import harness
from sharp_export.parity.tolerances import profile_tolerances
from sharp_export.pipeline import non_finite_error
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta, find_non_finite


def gaussians(count: int = 10, batch: int = 1) -> Gaussians3D:
    torch.manual_seed(0)
    return Gaussians3D(
        torch.rand(batch, count, 3) + 1, torch.rand(batch, count, 3), torch.rand(batch, count, 4),
        torch.rand(batch, count, 3), torch.rand(batch, count),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("field", "rows", "value", "first"),
    [
        ("colors", [3], math.nan, "colors"),
        ("opacities", [0, 9], math.inf, "opacities"),
        ("singular_values", [1, 2, 5], -math.inf, "singular_values"),
    ],
)
def test_find_non_finite_counts_gaussians_and_names_the_first_attribute(field, rows, value, first):
    g = gaussians()
    bad = getattr(g, field).clone()
    bad[0, rows] = value
    g = g._replace(**{field: bad}, quaternions=g.quaternions.clone())
    g.quaternions[0, rows[:1]] = math.nan  # the same Gaussian twice: counted once; quaternions come first
    problem = find_non_finite(g)
    assert problem is not None and problem.count == len(rows) and problem.total == 10
    assert problem.first_field == ("quaternions" if field in ("colors", "opacities") else first)
    assert find_non_finite(gaussians(batch=2)) is None


def test_the_error_is_exit_1_from_the_model_and_exit_3_from_an_artifact():
    g = gaussians()
    g.colors[0, :4] = math.nan
    model = non_finite_error(g, Path("in/photo.png"), producer="the model (seed 0, fp32)", artifact=False)
    art = non_finite_error(g, Path("in/photo.png"), producer="artifact out/onnx (onnx fp16)", artifact=True)
    assert isinstance(model, UserInputError) and model.exit_code == 1
    assert isinstance(art, ParityError) and art.exit_code == 3
    for error in (model, art):
        line = error.one_line()
        assert line.startswith("in/photo.png: ") and "NaN or Inf values in 4 of 10 Gaussians" in line
        assert "(first attribute: colors)" in line and "nothing was written" in line
    assert non_finite_error(gaussians(), "x", producer="p", artifact=True) is None


def parity_input() -> harness.ParityInput:
    return harness.ParityInput("photo", torch.rand(1, 3, 64, 64), torch.tensor([1.0]), SceneMeta(50.0, 64, 48),
                               source="in/photo.png")  # fmt: skip


def reference(image: torch.Tensor, factor: torch.Tensor) -> Gaussians3D:  # [1, 3, R, R], [1]
    return gaussians(count=2048)


def nan_candidate(image: torch.Tensor, factor: torch.Tensor) -> Gaussians3D:
    g = gaussians(count=2048)
    g.mean_vectors[0, 100:110] = math.nan
    return g


def test_parity_of_one_artifact_stops_at_its_first_nan():
    tolerances = profile_tolerances("fp32-torch")
    with pytest.raises(ParityError, match="in/photo.png: the artifact produced NaN or Inf values in 10 of 2,048"):
        harness.run_parity(nan_candidate, reference, [parity_input()], tolerances, poses=(), resolution=64)
    with pytest.raises(UserInputError, match="the reference model produced NaN or Inf") as info:
        harness.run_parity(reference, nan_candidate, [parity_input()], tolerances, poses=(), resolution=64)
    assert info.value.exit_code == 1


def test_side_by_side_one_nan_artifact_fails_its_report_only():
    tolerances = {"good": profile_tolerances("fp32-torch"), "nan": profile_tolerances("fp32-torch")}
    reports = harness.run_parity_shared({"good": reference, "nan": nan_candidate}, reference, [parity_input()],
                                        tolerances, poses=("first",), resolution=64)  # fmt: skip
    assert reports["good"].passed and not reports["nan"].passed
    assert reports["nan"].views == []  # a NaN scene is not rendered
    assert any("NaN/Inf values in the candidate" in r.message for r in reports["nan"].attributes)


def test_an_export_whose_artifact_gives_nan_is_kept_marked_failed(tmp_path, standin, monkeypatch):
    from sharp_export.runtime import onnxruntime_runner

    real = onnxruntime_runner.OnnxRuntimeRunner._infer

    def nan_infer(self, image, disparity_factor):  # what an fp16 overflow does to a few Gaussians
        out = real(self, image, disparity_factor)
        colors = out.colors.clone()
        colors[:, :5] = math.inf
        return out._replace(colors=colors)

    monkeypatch.setattr(onnxruntime_runner.OnnxRuntimeRunner, "_infer", nan_infer)
    out = tmp_path / "art"
    result = CliRunner().invoke(cli, ["onnx", "--preset", "tiny", "--seed", "0", "-o", str(out)])
    assert result.exit_code == 3, result.output
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "non-finite outputs: NaN or Inf values in 5 of 2,048 Gaussians" in error
    assert "first attribute: colors" in error and "kept with parity status 'failed'" in error
    parity = read_manifest(out).parity
    assert parity["status"] == "failed" and parity["non_finite"] == {"count": 5, "total": 2048, "first_field": "colors"}
    assert parity["failures"][0].startswith("non-finite outputs")

    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    packaged = CliRunner().invoke(cli, ["triton", str(out), "-o", str(tmp_path / "repo")])
    assert packaged.exit_code == 0, packaged.output
    assert "warning: " in packaged.stderr and "FAILED parity when exported (non-finite outputs" in packaged.stderr
