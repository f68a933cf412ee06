"""Full-size (sharp preset, seeded weights) Core ML conversion: wall time and peak RSS per precision.

    python benchmarks/bench_coreml_full.py [--precision fp16 fp32] [--split none|components]
    python benchmarks/bench_coreml_full.py --proxy   # fp16 precision-plan measurement (torch proxy)

Each precision converts in its own fresh process, one after the other (each needs ~6 GB), through
``convert_coreml`` (torch.export -> ct.convert with the MIL checks -> save). The package is written to
a temp directory and deleted afterwards.

Bar (docs/architecture.md §9.3, official model on the same 2-core machine): fp16 ct.convert 40 s, whole process
67 s, peak RSS 5.9 GB, package 1.32 GB; fp32 ct.convert 27 s, 5.9 GB, package 2.63 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

CHILD = """
import json, sys, tempfile, time
t0 = time.perf_counter()
from sharp_export.converters.coreml.convert import convert_coreml, package_weight_bytes
from sharp_export.progress import peak_rss_gb
from sharp_export.reference.checkpoint import build_model
import_s = time.perf_counter() - t0
t1 = time.perf_counter()
loaded = build_model("sharp", seed=0)
build_s = time.perf_counter() - t1
rss_after_build = peak_rss_gb()
with tempfile.TemporaryDirectory(prefix="bench_coreml_") as tmp:
    t2 = time.perf_counter()
    result = convert_coreml(loaded, tmp, precision="{precision}", split="{split}")
    convert_total_s = time.perf_counter() - t2
details = result.details
packages = details.get("pieces") or [dict(details, file=result.files[0])]
print(json.dumps(dict(
    import_s=round(import_s, 2), build_s=round(build_s, 2), convert_total_s=round(convert_total_s, 2),
    peak_rss_gb=round(peak_rss_gb(), 2), peak_rss_gb_after_build=round(rss_after_build, 2),
    packages=[dict(file=p["file"], weights_gb=round(p["weights_bytes"] / 1e9, 3), export_s=p["export_seconds"],
                   ct_convert_s=p["mil_checks"]["convert_seconds"], save_s=p["save_seconds"],
                   compute_dtypes=p["mil_checks"]["compute_dtypes"], max_rank=p["mil_checks"]["max_rank"],
                   region_op_counts=p["graph"]["region_op_counts"]) for p in packages],
    coremltools=details["coremltools"])))
"""

PROXY_CHILD = """
import json, time, torch
from sharp_export.converters.coreml.capture import DEFAULT_PINNED, REGION_TAIL
from sharp_export.converters.coreml.fp16_proxy import fp16_proxy_outputs
from sharp_export.samples import example_inputs
from sharp_export.parity.compare import compare_gaussians
from sharp_export.progress import peak_rss_gb
from sharp_export.reference.checkpoint import build_model
loaded = build_model("{preset}", **{weights})
model = loaded.model.eval()
example = example_inputs(model.resolution, 1)
t = time.perf_counter()
with torch.no_grad():
    reference = model(example.image, example.disparity_factor)
reference_s = time.perf_counter() - t
plans = {{"tail + group_norm fp32 (the converter's plan)": sorted(DEFAULT_PINNED), "tail fp32 only": [REGION_TAIL],
          "fp16 everywhere": []}}
rows = []
for label, pinned in plans.items():
    t = time.perf_counter()
    candidate = fp16_proxy_outputs(model, example.image, example.disparity_factor, pinned)
    seconds = time.perf_counter() - t
    results = compare_gaussians(reference, candidate, None)
    metrics = {{r.metric: dict(max=r.max, p99=r.p99, mean=r.mean) for r in results}}
    rows.append(dict(plan=label, pinned=pinned, seconds=round(seconds, 1), metrics=metrics))
    del candidate
print(json.dumps(dict(preset="{preset}", weights=loaded.source_label, reference_s=round(reference_s, 1),
                      peak_rss_gb=round(peak_rss_gb(), 2), plans=rows)))
"""

BAR = {
    "fp16": {"ct_convert_s": 40.0, "process_s": 67.0, "peak_rss_gb": 5.9, "package_gb": 1.32},
    "fp32": {"ct_convert_s": 27.0, "peak_rss_gb": 5.9, "package_gb": 2.63},
}


def _child(code: str) -> tuple[dict, float]:
    """Run ``code`` in a fresh process (its own peak RSS); stderr (stage lines, heartbeat) streams through."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def run_one(precision: str, split: str) -> dict:
    # The machine is shared: the load average says how much CPU the conversion really had.
    load_before = os.getloadavg()[0]
    result, process_s = _child(CHILD.replace("{precision}", precision).replace("{split}", split))
    load = {"before": round(load_before, 2), "after_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    bar = BAR[precision] if split == "none" else None
    return {"precision": precision, "split": split, "process_s": round(process_s, 2), **result,
            "load_average": load, "official_bar": bar}  # fmt: skip


def run_proxy() -> None:
    """The fp16 precision plan measured with the torch proxy: tiny golden (perturbed) and full size (seeded)."""
    golden_dir = os.environ.get("SHARP_GOLDEN_DIR", Path(__file__).resolve().parents[1] / "tests/data/golden_tiny")
    golden = Path(golden_dir) / "weights_perturbed.safetensors"
    runs = []
    for preset, weights in (("tiny", f"dict(checkpoint={str(golden)!r})"), ("sharp", "dict(seed=0)")):
        print(f"fp16 proxy plans on preset {preset} ...", file=sys.stderr, flush=True)
        result, _ = _child(PROXY_CHILD.format(preset=preset, weights=weights))
        runs.append(result)
    save(
        "coreml_fp16_proxy",
        {
            "what": "torch proxy of Core ML fp16 (weights and every op result rounded to fp16 outside the pinned "
            "regions, compute inside each op fp32) vs the fp32 torch reference, golden pattern input, "
            "disparity factor 1; metrics of sharp_export.parity.compare (raw NDC x z space)",
            "caveat": "a proxy, not Core ML; seeded full-size weights are untrained (many zero disparities)",
            "runs": runs,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", nargs="+", default=["fp16", "fp32"], choices=["fp16", "fp32"])
    parser.add_argument("--split", default="none", choices=["none", "components"])
    parser.add_argument("--proxy", action="store_true", help="measure the fp16 precision plan instead")
    args = parser.parse_args()
    if args.proxy:
        run_proxy()
        return
    runs = []
    for precision in args.precision:  # sequential on purpose: two at once would need ~12 GB
        print(f"converting sharp preset to Core ML {precision} (split {args.split}) ...", file=sys.stderr, flush=True)
        runs.append(run_one(precision, args.split))
    save(
        "coreml_full" if args.split == "none" else f"coreml_full_split_{args.split}",
        {
            "what": "sharp preset (702M params, seeded weights), batch 1, 1536x1536, Core ML mlprogram iOS17, "
            "convert_coreml in a fresh process per precision; process_s includes Python start and imports",
            "runs": runs,
            "bar_source": "docs/architecture.md §9.3 (official model, same machine type)",
        },
    )


if __name__ == "__main__":
    main()
