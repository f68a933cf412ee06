"""The one reduced-precision step every ONNX-based target runs (onnx, openvino, tensorrt).

:func:`export_at_precision` is the whole step: decode the calibration photos (int8 / fp8; a bad photo fails in
seconds, not after the export) -> export fp32 ONNX (``export.py``) into a scratch folder -> rewrite it at the
asked precision (:func:`reduce_precision`) -> check the written files -> remove the scratch folder. A target row
calls it with its rules (``int8_rules``, ``quantizer``) and the folder the ONNX belongs in.

:func:`reduce_precision` picks the rewrite: fp16 / bf16 (``half.py``), int8 (``quantize.py``), fp8 (``fp8.py``:
the TensorRT-rule int8 graph retyped), or ModelOpt's int8 / fp8 (``modelopt.py``), then the same checks of the
written files, the graph I/O and onnx's checker for every precision.

torch and the toolchains are imported inside the functions: target rows import this module lazily too.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.calibration.dataset import load_calibration_set
from sharp_export.converters.onnx.export import export_onnx
from sharp_export.converters.onnx.fp8 import int8_qdq_to_fp8
from sharp_export.converters.onnx.graph import DEFAULT_OPSET, MODEL_FILE, check_graph_io, file_bytes
from sharp_export.converters.onnx.half import HALF_TYPES, write_half
from sharp_export.converters.onnx.modelopt import MODELOPT_PRECISIONS, QUANTIZERS, quantize_with_modelopt
from sharp_export.converters.onnx.quantize import (
    INT8_RULES,
    INT8_WEIGHT_BITS_NOTE,
    ONNXRUNTIME_INT8_OPTIONS,
    TENSORRT_INT8_EXCLUDED_MODULES,
    TENSORRT_INT8_OPTIONS,
    quantize_int8,
)
from sharp_export.errors import ConversionError
from sharp_export.progress import echo, give_freed_memory_back
from sharp_export.targets import CALIBRATED_PRECISIONS

if TYPE_CHECKING:
    from sharp_export.artifact import IOSpec
    from sharp_export.calibration.dataset import CalibrationSet
    from sharp_export.contract import ConvertContext

FP32_SCRATCH = ".fp32"  # the fp32 export a reduced-precision ONNX starts from, inside its folder; removed after


@dataclass
class OnnxAtPrecision:
    """What :func:`export_at_precision` records, for the manifest's ``conversion`` section."""

    export: dict[str, Any]  # export_onnx's details: exporter, opset, files, seconds
    reduced: dict[str, Any] | None  # reduce_precision's details (casts, quantization, calibration); None at fp32

    def details(self) -> dict[str, Any]:
        """Both in one dict (the onnx and tensorrt targets' manifest layout)."""
        return {**self.export, **(self.reduced or {})}


