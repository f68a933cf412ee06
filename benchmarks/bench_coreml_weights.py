"""Core ML weight compression (--weights): full-size package sizes, time and peak RSS; accuracy by torch proxy.

    python benchmarks/bench_coreml_weights.py [--runs palettize4:fp16:none int8:fp16:none ...]
    python benchmarks/bench_coreml_weights.py --proxy   # accuracy of every mode, tiny golden (perturbed)

Conversions: sharp preset, seeded weights (``--seed 0``), iOS17, one fresh process per run, one after the other
(each needs ~6 GB), through ``convert_coreml`` (torch.export -> ct.convert -> MIL checks -> compression -> MIL
checks -> save). Packages are written to a temp directory and deleted afterwards. Results:
benchmarks/results/coreml_weights_full.json. Uncompressed reference: benchmarks/results/coreml_full.json
(fp16 1.306 GB) and coreml_full_split_components.json.

Proxy: the torch forward with the package's expanded weights (converters/coreml/weights.py) against the fp32
reference, golden pattern input, for fp32 and fp16, each mode, plus the per-grouped-channel LUT variant
(iOS18 only, not offered) for the comparison behind the per-tensor choice. Results:
benchmarks/results/coreml_weights_proxy.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_coreml_full import _child  # noqa: E402
from common import save  # noqa: E402

DEFAULT_RUNS = ("palettize4:fp16:none", "int8:fp16:none", "palettize4:fp16:components", "int8:fp16:components")

CHILD = """
import json, tempfile, time
t0 = time.perf_counter()
from sharp_export.converters.coreml.convert import convert_coreml
from sharp_export.progress import peak_rss_gb
from sharp_export.reference.checkpoint import build_model
import_s = time.perf_counter() - t0
t1 = time.perf_counter()
loaded = build_model("sharp", seed=0)
build_s = time.perf_counter() - t1
with tempfile.TemporaryDirectory(prefix="bench_coreml_weights_") as tmp:
    t2 = time.perf_counter()
    result = convert_coreml(loaded, tmp, precision="{precision}", split="{split}", weights="{weights}")
    convert_total_s = time.perf_counter() - t2
details = result.details
packages = details.get("pieces") or [dict(details, file=result.files[0])]
summary = details["weights"]
print(json.dumps(dict(
    import_s=round(import_s, 2), build_s=round(build_s, 2), convert_total_s=round(convert_total_s, 2),
    peak_rss_gb=round(peak_rss_gb(), 2),
    total_weights_gb=round(sum(p["weights_bytes"] for p in packages) / 1e9, 3),
    compressed_tensors=summary["compressed_tensors"], compressed_elements=summary["compressed_elements"],
    compressed_op_types=summary["compressed_op_types"], config=summary["config"],
    packages=[dict(file=p["file"], weights_gb=round(p["weights_bytes"] / 1e9, 3), export_s=p["export_seconds"],
                   ct_convert_s=p["mil_checks"]["convert_seconds"], save_s=p["save_seconds"],
                   compress_s=p["weight_compression"]["compress_seconds"],
                   compressed_tensors=p["weight_compression"]["compressed_tensors"],
                   compute_dtypes=p["weight_compression"]["mil_checks"]["compute_dtypes"],
                   max_rank=p["weight_compression"]["mil_checks"]["max_rank"]) for p in packages],
    ios_weight_limit_exceeded=details["ios_weight_limit_exceeded"], coremltools=details["coremltools"])))
"""

PROXY_CHILD = """
import json, time, torch
from sharp_export.converters.coreml.fp16_proxy import fp16_proxy_outputs
from sharp_export.converters.coreml.weights import WeightPlan, weight_plan, weights_proxy_outputs
from sharp_export.parity.compare import compare_gaussians
from sharp_export.reference.checkpoint import build_model
from sharp_export.samples import example_inputs
loaded = build_model("tiny", checkpoint={checkpoint!r})
model = loaded.model.eval()
example = example_inputs(model.resolution, 1)
with torch.no_grad():
    reference = model(example.image, example.disparity_factor)
def metrics(candidate):
    return {{r.metric: dict(max=r.max, p99=r.p99) for r in compare_gaussians(reference, candidate, None)}}
rows = [dict(weights="none", precision="fp16", granularity=None,
             metrics=metrics(fp16_proxy_outputs(model, example.image, example.disparity_factor)))]
plans = [weight_plan(m) for m in ("int8", "palettize6", "palettize4")]
plans += [WeightPlan(m, "palettize", int(m[-1]), "per_grouped_channel") for m in ("palettize6", "palettize4")]
for precision in ("fp32", "fp16"):
    for plan in plans:
        t = time.perf_counter()
        candidate, report = weights_proxy_outputs(model, example.image, example.disparity_factor, plan, precision)
        rows.append(dict(weights=plan.mode, precision=precision, granularity=plan.granularity,
                         seconds=round(time.perf_counter() - t, 2), compressed_tensors=report["compressed_tensors"],
                         compressed_elements=report["compressed_elements"], metrics=metrics(candidate)))
print(json.dumps(dict(weights=loaded.source_label, rows=rows)))
"""


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_full(specs: list[str]) -> None:
    runs = []
    for spec in specs:  # sequential on purpose: two at once would need ~12 GB
        weights, precision, split = spec.split(":")
        print(f"converting sharp preset: --weights {weights} --precision {precision} --split {split} ...",
              file=sys.stderr, flush=True)  # fmt: skip
        before = _load()
        code = CHILD.replace("{precision}", precision).replace("{split}", split).replace("{weights}", weights)
        result, process_s = _child(code)
        load = {"before": before, "after_1min": _load(), "cpus": os.cpu_count()}
        runs.append({"weights": weights, "precision": precision, "split": split, "process_s": round(process_s, 2),
                     **result, "load_average": load})  # fmt: skip
    save(
        "coreml_weights_full",
        {
            "what": "sharp preset (702M params, seeded weights --seed 0), batch 1, 1536x1536, Core ML mlprogram "
            "iOS17, convert_coreml(weights=...) in a fresh process per run; process_s includes Python start and "
            "imports; weights_gb = bytes under the package's Data folder / 1e9",
            "uncompressed_reference_gb": {"fp16": 1.306, "fp32": 2.611, "fp16 split components": [0.607, 0.685, 0.015]},
            "goal": "palettize4 <= 0.4 GB",
            "runs": runs,
        },
    )


def run_proxy() -> None:
    golden_dir = os.environ.get("SHARP_GOLDEN_DIR", Path(__file__).resolve().parents[1] / "tests/data/golden_tiny")
    checkpoint = str(Path(golden_dir) / "weights_perturbed.safetensors")
    result, _ = _child(PROXY_CHILD.format(checkpoint=checkpoint))
    save(
        "coreml_weights_proxy",
        {
            "what": "torch proxy of Core ML --weights (the package's expanded weights, fp16 plan for fp16) vs the "
            "fp32 torch reference, tiny preset, golden pattern input, disparity factor 1; metrics of "
            "sharp_export.parity.compare (raw NDC x z space). per_grouped_channel (one LUT per 32 output "
            "channels, iOS18+) skips tensors whose output channels are not a multiple of 32: measured only.",
            "caveat": "a proxy, not Core ML; perturbed random weights, not the trained checkpoint",
            **result,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="WEIGHTS:PRECISION:SPLIT ...")
    parser.add_argument("--proxy", action="store_true", help="measure the accuracy proxy on the tiny preset")
    args = parser.parse_args()
    if args.proxy:
        run_proxy()
    else:
        run_full(args.runs)


if __name__ == "__main__":
    main()
