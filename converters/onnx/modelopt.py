"""int8 / fp8 Q/DQ placed by NVIDIA ModelOpt's ONNX PTQ: the tensorrt target's ``--quantizer modelopt``.

ModelOpt inserts Q/DQ where TensorRT's fusions expect them (its own placement rules, opset 19), calibrates on
ONNX Runtime (CPU here) with the calibration package's photos and keeps every other tensor fp32
(``high_precision_dtype="fp32"``: an "int8" artifact has no silent fp16 elsewhere). The nodes the default
quantizer keeps float (tail, disparity head, Gaussian heads: ``TENSORRT_INT8_EXCLUDED_MODULES``) are excluded here
too: with ModelOpt's defaults (nothing excluded) the tiny study's z rel err p99 was 4.2e-2 against 4.2e-3.

Measured on the tiny golden pattern against torch fp32 (``benchmarks/study_modelopt_int8_tiny.py`` ->
``benchmarks/results/modelopt_int8_study_tiny.json``, VNNI/AMX Xeon):

* int8: z rel err p99 4.2e-3 (ORT quantizer with TensorRT's rules: 6.1e-3), scales_log 4.7e-2 (4.0e-2),
  colours 1.1e-3 (9.6e-4): better depth, slightly worse appearance.
* fp8: z rel err p99 1.1e-3 (the default fp8 rewrite of the int8 graph: 7.3e-2), scales_log 0.37 (0.37).

Full preset: ModelOpt needs far more memory than the default quantizer (``FULL_SIZE_MEMORY_NOTE``); the export warns.

ModelOpt is optional (``pip install 'sharp-export[modelopt]'``): its ``onnx`` extra would pull onnxruntime-gpu
and cupy, so the extra lists the few packages its ONNX quantizer imports instead. ModelOpt is imported only inside
functions.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.converters.onnx.graph import save_onnx
from sharp_export.converters.onnx.quantize import excluded_nodes
from sharp_export.errors import ConversionError
from sharp_export.progress import echo, rss_gb
from sharp_export.targets import missing_packages, package_version

if TYPE_CHECKING:
    from sharp_export.calibration.dataset import CalibrationSet

QUANTIZERS = ("ort", "modelopt")
LARGE_MODEL_BYTES = 1 << 30
FULL_SIZE_MEMORY_NOTE = (
    "ModelOpt holds several copies of the fp32 graph in memory: on the full preset (2.6 GB of weights) it was "
    "stopped at 19-20 GB of RSS on a 23 GB machine in every try (in its preprocessing, or later in its ONNX Runtime "
    "calibration); give it well over 24 GB of RAM, or use --quantizer ort (the default: 7.8 GB at full size, "
    "parity check included)"
)
MODELOPT_PRECISIONS = ("int8", "fp8")
INSTALL_HINT = "pip install 'sharp-export[modelopt]'"
# Import name -> distribution: what modelopt.onnx.quantization imports beyond the project's onnx extra.
REQUIREMENTS = {
    "modelopt": "nvidia-modelopt",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "onnxslim": "onnxslim",
    "pynvml": "nvidia-ml-py",
    "lief": "lief",
}


def check_modelopt() -> str | None:
    """None when ModelOpt's ONNX quantizer can be imported, else one line with the install command."""
    reason = missing_packages(REQUIREMENTS)
    return None if reason is None else f"--quantizer modelopt: {reason}: {INSTALL_HINT}"


class _DropGpuCountError(logging.Filter):
    """ModelOpt logs an ERROR when it finds no NVIDIA driver, and then calibrates on the CPU as asked."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to get GPU count")


def quantize_with_modelopt(
    precision: str,
    fp32_path: Path,
    out_path: Path,
    calibration: CalibrationSet,
    *,
    external_data: bool,
    excluded_modules: tuple[str, ...],
) -> dict[str, Any]:
    """fp32 ONNX -> ``precision`` (int8 or fp8) Q/DQ ONNX at ``out_path``, saved in the project's file layout."""
    import onnx
    import torch

    if precision not in MODELOPT_PRECISIONS:
        raise ConversionError(f"ModelOpt quantizes {', '.join(MODELOPT_PRECISIONS)} here, not {precision}")
    reason = check_modelopt()
    if reason is not None:
        raise ConversionError(reason)
    from modelopt.onnx.quantization import quantize

    weight_bytes = sum(f.stat().st_size for f in fp32_path.parent.glob(fp32_path.name + "*"))
    if weight_bytes > LARGE_MODEL_BYTES:
        echo(f"    warning: {FULL_SIZE_MEMORY_NOTE}")
    excluded = excluded_nodes(onnx.load(str(fp32_path), load_external_data=False).graph, excluded_modules)
    echo(
        f"    {precision}: ModelOpt {package_version('nvidia-modelopt')} ONNX PTQ, max calibration on "
        f"{len(calibration)} photos (CPU), {len(excluded)} nodes kept fp32: {', '.join(excluded_modules)}"
    )
    scratch = out_path.parent / ".modelopt"
    scratch.mkdir()
    log_filter = _DropGpuCountError()
    loggers = [logging.getLogger(name) for name in ("modelopt.onnx", "modelopt")]
    for logger in loggers:
        logger.addFilter(log_filter)
    try:
        quantize(
            str(fp32_path),
            quantize_mode=precision,
            # Stacked feeds; ModelOpt splits them at the model's batch size.
            calibration_data={
                "image": torch.cat(calibration.images).numpy(),
                "disparity_factor": torch.cat(calibration.disparity_factors).numpy(),
            },
            calibration_method="max",  # entropy gave the same errors on the tiny study, 1.5x slower
            calibration_eps=["cpu"],
            high_precision_dtype="fp32",
            # Weights stored quantized behind a DequantizeLinear (not fp32 behind Q/DQ): a quarter of the size.
            dq_only=True,
            nodes_to_exclude=excluded,
            use_external_data_format=external_data,
            output_path=str(scratch / "model.onnx"),
            log_level="WARNING",
        )
        # Re-saved so the artifact has exactly model.onnx (+ model.onnx.data), whatever ModelOpt named its data.
        save_onnx(onnx.load(str(scratch / "model.onnx")), out_path, external_data)
    except Exception as error:  # ModelOpt's own failures: one line, the cause chained for --verbose
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise ConversionError(f"ModelOpt {precision} quantization failed: {type(error).__name__}: {first}") from error
    finally:
        for logger in loggers:
            logger.removeFilter(log_filter)
        shutil.rmtree(scratch, ignore_errors=True)
    echo(f"    {precision}: quantized by ModelOpt, RSS {rss_gb():.1f} GB")
    return {
        "quantizer": "modelopt",
        "modelopt_version": package_version("nvidia-modelopt"),
        "calibration_method": "max",
        "high_precision_dtype": "fp32",
        "weights": f"{precision} behind DequantizeLinear (dq_only)",
        "excluded_modules": list(excluded_modules),
        "excluded_nodes": len(excluded),
        "biases": "fp32 (ModelOpt leaves biases float; TensorRT fuses them)",
    }
