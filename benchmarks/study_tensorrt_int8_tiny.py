"""Which int8 (and fp8) plan for the TensorRT-ready ONNX: TensorRT's Q/DQ rules (int8 symmetric activations, zero
point 0, fp32 biases) cost accuracy against the onnx target's uint8 asymmetric activations. Tiny preset, golden
perturbed weights, calibrated on the bundled sample photos, scored on the golden pattern against torch fp32 (what the
export's own parity gates), p99 per metric. Run in ONNX Runtime CPU: the same graph TensorRT would parse.

    python benchmarks/study_tensorrt_int8_tiny.py [CONFIG ...]

fp8 rows: the shipped rewrite (converters/onnx_fp8.py: the TensorRT-rule int8 graph's Q/DQ retyped to
float8e4m3fn, scales amax / 448) against ONNX Runtime's own float8 quantizer (std-based scales from its
Distribution calibrator, per-tensor weights), same calibration photos and float modules.

Writes benchmarks/results/tensorrt_int8_study_tiny.json. ~1 min on 2 cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WEIGHTS_TINY, save, tiny_pattern  # noqa: E402

from sharp_export.contract import ExportRequest  # noqa: E402
from sharp_export.converters.onnx.quantize import (  # noqa: E402
    INT8_EXCLUDED_MODULES,
    TENSORRT_INT8_EXCLUDED_MODULES,
    TENSORRT_INT8_OPTIONS,
    WHOLE_NETWORK_PLAN,
    quantize_int8,
)
from sharp_export.export import run_export  # noqa: E402

TRT = {"activations": "int8", "extra_options": {"QuantizeBias": False}}
CONFIGS = {
    "onnxruntime_rules_uint8_asymmetric": {"activations": "uint8", "excluded_modules": INT8_EXCLUDED_MODULES},
    "tensorrt_rules_minmax": {**TRT, "excluded_modules": INT8_EXCLUDED_MODULES},
    "tensorrt_rules_percentile": {**TRT, "excluded_modules": INT8_EXCLUDED_MODULES, "method": "percentile"},
    "tensorrt_rules_minmax_prediction_head_fp32": {
        **TRT,
        "excluded_modules": INT8_EXCLUDED_MODULES + ("prediction_head",),
    },
    "tensorrt_rules_minmax_gaussian_heads_fp32 (shipped)": TENSORRT_INT8_OPTIONS,  # what the tensorrt target uses
}


def fp8_rows(tmp: Path, fp32_onnx: Path, pattern) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from sharp_export.converters.onnx.fp8 import int8_qdq_to_fp8
    from sharp_export.converters.onnx.graph import raise_opset
    from sharp_export.converters.onnx.quantize import calibration_reader, excluded_nodes

    rows = {}

    def score(name: str, path: Path) -> None:
        rows[name] = pattern.score_onnx(path)
        print(name, rows[name]["p99"], flush=True)

    int8 = tmp / "int8_for_fp8.onnx"
    quantize_int8(fp32_onnx, int8, pattern.calibration, **{**TENSORRT_INT8_OPTIONS, **WHOLE_NETWORK_PLAN})
    int8_qdq_to_fp8(int8, fp32_onnx, tmp / "fp8.onnx", external_data=False)
    score("fp8_amax_rewrite_of_tensorrt_int8 (shipped)", tmp / "fp8.onnx")
    model = onnx.load(str(fp32_onnx))
    raise_opset(model, 19, "fp8")
    onnx.save(model, str(tmp / "fp32_opset19.onnx"))
    quantize_static(
        str(tmp / "fp32_opset19.onnx"),
        str(tmp / "fp8_ort.onnx"),
        calibration_reader(pattern.calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "MatMul"],
        per_channel=False,
        activation_type=QuantType.QFLOAT8E4M3FN,
        weight_type=QuantType.QFLOAT8E4M3FN,
        nodes_to_exclude=excluded_nodes(model.graph, TENSORRT_INT8_EXCLUDED_MODULES),
        calibrate_method=CalibrationMethod.Distribution,
        extra_options={"QuantizeBias": False, "scenario": "same"},
    )
    score("fp8_onnxruntime_quantizer_std_scales", tmp / "fp8_ort.onnx")
    return rows


def main() -> None:
    names = sys.argv[1:] or list(CONFIGS)
    pattern = tiny_pattern()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32"
        run_export(ExportRequest(target="onnx", output=fp32, preset="tiny", checkpoint=WEIGHTS_TINY, parity=False))
        for name in names:
            out = Path(tmp) / "int8.onnx"
            plan = {**CONFIGS[name], **WHOLE_NETWORK_PLAN}  # the plan this study measured (before 2026-12-07)
            details = quantize_int8(fp32 / "model.onnx", out, pattern.calibration, **plan)
            results[name] = {
                **pattern.score_onnx(out),
                "quantized_nodes": details["quantized_nodes"],
                "excluded_nodes": len(details["excluded_nodes"]),
            }
            print(name, results[name]["p99"], flush=True)
        results.update(fp8_rows(Path(tmp), fp32 / "model.onnx", pattern))
    save(
        "tensorrt_int8_study_tiny",
        {
            "what": "tiny preset, golden perturbed weights, calibration: the 5 sample photos (MinMax unless named), "
            "scored on the golden pattern vs torch fp32, ONNX Runtime CPU (fp8 Q/DQ as fake quantization)",
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