def export_at_precision(
    ctx: ConvertContext,
    out_dir: Path,
    *,
    external_data: bool,
    precision: str | None = None,
    int8_rules: str = "onnxruntime",
    quantizer: str = "ort",
    keep_fp32_ops: Mapping[str, str] | None = None,
) -> OnnxAtPrecision:
    """``out_dir/model.onnx`` (+ ``.data``) at ``precision``, I/O fp32; returns what the manifest records.

    ``precision``: the ONNX's own precision, by default the request's (openvino's bf16 is a compile hint on an fp32
    ONNX, so it asks for fp32). ``int8_rules`` / ``quantizer`` / ``keep_fp32_ops``: see :func:`reduce_precision`.
    ``out_dir`` is created; the fp32 scratch export inside it is removed once the reduced-precision file is written
    and checked.
    """

    request = ctx.request
    precision = precision or request.precision
    calibration = None
    if precision in CALIBRATED_PRECISIONS:
        if request.calib_data is None:  # validate_request refuses this first; a direct API call gets the line
            raise ConversionError(f"{precision} needs calibration photos (--calib-data)")
        resolution = int(ctx.example.image.shape[-1])
        calibration = load_calibration_set(request.calib_data, resolution, request.options.get("calib_size"))
    fp32_dir = out_dir if precision == "fp32" else out_dir / FP32_SCRATCH
    fp32_dir.mkdir(parents=True, exist_ok=True)
    exported = export_onnx(
        ctx.model,
        ctx.example,
        ctx.io,
        fp32_dir,
        opset=int(request.options.get("opset", DEFAULT_OPSET)),
        dynamic_batch=request.dynamic_batch,
        external_data=external_data,
        metadata=ctx.metadata,
    )
    # Everything after this reads the ONNX file: free the torch weights before calibration, quantization and the
    # target's own conversion (full preset, OpenVINO int8 export: benchmarks/results/export_memory_full.json).
    ctx.release_model()
    give_freed_memory_back()  # (the 3.6 GB drop measured at full size came with converters/onnx/export.py's fix)
    if precision == "fp32":
        return OnnxAtPrecision(exported, None)
    reduced = reduce_precision(
        precision,
        fp32_dir,
        out_dir,
        ctx.io,
        external_data=external_data,
        calibration=calibration,
        int8_rules=int8_rules,
        quantizer=quantizer,
        keep_fp32_ops=keep_fp32_ops,
        calibration_runtime=str(request.options.get("calib_runtime") or "auto"),
    )
    shutil.rmtree(fp32_dir)
    return OnnxAtPrecision(exported, reduced)


