"""Runner interface: input validation, TorchRunner, and open_runner's dispatch and errors."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sharp_export import registry
from sharp_export.artifact import Manifest, preprocessing_description, raw_io_spec, write_manifest
from sharp_export.errors import TargetUnavailableError, UserInputError
from sharp_export.reference.checkpoint import build_model
from sharp_export.registry import get_target, open_runner
from sharp_export.runtime.base import check_inputs
from sharp_export.runtime.torch_runner import TorchRunner
from sharp_export.samples import example_inputs


def test_check_inputs_accepts_dynamic_batch_and_rejects_mismatches():
    io = raw_io_spec(64, "batch")
    image = np.zeros((3, 3, 64, 64), np.float32)
    check_inputs(io, image, np.ones(3, np.float32))
    with pytest.raises(UserInputError, match="batch mismatch: image has 3 entries, disparity_factor 2"):
        check_inputs(io, image, np.ones(2, np.float32))
    with pytest.raises(UserInputError, match="'disparity_factor' has dtype float64"):
        check_inputs(io, image, np.ones(3))
    with pytest.raises(UserInputError, match=r"'image' has shape \(3, 64, 64\), the artifact expects \('batch', 3"):
        check_inputs(io, image[0], np.ones(3, np.float32))
    with pytest.raises(UserInputError, match="empty batch"):
        check_inputs(io, image[:0], np.ones(0, np.float32))


def test_torch_runner_is_the_eager_model(golden_dir):
    loaded = build_model("tiny", golden_dir / "weights_perturbed.safetensors")
    example = example_inputs(384, 2)
    with torch.no_grad():
        direct = loaded.model(example.image, example.disparity_factor)
    with TorchRunner(loaded, channels_last=False) as runner:
        assert runner.io.dynamic_batch
        out = runner.infer(example.image, example.disparity_factor.numpy())  # torch or numpy inputs
        assert runner.last_inference_time_s > 0
    for a, b in zip(out, direct, strict=True):
        assert torch.equal(a, b)  # same module, same inputs, NCHW: bit-identical
    with TorchRunner(loaded) as runner:  # the CPU default: channels-last convolutions
        assert runner.channels_last
        fast = runner.infer(example.image, example.disparity_factor.numpy())
    loaded.model.to(memory_format=torch.contiguous_format)
    for a, b in zip(fast, direct, strict=True):
        # Another summation order only: measured max |diff| / max |value| ~1e-7 (tiny), z rel 3.1e-7 (full).
        assert float((a - b).abs().max()) <= 1e-5 * max(float(b.abs().max()), 1.0)
    golden = np.load(golden_dir / "out_square_perturbed.npz")
    # batch entry 0 is the golden input.png with disparity_factor 1.0; measured |torch - ml-sharp| <= 1.4e-4
    np.testing.assert_allclose(out.mean_vectors[:1].numpy(), golden["mean_vectors"], rtol=0, atol=1e-3)
    assert not runner.is_open


def _fake_artifact(directory, target: str = "onnx") -> None:
    manifest = Manifest(source={"preset": "tiny", "label": "x"}, target=target, precision="fp32", options={},
                        io=raw_io_spec(64, 1), preprocessing=preprocessing_description(64), environment={},
                        main_file="model.onnx")  # fmt: skip
    (directory / "model.onnx").write_bytes(b"not really onnx")
    write_manifest(directory, manifest)


def test_open_runner_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(UserInputError, match="not a sharp-export artifact"):
        open_runner(tmp_path)
    _fake_artifact(tmp_path)
    with pytest.raises(UserInputError, match="a onnx artifact runs on cpu, cuda, not 'mps'"):
        open_runner(tmp_path, device="mps")
    row = dataclasses.replace(get_target("onnx"), check_environment=lambda: "onnxruntime not installed: pip x")
    monkeypatch.setitem(registry._REGISTRY, "onnx", row)
    with pytest.raises(
        TargetUnavailableError, match="target 'onnx' is not usable here: onnxruntime not installed"
    ) as info:
        open_runner(tmp_path)
    assert info.value.exit_code == 2


def test_open_runner_unknown_target(tmp_path):
    _fake_artifact(tmp_path, target="from-the-future")
    with pytest.raises(UserInputError, match="unknown target 'from-the-future'"):
        open_runner(tmp_path)


@pytest.mark.parametrize(
    "value, expected", [("3", 3), (" 2 ", 2), ("0", None), ("-1", None), ("two", None), ("", None)]
)
def test_omp_threads_bounds_the_runtimes_pools(monkeypatch, value, expected):
    from sharp_export.runtime.base import omp_threads

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert omp_threads() == expected
    if expected is not None and importlib.util.find_spec("onnxruntime") is not None:
        from sharp_export.runtime.onnxruntime_runner import OnnxRuntimeRunner

        assert OnnxRuntimeRunner(Path("unused.onnx"), raw_io_spec(384, 1)).intra_op_threads == expected


@pytest.mark.parametrize(
    "machine, flags, expected",
    [
        ("x86_64", "fpu avx2 avx512f", True),  # AVX2 / AVX-512F only: int8 kernels may saturate
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),  # Alder Lake and later client CPUs
        ("aarch64", "fp asimd", False),  # not x86: the u8 x s8 saturation does not apply
    ],
)
def test_x86_without_vnni_reads_the_cpu_flags(monkeypatch, machine, flags, expected):
    from sharp_export.runtime import base

    monkeypatch.setattr(base.platform, "machine", lambda: machine)
    real_read_text = Path.read_text
    fake = f"processor\t: 0\nflags\t\t: {flags}\n"
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: fake if str(self) == "/proc/cpuinfo" else real_read_text(self, *a, **k)
    )
    assert base.x86_without_vnni() is expected
