"""The OpenVINO target: the fast CPU path. ONNX (the onnx target's own export) -> OpenVINO IR (model.xml/.bin).

Why this target exists (benchmarks/results/cpu_paths_full_amx.json, full preset on a 2-core Xeon with AMX):
OpenVINO runs the IR with ``INFERENCE_PRECISION_HINT=bf16`` in 14.1 s and the int8 IR in 16.6 s, against
85.4 s for torch eager fp32 and 25.7 s for torch bf16 autocast in the same run.

* The fp32 / bf16 IR stores fp32 weights (``save_model(compress_to_fp16=False)``): OpenVINO's default would
  silently halve them. ``--precision bf16`` is an execution hint recorded in the manifest and applied by the
  runner when it compiles the model; the file is the same as for fp32.
* Conversion goes through the ONNX file because ``ov.convert_model`` on the torch module took 17 minutes on
  the full preset (torch tracing of 702M parameters), the ONNX path a fraction of that.
* ``--precision int8`` converts the int8 graph of the step every ONNX-based target shares
  (``converters/onnx/precision.py``: static QDQ in the encoder's two ViTs only, per-channel 8-bit weights, uint8
  activations calibrated on ``--calib-data`` photos, the rest float). OpenVINO turns each Q/DQ pair into a
  FakeQuantize and runs those convolutions and matmuls on int8 kernels (VNNI / AMX where the CPU has them). NNCF's
  own quantizer was tried first and left out: at full size its statistics pass grew past 24 GB and was killed
  (``INT8_ROUTE_NOTE``).
* ``--float-ops bf16`` (int8 only) compiles the same int8 IR with the bf16 hint, so the ops int8 leaves float run
  in bf16: the fastest CPU path measured, gated by its own rows (``int8-bf16-openvino``).

This row is what the registry imports: OpenVINO, the ONNX step and torch are imported inside its functions only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.contract import ConvertContext, ConvertResult, ExportRequest
from sharp_export.converters.onnx.graph import MODEL_FILE as ONNX_FILE
from sharp_export.converters.onnx.target import (
    CALIB_RUNTIME_OPTION,
    CALIB_SIZE_OPTION,
    OPSET_OPTION,
    validate_calibration,
    validate_opset,
)
from sharp_export.errors import TOOLCHAIN_OUTPUT_HINT, ConversionError, UserInputError
from sharp_export.progress import echo, heartbeat, rss_gb
from sharp_export.targets import Target, TargetOption, missing_packages

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.openvino_runner import OpenVINORunner

MODEL_FILE = "model.xml"  # + model.bin (weights) beside it
ONNX_SUBDIR = "onnx"  # scratch folder for the intermediate ONNX, removed after conversion
# precision -> OpenVINO CPU INFERENCE_PRECISION_HINT
# (int8: the ops left float run in f32, or in bf16 with --float-ops bf16.)
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
FLOAT_OPS = ("f32", "bf16")
FLOAT_OPS_OPTION = TargetOption(
    "float_ops",
    str,
    "f32",
    "int8 only: precision of the ops int8 leaves float; bf16 (CPUs with AVX-512 BF16 / AMX) is the fastest CPU "
    "path measured (docs/benchmarks.md), at about twice int8's depth error",
    choices=FLOAT_OPS,
)
INT8_ROUTE_NOTE = (
    "the onnx target's int8 QDQ graph (ONNX Runtime's quantizer, its low-memory MinMax calibration) converted by "
    "OpenVINO. NNCF (nncf.quantize on the IR) was tried: on the tiny preset its best recipe was more accurate "
    "(benchmarks/results/openvino_int8_study_tiny.json), but on the full preset its statistics pass was killed at "
    "24.3 GB RSS, twice, on a 24 GB machine (with and without bias correction)"
)


def check_environment() -> str | None:
    reason = missing_packages({"openvino": "openvino", "onnx": "onnx", "onnxscript": "onnxscript"})
    if reason is not None:
        return f"{reason}: pip install 'sharp-export[openvino]'"
    return None


def export_environment(request: ExportRequest) -> str | None:
    """int8 also needs ONNX Runtime (its quantizer calibrates the ONNX graph); fp32 and bf16 do not."""
    if (reason := check_environment()) is not None:
        return reason
    if request.precision == "int8" and (reason := missing_packages({"onnxruntime": "onnxruntime"})) is not None:
        return f"{reason}: pip install 'sharp-export[openvino,onnx]' (int8 calibrates with ONNX Runtime)"
    return None


def validate(request: ExportRequest) -> None:
    validate_opset(request)
    validate_calibration(request)
    if request.options.get("float_ops", "f32") != "f32" and request.precision != "int8":
        raise UserInputError(
            f"--float-ops applies to --precision int8, not {request.precision}",
            fix="drop --float-ops (--precision bf16 runs the whole network in bf16)",
        )


def inference_precision(precision: str, options: Mapping[str, Any]) -> str:
    """The INFERENCE_PRECISION_HINT an artifact is compiled with: its precision's, or int8's --float-ops."""
    if precision == "int8":
        return str(options.get("float_ops", "f32"))
    return INFERENCE_PRECISION[precision]


@contextlib.contextmanager
def _without_conversion_telemetry() -> Iterator[None]:
    """ov.convert_model sends usage events (openvino_telemetry, Google Analytics) unless a consent file declines
    them, and each event forks the converting process: 41 forks in one tiny export here, of a process that holds
    gigabytes at full size. It sends nothing when it believes it runs in CI (``CI=true``), the one switch it offers
    without writing the user's consent file; set for the call only."""
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = previous


