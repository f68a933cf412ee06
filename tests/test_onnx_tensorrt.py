"""TensorRT cannot run here: only its ONNX stage (the TensorRT-ready model) is built and checked with ORT."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from sharp_export.artifact import raw_io_spec
from sharp_export.converters.tensorrt import build_tensorrt_ready_onnx, check_environment
from sharp_export.reference.checkpoint import build_model
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS
from sharp_export.runtime.onnxruntime_runner import OnnxRuntimeRunner
from sharp_export.samples import example_inputs


def test_environment_check_names_the_install_command():
    assert check_environment() == (
        "tensorrt not importable: pip install 'sharp-export[tensorrt]' on a machine with NVIDIA's libraries"
    )


def test_tensorrt_ready_onnx_uses_external_data_and_runs_in_ort(tmp_path, golden_dir):
    model = build_model("tiny", golden_dir / "weights_perturbed.safetensors").model
    example = example_inputs(384, 1)
    io = raw_io_spec(384, 1)
    details = build_tensorrt_ready_onnx(model, example, io, tmp_path / "onnx", opset=18, dynamic_batch=False,
                                        metadata={"sharp_export.preset": "tiny"})  # fmt: skip
    # The TensorRT parser resolves external data next to the model: exactly one data file beside it.
    assert details["external_data"] is True and details["opset"] == 18
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["model.onnx", "model.onnx.data"]
    proto = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["image", "disparity_factor"]
    with torch.no_grad():
        reference = model(example.image, example.disparity_factor)
    with OnnxRuntimeRunner(tmp_path / "onnx" / "model.onnx", io) as runner:
        candidate = runner.infer(example.image, example.disparity_factor)
    # Same graph as the onnx target: measured worst means 1.3e-4, others <= 2.3e-6.
    for name, cand, ref in zip(GAUSSIAN_FIELDS, candidate, reference, strict=True):
        atol = 1e-3 if name == "mean_vectors" else 2e-5
        np.testing.assert_allclose(cand.numpy(), ref.numpy(), rtol=0, atol=atol, err_msg=name)