def reduce_precision(
    precision: str,
    fp32_dir: Path,
    workdir: Path,
    io: IOSpec,  # the artifact's I/O (unchanged: fp32 in and out)
    *,
    external_data: bool,
    calibration: CalibrationSet | None = None,
    int8_rules: str = "onnxruntime",
    quantizer: str = "ort",
    keep_fp32_ops: Mapping[str, str] | None = None,
    calibration_runtime: str = "auto",
) -> dict[str, Any]:
    """fp32 ONNX in ``fp32_dir`` -> the ``precision`` ONNX in ``workdir``, checked; returns manifest details.

    ``precision``: fp16, bf16 (the tensorrt target; ONNX Runtime's CPU kernels cannot run it), int8, or fp8 (the
    tensorrt target: float8e4m3fn Q/DQ, which ONNX Runtime's CPU kernels run as fake quantization).
    ``int8_rules``: "onnxruntime" (uint8 asymmetric activations, int32 biases: ONNX Runtime's fastest CPU kernels,
    and OpenVINO's) or "tensorrt" (int8 symmetric activations and fp32 biases: TensorRT's DequantizeLinear reads
    int8 / fp8 / int4 with zero point 0 only).
    ``quantizer``: who places int8 / fp8 Q/DQ for the tensorrt rules: "ort" (ONNX Runtime's quantizer) or
    "modelopt" (NVIDIA ModelOpt's ONNX PTQ, ``modelopt.py``).
    ``keep_fp32_ops``: fp16 / bf16 only: op types the cast plan keeps fp32 everywhere (op type -> why; tensorrt-rtx
    keeps ConvTranspose under bf16).
    ``calibration_runtime``: who runs the int8 / fp8 MinMax pass (``quantize.CALIBRATION_RUNTIMES``).
    """
    import onnx

    fp32_path = fp32_dir / MODEL_FILE
    out_path = workdir / MODEL_FILE
    fp32_bytes = file_bytes(fp32_dir)
    if quantizer not in QUANTIZERS:
        raise ConversionError(f"quantizer must be one of {', '.join(QUANTIZERS)}, not {quantizer!r}")
    if quantizer == "modelopt" and (precision not in MODELOPT_PRECISIONS or int8_rules != "tensorrt"):
        raise ConversionError("the ModelOpt quantizer serves the tensorrt target's int8 and fp8 only")
    if int8_rules not in INT8_RULES:
        raise ConversionError(f"int8 rules must be one of {', '.join(INT8_RULES)}, not {int8_rules!r}")
    calibrated = precision in CALIBRATED_PRECISIONS
    if calibrated and calibration is None:
        raise ConversionError(f"{precision} needs a calibration set")
    if precision == "fp8" and int8_rules != "tensorrt":
        raise ConversionError("fp8 Q/DQ is built for TensorRT only (int8_rules='tensorrt')")
    tensorrt = int8_rules == "tensorrt"
    if keep_fp32_ops and precision not in HALF_TYPES:
        raise ConversionError(f"keep_fp32_ops applies to the fp16 / bf16 cast plan, not to {precision}")
    if precision in HALF_TYPES:
        details = write_half(fp32_path, out_path, external_data, precision, keep_fp32_ops)
    elif quantizer == "modelopt":
        details = quantize_with_modelopt(
            precision,
            fp32_path,
            out_path,
            calibration,
            external_data=external_data,
            excluded_modules=TENSORRT_INT8_EXCLUDED_MODULES,
        )
    elif precision == "int8":
        rules = TENSORRT_INT8_OPTIONS if tensorrt else ONNXRUNTIME_INT8_OPTIONS
        details = quantize_int8(
            fp32_path,
            out_path,
            calibration,
            external_data=external_data,
            calibration_runtime=calibration_runtime,
            **rules,
        )
        details["weight_bits_why"] = INT8_WEIGHT_BITS_NOTE
        if tensorrt:
            details["biases"] = "fp32 (TensorRT fuses them; its DequantizeLinear takes no int32)"
    elif precision == "fp8":
        # fp8 = the TensorRT-rule int8 graph with every Q/DQ retyped to float8e4m3fn (fp8.py).

        scratch = workdir / ".int8_for_fp8"
        scratch.mkdir()
        details = quantize_int8(
            fp32_path,
            scratch / MODEL_FILE,
            calibration,
            external_data=external_data,
            calibration_runtime=calibration_runtime,
            **TENSORRT_INT8_OPTIONS,
        )
        details.update(int8_qdq_to_fp8(scratch / MODEL_FILE, fp32_path, out_path, external_data=external_data))
        shutil.rmtree(scratch)
        details["biases"] = "fp32 (TensorRT fuses them)"
    else:
        raise ConversionError(f"no reduced-precision step for {precision!r}")
    if calibrated:
        assert calibration is not None  # checked above
        details.setdefault("quantizer", "ort")
        details["int8_rules"] = int8_rules
        details["calibration"] = calibration.describe()
    written = sorted(file_bytes(workdir))
    expected = sorted([MODEL_FILE] + ([MODEL_FILE + ".data"] if external_data else []))
    if written != expected:
        raise ConversionError(f"the {precision} step wrote {written}, expected exactly {expected}", path=workdir)
    check_graph_io(out_path, io)
    graph = onnx.load(str(out_path), load_external_data=False).graph
    not_fp32 = [v.name for v in (*graph.input, *graph.output) if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT]
    if not_fp32:
        raise ConversionError(f"the {precision} graph's I/O {not_fp32} is not float32", path=out_path)
    del graph
    try:
        onnx.checker.check_model(str(out_path))
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0][:300]
        raise ConversionError(f"the {precision} model is not valid ONNX: {first}", path=out_path) from error
    sizes = file_bytes(workdir)
    details["file_bytes"] = sizes
    details["fp32_file_bytes"] = fp32_bytes
    details["size_vs_fp32"] = round(sum(sizes.values()) / sum(fp32_bytes.values()), 4)
    echo(
        f"    {precision}: {sum(sizes.values()) / 1e6:.1f} MB ({details['size_vs_fp32']:.3f} x the fp32 "
        f"{sum(fp32_bytes.values()) / 1e6:.1f} MB)"
    )
    return details
