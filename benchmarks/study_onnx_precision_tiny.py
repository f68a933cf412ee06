"""How the ONNX fp16 plan and int8 recipe were chosen: variants on the tiny preset, measured against torch fp32.

    python benchmarks/study_onnx_precision_tiny.py [--workdir DIR] [--parts fp16,methods,exclusions,sizes]

Weights: the golden perturbed tiny weights (tests/data/golden_tiny). Evaluation inputs: the golden test pattern
and the five bundled sample photos (coffee, chelsea, astronaut, rocket, motorcycle_left), preprocessed as by
predict. Each variant is run in ONNX Runtime CPU and compared with the torch fp32 reference per attribute
(sharp_export.parity.compare, raw space); the table gives the worst p99 and max over the six inputs.

Calibration photos come from a pool that does NOT overlap the evaluation photos: 16 other images shipped in
scikit-image's wheel (microscopy, astronomy, textures, documents, a stereo right view), linked into a temporary
folder and selected with the real calibration code (sharp_export.calibration). Writes
benchmarks/results/onnx_precision_study_tiny.json. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "tests" / "data" / "golden_tiny" / "weights_perturbed.safetensors"
POOL = (
    "motorcycle_right.png", "camera.png", "moon.png", "coins.png", "hubble_deep_field.jpg", "retina.jpg",
    "ihc.png", "page.png", "brick.png", "grass.png", "gravel.png", "clock_motion.png", "cell.png", "text.png",
    "color.png", "chessboard_RGB.png",
)  # fmt: skip
METRICS = ("means_rel_depth", "scales_log", "quat_angle_deg", "colors_abs", "opacities_abs")


def pool_folder(root: Path) -> Path:
    import skimage.data

    data = Path(skimage.data.__file__).resolve().parent
    folder = root / "calibration_pool"
    folder.mkdir(exist_ok=True)
    for name in POOL:
        link = folder / name
        if not link.exists():
            link.symlink_to(data / name)
    return folder


class Evaluator:
    """Torch fp32 reference outputs on the evaluation inputs, and the worst-case comparison of an ONNX file."""

    def __init__(self, model: Any, resolution: int):
        import torch

        from sharp_export.parity.harness import load_inputs
        from sharp_export.reference.gaussians import Gaussians3D
        from sharp_export.samples import SAMPLE_NAMES, example_inputs, sample_image_path

        pattern = example_inputs(resolution)
        photos = load_inputs([sample_image_path(n) for n in SAMPLE_NAMES], resolution)
        self.items = [("pattern", pattern.image, pattern.disparity_factor)] + [
            (p.name, p.image, p.disparity_factor) for p in photos
        ]
        with torch.no_grad():
            self.refs = {n: Gaussians3D(*(t.clone() for t in model(i, f))) for n, i, f in self.items}

    def __call__(self, path: Path) -> dict[str, Any]:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return self.worst(lambda image, factor: session.run(None, {"image": image, "disparity_factor": factor}))

    def worst(self, run: Any) -> dict[str, Any]:
        """Worst p99 / max per metric over the inputs; ``run(image, factor)`` returns the 5 raw outputs in order."""
        import torch

        from sharp_export.parity.compare import compare_gaussians
        from sharp_export.parity.tolerances import PROFILES
        from sharp_export.reference.gaussians import Gaussians3D

        worst: dict[str, dict[str, float]] = {}
        for name, image, factor in self.items:
            values = run(image.numpy(), factor.numpy())
            candidate = Gaussians3D(*(torch.from_numpy(v) for v in values))
            for r in compare_gaussians(self.refs[name], candidate, PROFILES["int8-onnx"], space="raw"):
                if r.metric in METRICS:
                    entry = worst.setdefault(r.metric, {"p99": 0.0, "max": 0.0, "worst_input": ""})
                    if float(r.p99) > entry["p99"]:
                        entry["worst_input"] = name
                    entry["p99"] = max(entry["p99"], float(r.p99))
                    entry["max"] = max(entry["max"], float(r.max))
        return worst


def line(label: str, worst: dict[str, Any], extra: str = "") -> None:
    cells = "  ".join(f"{m} p99 {worst[m]['p99']:.3g} (max {worst[m]['max']:.3g})" for m in METRICS)
    print(f"{label:<28} {cells} {extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--parts", default="fp16,methods,exclusions,sizes")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    import onnx

    from sharp_export.calibration.dataset import load_calibration_set
    from sharp_export.converters.onnx import quantize as oq
    from sharp_export.converters.onnx.export import export_onnx
    from sharp_export.converters.onnx.graph import REGION_GROUP_NORM, REGION_TAIL
    from sharp_export.converters.onnx.half import convert_fp16
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.samples import example_inputs

    load_start = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="onnx-precision-study-"))
    work.mkdir(parents=True, exist_ok=True)
    loaded = build_model("tiny", WEIGHTS)
    model = loaded.model.eval()
    resolution = int(model.resolution)
    from sharp_export.artifact import raw_io_spec

    fp32_dir = work / "fp32"
    fp32_dir.mkdir(exist_ok=True)
    if not (fp32_dir / "model.onnx").exists():
        export_onnx(model, example_inputs(resolution), raw_io_spec(resolution, 1), fp32_dir, external_data=False)
    fp32_path = fp32_dir / "model.onnx"
    evaluate = Evaluator(model, resolution)
    results: dict[str, Any] = {"fp32": evaluate(fp32_path)}
    line("fp32", results["fp32"])
    pool = pool_folder(work)

    if "fp16" in parts:
        results["fp16_plans"] = {}
        base = onnx.load(str(fp32_path))
        for label, keep in (
            ("tail+group_norm (chosen)", (REGION_TAIL, REGION_GROUP_NORM)),
            ("tail", (REGION_TAIL,)),
            ("group_norm", (REGION_GROUP_NORM,)),
            ("nothing kept (all fp16)", ()),
        ):
            model16 = copy.deepcopy(base)
            report = convert_fp16(model16, keep)
            path = work / f"fp16_{len(keep)}_{'_'.join(keep) or 'none'}.onnx"
            onnx.save(model16, str(path))
            worst = evaluate(path)
            results["fp16_plans"][label] = {
                "kept_regions": list(keep),
                "casts": report.casts_inserted,
                "nodes_fp32": report.nodes_fp32,
                "worst": worst,
            }
            line(f"fp16 keep {label}", worst, f"casts {report.casts_inserted}")

    def int8(label: str, size: int, **kwargs: Any) -> dict[str, Any]:
        calibration = load_calibration_set(pool, resolution, size)
        path = work / f"int8_{abs(hash(label))}.onnx"
        start = time.perf_counter()
        details = oq.quantize_int8(fp32_path, path, calibration, **oq.WHOLE_NETWORK_PLAN, **kwargs)
        seconds = time.perf_counter() - start
        worst = evaluate(path)
        line(label, worst, f"{seconds:.1f} s")
        return {
            "calibration_size": size,
            "calibration_sha256": calibration.sha256,
            "quantized_nodes": details["quantized_nodes"],
            "excluded": len(details["excluded_nodes"]),
            "seconds": round(seconds, 1),
            "worst": worst,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
        }

    if "methods" in parts:
        results["int8_methods"] = {m: int8(f"int8 {m} (8 images)", 8, method=m) for m in oq.CALIBRATION_METHODS}
    if "exclusions" in parts:
        none: tuple[str, ...] = ()
        results["int8_exclusions"] = {
            "tail only": int8("int8 excl. tail only", 8, excluded_modules=none),
            "tail + disparity head (chosen)": int8("int8 excl. tail+disp head", 8),
            "tail + disparity head + Gaussian decoder + prediction head": int8(
                "int8 excl. +gauss decoder", 8,
                excluded_modules=(*oq.INT8_EXCLUDED_MODULES, "feature_model", "prediction_head"),
            ),
            "all ORT op types, tail excluded": int8(
                "int8 all op types, tail excl", 8, op_types=(), excluded_modules=oq.INT8_EXCLUDED_MODULES
            ),
        }  # fmt: skip
        # The tail itself quantized: possible only with op types beyond Conv/MatMul (the tail has none).
        from unittest import mock

        with mock.patch.object(oq, "excluded_nodes", lambda graph, modules=(): []):
            results["int8_exclusions"]["all ORT op types, nothing excluded"] = int8(
                "int8 all op types, no excl", 8, op_types=()
            )
    if "sizes" in parts:
        results["int8_calibration_sizes"] = {str(n): int8(f"int8 minmax {n} images", n) for n in (1, 2, 4, 8, 16)}

    save(
        "onnx_precision_study_tiny",
        {
            "weights": "golden perturbed tiny (tests/data/golden_tiny/weights_perturbed.safetensors)",
            "evaluation": "worst p99 / max over the golden pattern + 5 sample photos, ORT CPU vs torch fp32, raw",
            "calibration_pool": list(POOL),
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
