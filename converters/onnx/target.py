"""The ONNX target: the raw predictor through ``torch.onnx.export(dynamo=True)``, run by ONNX Runtime.

Hazards handled here (docs/architecture.md §10.1, §10.2):

* Size: fp32 SHARP weighs 2.6 GB in ONNX, over protobuf's 2 GB limit, so the full preset always uses
  external data, in ONE file beside the model (``model.onnx`` + ``model.onnx.data``); both are hashed.
* Opset: asking the dynamo exporter for opset 17 may silently return an opset-18 model (its version
  converter fails on the full model). The declared opset is read back after saving and must equal the
  request, else ConversionError naming both numbers.
* Dynamic batch: exported with an example batch of 2 (torch.export specialises a size-1 dimension) and
  ``Dim("batch")`` on both inputs; a specialisation error is reported with torch's guard text.
* No silent fallback: if the dynamo exporter fails, the export fails (the legacy TorchScript exporter
  writes a different graph with 390 loose weight files and is deprecated).
* Reduced precision (``precision.py``, the step every ONNX-based target shares): ``--precision fp16`` (``half.py``)
  rewrites the fp32 graph to fp16 weights and compute with the tail kept fp32; ``--precision int8``
  (``quantize.py``) is static QDQ quantization calibrated on real photos (``--calib-data DIR`` or
  ``--calib-data samples``, ``--calib-size N``). I/O stays fp32.

This row is what the registry imports: the export code beside it (torch, onnx, onnxruntime) is imported inside
``convert`` and ``open_runner`` only, so `sharp-export --help` stays instant without any toolchain.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from sharp_export.contract import ConvertContext, ConvertResult, ExportRequest
from sharp_export.converters.onnx.graph import DEFAULT_OPSET, MODEL_FILE
from sharp_export.errors import UserInputError
from sharp_export.targets import Target, TargetOption, missing_packages

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.onnxruntime_runner import OnnxRuntimeRunner

MIN_OPSET, MAX_OPSET = 7, 30  # plausible ONNX opsets; the exporter itself decides which it supports
# Shared with the tensorrt target, which writes the same ONNX before building its engine.
OPSET_OPTION = TargetOption("opset", int, DEFAULT_OPSET, "ONNX opset; the declared opset is verified after export")
CALIB_SIZE_OPTION = TargetOption(
    "calib_size",
    int,
    None,
    "number of --calib-data images int8 / fp8 calibrate on, evenly spaced over the sorted files "
    "(default: 8, or all when fewer)",
)

CALIB_RUNTIME_OPTION = TargetOption(
    "calib_runtime",
    str,
    None,
    "int8 / fp8: who runs the calibration photos through the fp32 graph to collect activation ranges: openvino "
    "(bf16 where the CPU has it: at full size about 2x faster than onnxruntime, in less memory) or onnxruntime "
    "(fp32); auto (the default) = openvino when installed",
    choices=("auto", "openvino", "onnxruntime"),
)


def check_environment() -> str | None:
    reason = missing_packages({"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"})
    if reason is None:
        return None
    return f"{reason}: pip install 'sharp-export[onnx]'"


def validate_opset(request: ExportRequest) -> None:
    """The --opset checks shared by the onnx and tensorrt targets."""
    opset = int(request.options.get("opset", DEFAULT_OPSET))
    if opset < MIN_OPSET or opset > MAX_OPSET:
        raise UserInputError(f"--opset {opset} is not a valid ONNX opset", fix=f"use --opset {DEFAULT_OPSET}")
    if opset < DEFAULT_OPSET:
        # Measured with torch 2.13: below 18 the exporter down-converts after the fact. On the full model that
        # fails and the file keeps opset 18; on the tiny model it writes an invalid graph (Split with the
        # opset-18 attribute num_outputs). Neither is an opset-17 model, so refuse before any work.
        raise UserInputError(
            f"--opset {opset} is not supported: torch's dynamo exporter writes opset 18 or newer, and its "
            "down-conversion produces invalid or mislabelled models for SHARP",
            fix=f"use --opset {DEFAULT_OPSET} or newer (every current ONNX Runtime and TensorRT 10 read it)",
        )


def validate_calibration(request: ExportRequest, calibrated: tuple[str, ...] = ("int8",)) -> None:
    """--calib-data / --calib-size only with a ``calibrated`` precision; the folder is listed (not decoded) first."""
    calib_size = request.options.get("calib_size")
    calib_runtime = request.options.get("calib_runtime") or "auto"
    if request.precision not in calibrated:
        for given, flag in (
            (request.calib_data is not None, "--calib-data"),
            (calib_size is not None, "--calib-size"),
            (calib_runtime != "auto", "--calib-runtime"),
        ):
            if given:
                choices = " or ".join(f"--precision {p}" for p in calibrated)
                raise UserInputError(
                    f"{flag} applies to {choices} only (this export is {request.precision})",
                    fix=f"drop {flag}, or pass {choices}",
                )
        return
    if request.calib_data is None:
        return  # validate_request already refused int8 without calibration data
    from sharp_export.calibration.dataset import select_images

    select_images(request.calib_data, calib_size)


def require_ort_cuda(what: str, fix: str) -> None:
    """UserInputError unless this onnxruntime has the CUDA provider (parity of an ONNX on --device cuda)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return  # the environment check names the missing package
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise UserInputError(f"{what}, and this onnxruntime has no CUDAExecutionProvider", fix=fix)


def validate(request: ExportRequest) -> None:
    validate_opset(request)
    validate_calibration(request)
    if request.device == "cuda":
        require_ort_cuda(
            "--device cuda: parity runs the ONNX in ONNX Runtime", "pip install onnxruntime-gpu, or use --device cpu"
        )
    if request.options.get("external_data") == "never" and request.preset == "sharp":
        raise UserInputError(
            "--external-data never cannot work for the full preset: 2.6 GB of weights exceed protobuf's 2 GB limit",
            fix="use --external-data auto (or always)",
        )


def convert(ctx: ConvertContext) -> ConvertResult:
    from sharp_export.converters.onnx.export import use_external_data
    from sharp_export.converters.onnx.precision import export_at_precision

    external = use_external_data(ctx.request.options.get("external_data", "auto"), ctx.model)
    written = export_at_precision(ctx, ctx.workdir, external_data=external)
    return ConvertResult(main_file=MODEL_FILE, details=written.details())


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> OnnxRuntimeRunner:
    from sharp_export.runtime.onnxruntime_runner import open_onnx_artifact

    return open_onnx_artifact(artifact_dir, manifest, device)


ONNX_TARGET = Target(
    name="onnx",
    suffix=".onnx",
    extra="onnx",
    description="ONNX (dynamo exporter) for ONNX Runtime on CPU or CUDA",
    precisions=("fp32", "fp16", "int8"),
    supports_dynamic_batch=True,
    supports_calibration=True,
    tolerance_profiles={"fp16": "fp16-onnx", "int8": "int8-onnx"},
    devices=("cpu", "cuda"),
    options=(
        OPSET_OPTION,
        TargetOption(
            "external_data",
            str,
            "auto",
            "weights in model.onnx.data: auto = from 1 GB of weights on (always for the full preset)",
            choices=("auto", "always", "never"),
        ),
        CALIB_SIZE_OPTION,
        CALIB_RUNTIME_OPTION,
    ),
    check_environment=check_environment,
    convert=convert,
    open_runner=open_runner,
    validate=validate,
)
