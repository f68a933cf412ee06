"""The target registry and the environment report."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from importlib.util import find_spec

import pytest
import torch

from sharp_export import registry
from sharp_export.env import environment_report, format_environment, lpips_weights_path
from sharp_export.errors import UserInputError
from sharp_export.registry import all_targets, get_target, register_target
from sharp_export.targets import Target, TargetOption, missing_packages


def _fake_target(name: str = "fake", **overrides) -> Target:
    fields = dict(
        name=name,
        suffix=".bin",
        extra="fake",
        description="a fake target for tests",
        precisions=("fp32",),
        check_environment=lambda: None,
        convert=lambda ctx: None,
        open_runner=lambda directory, manifest, device: None,
    )
    fields.update(overrides)
    return Target(**fields)


def test_builtin_targets_are_registered_in_order():
    names = [t.name for t in all_targets()]
    assert names[0] == "onnx"
    assert "tensorrt" in names
    onnx = get_target("onnx")
    assert onnx.suffix == ".onnx" and onnx.extra == "onnx"
    assert onnx.supports_dynamic_batch and onnx.precisions == ("fp32", "fp16", "int8")
    assert onnx.supports_calibration
    assert onnx.tolerance_profile("fp16") == "fp16-onnx" and onnx.tolerance_profile("int8") == "int8-onnx"
    assert [o.name for o in onnx.options] == ["opset", "external_data", "calib_size", "calib_runtime"]
    assert onnx.option("opset").default == 18 and onnx.option("opset").flag == "--opset"


def test_an_option_can_pick_the_tolerance_rows():
    openvino = get_target("openvino")
    assert openvino.tolerance_profile("int8") == "int8-openvino"
    assert openvino.tolerance_profile("int8", {"float_ops": "f32"}) == "int8-openvino"
    assert openvino.tolerance_profile("int8", {"float_ops": "bf16"}) == "int8-bf16-openvino"
    assert openvino.tolerance_profile("bf16", {"float_ops": "bf16"}) == "bf16-openvino"  # int8 rows only


def test_registering_a_name_twice_is_an_error():
    register_target(_fake_target("twice"))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_target(_fake_target("twice"))
        with pytest.raises(ValueError, match="already registered"):
            register_target(dataclasses.replace(get_target("onnx")))
    finally:
        registry.unregister_target("twice")


def test_only_static_int8_and_fp8_need_calibration_photos():
    onnx, executorch = get_target("onnx"), get_target("executorch")
    assert onnx.needs_calibration("int8") and not onnx.needs_calibration("fp16")
    assert get_target("tensorrt").needs_calibration("fp8")
    # ExecuTorch's int8 computes its activation scales as it runs: no --calib-data on its command at all.
    assert executorch.runtime_quantized == ("int8",) and not executorch.needs_calibration("int8")
    assert not executorch.supports_calibration
    # A runtime-quantized int8 is consistent without supports_calibration; a calibrated one is not (rows below).
    _fake_target(precisions=("fp32", "int8"), runtime_quantized=("int8",), tolerance_profiles={"int8": "int8-onnx"})


def test_unknown_target_names_the_known_ones():
    with pytest.raises(UserInputError, match="unknown target 'nope'.*onnx"):
        get_target("nope")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precisions": ("fp64",)}, "non-empty subset"),
        ({"precisions": ()}, "non-empty subset"),
        ({"default_precision": "fp16"}, "default precision"),
        ({"precisions": ("fp32", "int8")}, "int8 needs supports_calibration"),
        ({"options": (TargetOption("a", int, 1, "x"), TargetOption("a", int, 2, "y"))}, "duplicate option"),
        ({"option_tolerance_profiles": {("fp32", "nope", True): "fp32"}}, "option 'nope'; each must exist"),
    ],
)
def test_inconsistent_rows_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        _fake_target(**overrides)


def test_targets_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_target("onnx").name = "x"  # type: ignore[misc]


def test_status_reports_usable_or_reason(without_tensorrt):
    assert get_target("onnx").status() == "usable"  # onnx, onnxruntime, onnxscript are installed here
    trt_status = get_target("tensorrt").status()
    assert trt_status.startswith("tensorrt not importable: pip install 'sharp-export[tensorrt]'")
    assert _fake_target(check_environment=lambda: "missing x: pip install y").status() == "missing x: pip install y"


def test_missing_packages_does_not_import():
    assert missing_packages({"json": "json"}) is None
    assert missing_packages({"surely_not_a_module_xyz": "xyz-dist"}) == "xyz-dist not installed"


def test_environment_report_has_versions_and_targets():
    report = environment_report()
    packages = report["packages"]
    import numpy

    assert packages["torch"] == torch.__version__.split("+")[0] or packages["torch"] == torch.__version__
    assert packages["numpy"] == numpy.__version__
    assert packages["tensorrt"] == (importlib.metadata.version("tensorrt") if find_spec("tensorrt") else None)
    assert report["targets"]["onnx"] == "usable"
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert report["cuda"]["available"] is torch.cuda.is_available()
    assert report["cpu_count"] >= 1
    assert (report["lpips_weights"] is not None) == (lpips_weights_path() is not None)
    text = format_environment(report)
    assert "torch" in text and "onnx          usable" in text
    assert ("tensorrt not importable" in text) is (find_spec("tensorrt") is None)
    light = environment_report(include_runtime_probes=False)
    assert "cuda" not in light and "onnxruntime_providers" not in light
