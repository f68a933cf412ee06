"""OpenVINO int8 on the tiny preset: NNCF variants (tried, not shipped) against the shipped route, vs torch fp32.

The shipped route (converters/openvino.py) converts the onnx target's int8 QDQ graph. NNCF's own quantizer was
more accurate here, but its statistics pass did not fit in 24 GB at full size, so it is not a target option.

    python benchmarks/study_openvino_int8_tiny.py [--workdir DIR] [VARIANT ...]

Same protocol as study_onnx_precision_tiny.py: golden perturbed tiny weights; calibration on 8 photos of a pool
disjoint from the evaluation inputs; evaluation on the golden test pattern and the five sample photos, worst
p99 / max per metric against torch fp32 (raw space). Each NNCF variant is the onnx target's fp32 ONNX converted by
OpenVINO and quantized by ``nncf.quantize`` with the named preset, model type and float modules; the shipped row
is the onnx target's int8 ONNX read by OpenVINO. Each runs in OpenVINO CPU with the f32 hint (and, for reference,
with the bf16 hint for the ops left float).
Needs `pip install nncf` (not a project dependency). Writes benchmarks/results/openvino_int8_study_tiny.json.
About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402
from study_onnx_precision_tiny import METRICS, WEIGHTS, Evaluator, line, pool_folder  # noqa: E402

DISPARITY_HEAD = ("monodepth_model.monodepth_predictor.head",)
GAUSSIAN_HEADS = ("feature_model.geometry_head", "feature_model.texture_head", "prediction_head")
# name -> (NNCF preset, NNCF model type or None, modules left float besides the tail)
VARIANTS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "mixed_tail_only": ("MIXED", None, ()),
    "mixed_disparity_head_float": ("MIXED", None, DISPARITY_HEAD),
    "performance_disparity_head_float": ("PERFORMANCE", None, DISPARITY_HEAD),
    "mixed_transformer_disparity_head_float": ("MIXED", "TRANSFORMER", DISPARITY_HEAD),
    "mixed_heads_float": ("MIXED", None, DISPARITY_HEAD + GAUSSIAN_HEADS),
    "mixed_transformer_heads_float": ("MIXED", "TRANSFORMER", DISPARITY_HEAD + GAUSSIAN_HEADS),
}


def float_op_names(model: Any, onnx_path: Path, modules: tuple[str, ...]) -> list[str]:
    """OpenVINO op names converted from the ONNX nodes of the tail and ``modules`` (the ones NNCF must skip).

    OpenVINO's ONNX frontend names each op after its ONNX node ("node_conv2d_69/WithoutBiases" from
    "node_conv2d_69"), so the ONNX graph's module metadata maps onto the IR by that prefix.
    """
    import onnx

    from sharp_export.converters.onnx.quantize import excluded_nodes

    onnx_names = set(excluded_nodes(onnx.load(str(onnx_path), load_external_data=False).graph, modules))
    return [
        op.get_friendly_name() for op in model.get_ordered_ops() if op.get_friendly_name().split("/")[0] in onnx_names
    ]


def main() -> None:
    import nncf
    import openvino as ov

    from sharp_export.calibration.dataset import load_calibration_set
    from sharp_export.contract import ExportRequest
    from sharp_export.converters.onnx.quantize import INT8_EXCLUDED_MODULES, WHOLE_NETWORK_PLAN, quantize_int8
    from sharp_export.export import run_export
    from sharp_export.reference.checkpoint import build_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ov_int8_study_"))
    fp32 = work / "onnx_fp32"
    if not fp32.exists():
        run_export(ExportRequest(target="onnx", output=fp32, preset="tiny", checkpoint=WEIGHTS, parity=False))
    onnx_path = fp32 / "model.onnx"
    evaluator = Evaluator(build_model("tiny", WEIGHTS).model.eval(), 384)
    calibration = load_calibration_set(pool_folder(work), 384, 8)
    items = list(zip(calibration.images, calibration.disparity_factors, strict=True))
    dataset = nncf.Dataset(items, lambda item: {"image": item[0].numpy(), "disparity_factor": item[1].numpy()})
    core = ov.Core()

    def score(model: Any, hint: str) -> dict[str, Any]:
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": "1"})
        request = compiled.create_infer_request()
        order = [output.get_any_name() for output in compiled.outputs]
        assert order == ["mean_vectors", "singular_values", "quaternions", "colors", "opacities"], order

        def run(image: Any, factor: Any) -> list[Any]:
            request.infer({"image": image, "disparity_factor": factor})
            return [request.get_tensor(name).data.copy() for name in order]

        return evaluator.worst(run)

    results: dict[str, Any] = {"openvino_bf16_unquantized": score(core.read_model(str(onnx_path)), "bf16")}
    line("openvino_bf16_unquantized", results["openvino_bf16_unquantized"])
    # The shipped route: the onnx target's int8 step (same calibration photos), read by OpenVINO.
    qdq = work / "int8_qdq.onnx"
    quantize_int8(
        onnx_path, qdq, calibration, excluded_modules=INT8_EXCLUDED_MODULES, reduce_range=True, **WHOLE_NETWORK_PLAN
    )
    shipped = core.read_model(str(qdq))
    results["onnx_int8_qdq_in_openvino (shipped)"] = {
        "fake_quantize_ops": sum(1 for op in shipped.get_ordered_ops() if op.get_type_name() == "FakeQuantize"),
        "f32_rest": score(shipped, "f32"),
        "bf16_rest": score(shipped, "bf16"),
    }
    line("onnx_int8_qdq_in_openvino (shipped)", results["onnx_int8_qdq_in_openvino (shipped)"]["f32_rest"])
    for name in args.variants:
        preset, model_type, modules = VARIANTS[name]
        model = core.read_model(str(onnx_path))
        ignored = float_op_names(model, onnx_path, modules)
        options: dict[str, Any] = {"preset": getattr(nncf.QuantizationPreset, preset)}
        if model_type is not None:
            options["model_type"] = getattr(nncf.ModelType, model_type)
        quantized = nncf.quantize(
            model,
            dataset,
            subset_size=len(items),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            **options,
        )
        fake_quantize = sum(1 for op in quantized.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
        results[name] = {
            "preset": preset,
            "model_type": model_type,
            "float_modules": list(modules) + ["tail"],
            "float_ops": len(ignored),
            "fake_quantize_ops": fake_quantize,
            "f32_rest": score(quantized, "f32"),
            "bf16_rest": score(quantized, "bf16"),
        }
        line(f"{name} (f32 rest)", results[name]["f32_rest"], f"{fake_quantize} FQ")
        line(f"{name} (bf16 rest)", results[name]["bf16_rest"])
    save(
        "openvino_int8_study_tiny",
        {
            "what": "tiny preset, golden perturbed weights, NNCF int8 variants calibrated on 8 pool photos, worst "
            f"p99/max of {', '.join(METRICS)} over the golden pattern + 5 sample photos vs torch fp32",
            "nncf": nncf.__version__,
            "openvino": ov.__version__,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