def convert(ctx: ConvertContext) -> ConvertResult:
    import time

    import openvino as ov

    from sharp_export.converters.onnx.precision import export_at_precision

    int8 = ctx.request.precision == "int8"
    onnx_dir = ctx.workdir / ONNX_SUBDIR
    # int8 is the onnx target's int8 graph; fp32 and bf16 share the fp32 ONNX (bf16 is a compile-time hint).
    written = export_at_precision(ctx, onnx_dir, external_data=True, precision="int8" if int8 else "fp32")
    start = time.perf_counter()
    try:
        with heartbeat("ov.convert_model"), _without_conversion_telemetry():
            model = ov.convert_model(str(onnx_dir / ONNX_FILE))
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ConversionError(f"OpenVINO could not read the ONNX model: {first}", fix=TOOLCHAIN_OUTPUT_HINT) from error
    convert_s = time.perf_counter() - start
    int8_details = None
    if written.reduced is not None:
        fake_quantize = sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
        if fake_quantize == 0:  # never ship an fp32 model labelled int8
            raise ConversionError("OpenVINO kept no quantizer of the int8 ONNX", path=onnx_dir / ONNX_FILE)
        int8_details = {"route": INT8_ROUTE_NOTE, "fake_quantize_ops": fake_quantize, **written.reduced}
    for key, value in ctx.metadata.items():
        model.set_rt_info(value, ["sharp_export", key.removeprefix("sharp_export.")])
    start = time.perf_counter()
    ov.save_model(model, str(ctx.workdir / MODEL_FILE), compress_to_fp16=False)
    save_s = time.perf_counter() - start
    del model
    shutil.rmtree(onnx_dir)
    echo(f"    ov.convert_model {convert_s:.1f} s, save {save_s:.1f} s, RSS {rss_gb():.1f} GB")
    exported = written.export
    details = {
        "exporter": f"{exported['exporter']} -> OpenVINO {ov.__version__} (ov.convert_model on the ONNX file)",
        "openvino": ov.__version__,
        "onnx_opset": exported["opset"],
        "weights": "int8 for the quantized ops, fp32 for the rest (save_model compress_to_fp16=False)"
        if int8
        else "fp32 (save_model compress_to_fp16=False)",
        "inference_precision_hint": inference_precision(ctx.request.precision, ctx.request.options),
        "onnx_export_seconds": exported["export_seconds"],
        "convert_seconds": round(convert_s, 2),
        "save_seconds": round(save_s, 2),
        "files": [MODEL_FILE, "model.bin"],
    }
    if int8_details is not None:
        details["int8"] = int8_details
    return ConvertResult(main_file=MODEL_FILE, details=details)


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> OpenVINORunner:
    from sharp_export.runtime.openvino_runner import OpenVINORunner

    hint = inference_precision(manifest.precision, manifest.options)
    path = Path(artifact_dir) / manifest.main_file
    # The compiled-model cache knows the artifact by its files' hashes (none yet while the export checks parity: the
    # manifest is written after, so the export's own check compiles without the cache).
    model_files = {MODEL_FILE, Path(MODEL_FILE).with_suffix(".bin").name}
    hashes = sorted(f"{name}:{entry.get('sha256')}" for name, entry in manifest.files.items() if name in model_files)
    cache_key = "|".join(hashes) if hashes else None
    return OpenVINORunner(path, manifest.io, device, hint, int8=manifest.precision == "int8", cache_key=cache_key)


OPENVINO_TARGET = Target(
    name="openvino",
    suffix=".xml",
    extra="openvino",
    description="OpenVINO IR for CPUs; bf16 runs on AVX-512 BF16 / AMX (the fastest CPU path measured)",
    precisions=("fp32", "bf16", "int8"),
    supports_dynamic_batch=True,
    supports_calibration=True,
    devices=("cpu",),
    options=(OPSET_OPTION, CALIB_SIZE_OPTION, CALIB_RUNTIME_OPTION, FLOAT_OPS_OPTION),
    tolerance_profiles={"bf16": "bf16-openvino", "int8": "int8-openvino"},
    option_tolerance_profiles={("int8", "float_ops", "bf16"): "int8-bf16-openvino"},
    check_environment=check_environment,
    check_export_environment=export_environment,
    convert=convert,
    open_runner=open_runner,
    validate=validate,
)
