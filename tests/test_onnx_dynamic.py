"""Dynamic batch: the tiny preset exported once with Dim("batch"), run in ONNX Runtime at batch 1 and 3."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from sharp_export.artifact import read_manifest
from sharp_export.commands.export import make_target_command
from sharp_export.reference.checkpoint import build_model
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS
from sharp_export.registry import get_target, open_runner
from sharp_export.samples import example_inputs

# Measured worst |ORT - torch| over batch 1 and 3 (perturbed tiny weights, 2-core dev box); ~5x margin.
ATOL = {
    "mean_vectors": 1e-3,  # measured 1.4e-4 (values up to ~114)
    "singular_values": 2e-5,  # measured 2.5e-6
    "quaternions": 2e-5,  # measured 2.0e-6
    "colors": 3e-6,  # measured 4.8e-7
    "opacities": 3e-6,  # measured 4.2e-7
}


@pytest.fixture(scope="module")
def dynamic_artifact(tmp_path_factory, golden_dir):
    out = tmp_path_factory.mktemp("dyn") / "tiny-dyn"
    weights = golden_dir / "weights_perturbed.safetensors"
    args = ["--preset", "tiny", "-c", str(weights), "-o", str(out), "--dynamic-batch"]
    result = CliRunner().invoke(make_target_command(get_target("onnx")), args)
    assert result.exit_code == 0, result.output
    return out


def test_manifest_and_graph_declare_a_dynamic_batch(dynamic_artifact):
    manifest = read_manifest(dynamic_artifact)
    assert manifest.options["dynamic_batch"] is True
    assert manifest.io.dynamic_batch
    assert manifest.io.input("image").shape == ("batch", 3, 384, 384)
    assert manifest.parity["status"] == "passed" and manifest.parity["batch"] == 2  # exported at batch 2
    graph = onnx.load(str(dynamic_artifact / "model.onnx"), load_external_data=False).graph
    for value in list(graph.input) + list(graph.output):
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value, value.name  # symbolic, not specialised


@pytest.mark.parametrize("batch", [1, 3])
def test_batches_1_and_3_match_torch(dynamic_artifact, golden_dir, batch):
    model = build_model("tiny", golden_dir / "weights_perturbed.safetensors").model
    example = example_inputs(384, batch)  # mirrored images and distinct disparity factors per entry
    with torch.no_grad():
        reference = model(example.image, example.disparity_factor)
    with open_runner(dynamic_artifact) as runner:
        candidate = runner.infer(example.image.numpy(), example.disparity_factor.numpy())
    for name, cand, ref in zip(GAUSSIAN_FIELDS, candidate, reference, strict=True):
        assert cand.shape == ref.shape and cand.shape[0] == batch
        np.testing.assert_allclose(cand.numpy(), ref.numpy(), rtol=0, atol=ATOL[name], err_msg=name)
    if batch == 3:  # entries differ (mirrored image, other factor), so batching did not mix them up
        assert not torch.allclose(candidate.mean_vectors[0], candidate.mean_vectors[1])
