"""NVIDIA ModelOpt's ONNX PTQ (int8, fp8) against the default TensorRT-rule graphs (ORT's quantizer).

Issue #13 asked for ModelOpt ONNX PTQ; this measures it against the tensorrt target's default quantizer. Tiny preset,
golden perturbed weights, calibrated on the bundled sample photos, scored on the golden pattern against torch fp32
(what the export's own parity gates), p99 per metric, in ONNX Runtime CPU (the graph TensorRT would parse). Each
ModelOpt graph also goes through the tensorrt target's static checks (check_tensorrt_ready, TensorRT 11 and 10.3).

Needs the modelopt extra (part of `[all]`; ModelOpt without its `onnx` extra, which pins onnxruntime-gpu and cupy):

    pip install -e '.[modelopt]' && python benchmarks/study_modelopt_int8_tiny.py

The tensorrt target's `--quantizer modelopt` (converters/onnx_modelopt.py) uses the "shipped exclusions" settings
below, with int8 / fp8 weights stored behind a DequantizeLinear (dq_only; same numbers, a quarter of the size).

Writes benchmarks/results/modelopt_int8_study_tiny.json. A few minutes on 2 cores.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WEIGHTS_TINY, save, tiny_pattern  # noqa: E402

from sharp_export.contract import ExportRequest  # noqa: E402
from sharp_export.converters.onnx.fp8 import int8_qdq_to_fp8  # noqa: E402
from sharp_export.converters.onnx.quantize import (  # noqa: E402
    TENSORRT_INT8_EXCLUDED_MODULES,
    TENSORRT_INT8_OPTIONS,
    WHOLE_NETWORK_PLAN,
    excluded_nodes,
    quantize_int8,
)
from sharp_export.converters.tensorrt.ready import check_tensorrt_ready  # noqa: E402
from sharp_export.export import run_export  # noqa: E402


def graph_summary(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    return {
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "QuantizeLinear": ops.get("QuantizeLinear", 0),
        "DequantizeLinear": ops.get("DequantizeLinear", 0),
        "Cast": ops.get("Cast", 0),
    }


def static_checks(path: Path, precision: str) -> dict:
    found = {}
    for compat in ("11", "10.3"):
        try:
            check_tensorrt_ready(path, precision, compat)
            found[compat] = "pass"
        except Exception as error:  # the checker's refusal names what TensorRT would reject
            found[compat] = f"refused: {str(error)[:300]}"
    return found


def main() -> None:
    import modelopt
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    pattern = tiny_pattern()
    calibration = pattern.calibration
    results: dict = {}

    def score(name: str, path: Path, seconds: float, extra: dict, precision: str = "int8") -> None:
        results[name] = {
            **pattern.score_onnx(path),
            "quantize_s": round(seconds, 1),
            "graph": graph_summary(path),
            "tensorrt_static_checks": static_checks(path, precision),
            **extra,
        }
        print(name, results[name]["p99"], results[name]["tensorrt_static_checks"], flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_export(
            ExportRequest(target="onnx", output=tmp / "fp32", preset="tiny", checkpoint=WEIGHTS_TINY, parity=False)
        )
        fp32 = tmp / "fp32" / "model.onnx"

        start = time.perf_counter()
        quantize_int8(fp32, tmp / "shipped.onnx", calibration, **{**TENSORRT_INT8_OPTIONS, **WHOLE_NETWORK_PLAN})
        score("shipped: ORT quantizer, TensorRT rules, Gaussian heads fp32", tmp / "shipped.onnx",
              time.perf_counter() - start, {})  # fmt: skip
        int8_qdq_to_fp8(tmp / "shipped.onnx", fp32, tmp / "shipped_fp8.onnx", external_data=False)
        score("shipped fp8: the int8 graph's Q/DQ retyped, amax / 448", tmp / "shipped_fp8.onnx", 0.0, {}, "fp8")

        import onnx

        heads = excluded_nodes(onnx.load(str(fp32)).graph, TENSORRT_INT8_EXCLUDED_MODULES)
        variants = {
            "modelopt int8 max, defaults": {},
            "modelopt int8 max, Gaussian heads and tail fp32 (the shipped exclusions)": {"nodes_to_exclude": heads},
            "modelopt int8 entropy, shipped exclusions": {"nodes_to_exclude": heads, "calibration_method": "entropy"},
            "modelopt fp8 max, shipped exclusions": {"nodes_to_exclude": heads, "mode": "fp8"},
        }
        for name, options in variants.items():
            out = tmp / f"modelopt_{len(results)}.onnx"
            start = time.perf_counter()
            try:
                modelopt_quantize(
                    str(fp32),
                    quantize_mode=options.get("mode", "int8"),
                    # Stacked feeds; ModelOpt splits them at the model's batch size (1).
                    calibration_data={
                        "image": torch.cat(calibration.images).numpy(),
                        "disparity_factor": torch.cat(calibration.disparity_factors).numpy(),
                    },
                    calibration_method=options.get("calibration_method", "max"),
                    calibration_eps=["cpu"],
                    # fp32 elsewhere: the comparison is about the int8 placement, and ORT CPU has few fp16 kernels.
                    high_precision_dtype="fp32",
                    nodes_to_exclude=options.get("nodes_to_exclude"),
                    output_path=str(out),
                    log_level="WARNING",
                )
            except Exception as error:  # a ModelOpt failure is a result of the study, recorded as such
                results[name] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
                print(name, results[name], flush=True)
                continue
            score(name, out, time.perf_counter() - start, {"options": {k: v for k, v in options.items()
                                                                      if k not in ("nodes_to_exclude", "mode")},
                                                            "excluded_nodes": len(options.get("nodes_to_exclude")
                                                                                  or [])},
                  options.get("mode", "int8"))  # fmt: skip
    save(
        "modelopt_int8_study_tiny",
        {
            "what": "tiny preset, golden perturbed weights, calibration: the 5 sample photos, scored on the golden "
            "pattern vs torch fp32 in ONNX Runtime CPU; ModelOpt with high_precision_dtype=fp32, calibration on CPU",
            "modelopt": modelopt.__version__,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
