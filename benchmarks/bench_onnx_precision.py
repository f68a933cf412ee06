"""ONNX fp32 / fp16 / int8: artifact size, export time, peak RSS, ORT latency vs fp32 and parity on real photos.

    python benchmarks/bench_onnx_precision.py [--preset tiny|sharp] [--seed N | -c CKPT] [--calib-data samples|DIR]
        [--calib-size N] [--precisions fp32,fp16,int8] [--repeats N] [--photos coffee,chelsea|all|none]
        [--poses 4] [--profile] [--workdir DIR] [--keep] [--name RESULTS_NAME]

Per precision, each step in a fresh child process (so its peak RSS is its own):

1. export: ``run_export`` through the real onnx row (``--no-parity``: the parity step is timed separately);
   wall time of the whole export, peak RSS, the files' sizes and the manifest's conversion details.
2. latency: the artifact opened with its own runner (ORT CPU, intra-op threads = CPU count, arena off), one
   warm-up forward (tiny only), then ``--repeats`` timed forwards of the golden pattern; the children take turns
   (fp32, fp16, int8, fp32, ...) so machine noise hits all alike. Ratio = median / median of ORT fp32.
   ``--profile`` adds an ORT per-node profile of one forward, summed per network part.
3. parity on real photos: ``harness.check_artifact`` (what ``sharp-export parity`` runs): the artifact vs the
   torch fp32 reference on the photos, Gaussians per attribute and rendered views (PSNR / SSIM / LPIPS), gated by
   the row's tolerances. Also the golden-pattern outputs vs ORT fp32 from step 2.

Defaults: tiny preset with the golden perturbed weights, calibration on the bundled sample photos, all five
photos for parity. With ``--preset sharp`` the default is ``--seed 0`` (UNTRAINED weights), ``--photos none``
(a torch forward per photo is ~160 s) and one repeat. Writes benchmarks/results/onnx_precision_<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOLDEN_WEIGHTS = REPO / "tests" / "data" / "golden_tiny" / "weights_perturbed.safetensors"

EXPORT = """
import json, resource, time
from pathlib import Path
from sharp_export.contract import ExportRequest
from sharp_export.export import run_export
from sharp_export.artifact import read_manifest
t0 = time.perf_counter()
out = run_export(ExportRequest(target="onnx", output=Path({out!r}), preset={preset!r}, checkpoint={checkpoint!r},
    seed={seed!r}, precision={precision!r}, calib_data={calib!r}, parity=False, force=True,
    options={{"opset": 18, "external_data": "auto", "calib_size": {calib_size!r}}}))
total = time.perf_counter() - t0
m = read_manifest(out)
keep = ("size_vs_fp32", "fp32_file_bytes", "quantize_seconds", "fp16_seconds", "calibration_method",
        "quantized_nodes", "stage_seconds")
details = {{k: m.conversion[k] for k in keep if k in m.conversion}}
if "calibration" in m.conversion:
    c = m.conversion["calibration"]
    details["calibration"] = {{k: c[k] for k in ("source", "size", "sha256")}}
if "precision_plan" in m.conversion:
    p = m.conversion["precision_plan"]
    keys = ("nodes_fp16", "nodes_fp32", "casts_inserted", "kept_fp32_op_types")
    details["precision_plan"] = {{k: p[k] for k in keys}}
if "excluded_nodes" in m.conversion:
    details["excluded_nodes"] = len(m.conversion["excluded_nodes"])
print(json.dumps(dict(export_s=total, files={{k: v["size"] for k, v in m.files.items() if k.startswith("model")}},
    details=details, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

LATENCY = """
import json, resource, time
import numpy as np
from sharp_export.registry import open_runner
from sharp_export.samples import example_inputs
runner = open_runner({artifact!r})
t0 = time.perf_counter()
runner.open()
open_s = time.perf_counter() - t0
ex = example_inputs(runner.io.inputs[0].shape[-1], 1)
for _ in range({warmup}):
    runner.infer(ex.image, ex.disparity_factor)
times = []
for _ in range({repeats}):
    g = runner.infer(ex.image, ex.disparity_factor)
    times.append(runner.last_inference_time_s)
np.savez({npz!r}, **{{k: v.numpy() for k, v in g._asdict().items()}})
profile = None
if {profile!r}:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = runner.intra_op_threads
    options.enable_cpu_mem_arena = False
    options.enable_profiling = True
    options.profile_file_prefix = {prefix!r}
    runner.close()
    session = onnxruntime.InferenceSession(str(runner.model_path), options, providers=["CPUExecutionProvider"])
    session.run(None, {{"image": ex.image.numpy(), "disparity_factor": ex.disparity_factor.numpy()}})
    profile = session.end_profiling()
print(json.dumps(dict(open_s=open_s, times_s=times, profile=profile,
    peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

PARITY = """
import json
from pathlib import Path
from sharp_export.parity import harness
from sharp_export.parity.lpips import load_lpips
from sharp_export.registry import resolve_artifact
from sharp_export.parity.views import DEFAULT_POSES
from sharp_export.samples import sample_image_path
artifact = resolve_artifact(Path({artifact!r}))
report = harness.check_artifact(artifact, tolerances=artifact.tolerances(),
    poses=DEFAULT_POSES[:{poses}], lpips_model=load_lpips(), image_paths=[sample_image_path(n) for n in {photos!r}],
    checkpoint={checkpoint!r}, seed={seed!r})
worst = {{}}
for r in report.attributes:
    if r.tolerance is None:
        continue
    w = worst.setdefault(r.metric, dict(p99=0.0, max=0.0, worst_p99_input=None))
    if float(r.p99) >= w["p99"]:
        w["worst_p99_input"] = r.attribute.split(":")[0]
    w["p99"] = max(w["p99"], float(r.p99)); w["max"] = max(w["max"], float(r.max))
for v in report.views:
    if v.value is None or v.metric not in ("psnr_db", "ssim", "lpips"):
        continue
    w = worst.setdefault(v.metric, dict(value=None, view=None))
    worse = w["value"] is None or (v.value > w["value"] if v.metric == "lpips" else v.value < w["value"])
    if worse:
        w["value"], w["view"] = float(v.value), v.view
print(json.dumps(dict(passed=report.passed, failures=[f.metric for f in report.failures], worst=worst,
    photos={photos!r}, poses=list(DEFAULT_POSES[:{poses}]))))
"""


def run_child(code: str) -> dict:
    """``code`` in a fresh Python process (own peak RSS); stderr passes through, the last stdout line is JSON."""
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child process failed with exit code {out.returncode} (a negative code: killed by signal)")
    return json.loads(out.stdout.strip().splitlines()[-1])


# Parts of the network for the per-node profile, by the module path in each node's namespace (first match wins).
PARTS = (
    ("vit", ("encoder.patch_encoder", "encoder.image_encoder")),
    ("spn_upsampling", ("monodepth_predictor.encoder",)),
    ("monodepth_decoder", ("monodepth_predictor.decoder",)),
    ("disparity_head", ("monodepth_predictor.head",)),
    ("gaussian_decoder", ("feature_model",)),
    ("prediction_head", ("prediction_head",)),
)


def node_parts(model_path: Path) -> dict[str, str]:
    """Node name -> network part (or 'tail'/'other'), and QuantizeLinear tensor names -> the producer's part."""
    import onnx

    from sharp_export.converters.onnx.graph import REGION_TAIL, node_namespace, node_regions

    graph = onnx.load(str(model_path), load_external_data=False).graph
    regions = node_regions(graph)
    parts: dict[str, str] = {}
    for node in graph.node:
        namespace = node_namespace(node) or ""
        part = next((name for name, keys in PARTS if any(k in namespace for k in keys)), None)
        parts[node.name] = part or ("tail" if regions[node.name] == REGION_TAIL else "other")
        for output in node.output:
            parts.setdefault(output, parts[node.name])
    return parts


def profile_by_part(profile_path: str, parts: dict[str, str]) -> dict[str, float]:
    events = json.loads(Path(profile_path).read_text())
    totals: dict[str, float] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        # ORT renames fused nodes: "<node>_token_<n>" (layout), "<output tensor>_nchwc" (NCHWc convs),
        # "<tensor>_QuantizeLinear"; our fp16 casts are "cast_fp16__<tensor>".
        base = name[: -len("_kernel_time")].split("/")[0]
        base = re.sub(r"(_token_\d+|_nchwc)$", "", base)
        for suffix in ("_QuantizeLinear", "_DequantizeLinear", "__fp16", "__fp32"):
            base = base.removesuffix(suffix)
        base = base.removeprefix("cast_fp16__").removeprefix("cast_fp32__")
        part = parts.get(base, "other")
        totals[part] = totals.get(part, 0.0) + event["dur"] / 1e6
    return {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def compare_with_fp32(fp32_npz: Path, npz: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from sharp_export.parity.compare import compare_gaussians
    from sharp_export.parity.tolerances import PROFILES
    from sharp_export.reference.gaussians import GAUSSIAN_FIELDS, Gaussians3D

    def load(path: Path) -> Gaussians3D:
        with np.load(path) as data:
            return Gaussians3D(*(torch.from_numpy(data[f]) for f in GAUSSIAN_FIELDS))

    results = compare_gaussians(load(fp32_npz), load(npz), PROFILES["int8-onnx"], space="raw")
    return {r.metric: {"p99": float(r.p99), "max": float(r.max)} for r in results if r.tolerance is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "sharp"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-c", "--checkpoint", default=None)
    parser.add_argument("--calib-data", default="samples")
    parser.add_argument("--calib-size", type=int, default=None)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--photos", default=None, help="comma-separated sample names, 'all' or 'none'")
    parser.add_argument("--poses", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--name", default=None, help="results file name (default onnx_precision_<preset>)")
    args = parser.parse_args()

    from sharp_export.samples import SAMPLE_NAMES

    full = args.preset == "sharp"
    checkpoint, seed = args.checkpoint, args.seed
    if checkpoint is None and seed is None:
        checkpoint, seed = (None, 0) if full else (str(GOLDEN_WEIGHTS), None)
    repeats = args.repeats or (1 if full else 10)
    photos_arg = args.photos or ("none" if full else "all")
    photos = [] if photos_arg == "none" else list(SAMPLE_NAMES) if photos_arg == "all" else photos_arg.split(",")
    precisions = args.precisions.split(",")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-onnx-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    rows: dict[str, dict[str, Any]] = {}

    for precision in precisions:
        out = work / f"onnx_{precision}"
        print(f"export {precision} ...", flush=True)
        calib = args.calib_data if precision == "int8" else None
        calib_size = args.calib_size if precision == "int8" else None
        rows[precision] = {"export": run_child(EXPORT.format(
            out=str(out), preset=args.preset, checkpoint=checkpoint, seed=seed, precision=precision, calib=calib,
            calib_size=calib_size))}  # fmt: skip
        rows[precision]["artifact_bytes"] = sum(rows[precision]["export"]["files"].values())
        rows[precision]["load_avg_after_export"] = os.getloadavg()
        print(json.dumps({precision: rows[precision]["export"]}), flush=True)

    for precision in precisions:
        rows[precision]["latency"] = {"times_s": [], "peak_rss_gb": 0.0}
    rounds = 2 if not full else 1
    per_round = max(1, repeats // rounds)
    for round_index in range(rounds):
        for precision in precisions:
            print(f"latency {precision} (round {round_index + 1}/{rounds}) ...", flush=True)
            profile = args.profile and round_index == rounds - 1
            result = run_child(LATENCY.format(
                artifact=str(work / f"onnx_{precision}"), warmup=0 if full else 1, repeats=per_round,
                npz=str(work / f"out_{precision}.npz"), profile=profile,
                prefix=str(work / f"profile_{precision}")))  # fmt: skip
            entry = rows[precision]["latency"]
            entry["times_s"] += result["times_s"]
            entry["open_s"] = result["open_s"]
            entry["peak_rss_gb"] = max(entry["peak_rss_gb"], result["peak_rss_gb"])
            entry["load_avg"] = os.getloadavg()
            if result["profile"]:
                parts = node_parts(work / f"onnx_{precision}" / "model.onnx")
                entry["profile_seconds_by_part"] = profile_by_part(result["profile"], parts)
            print(json.dumps({precision: result["times_s"]}), flush=True)
    base = statistics.median(rows["fp32"]["latency"]["times_s"])
    fp32_bytes = rows["fp32"]["artifact_bytes"]
    for precision in precisions:
        latency = rows[precision]["latency"]
        latency["median_s"] = statistics.median(latency["times_s"])
        latency["vs_fp32"] = round(latency["median_s"] / base, 3)
        rows[precision]["size_vs_fp32"] = round(rows[precision]["artifact_bytes"] / fp32_bytes, 4)
        if precision != "fp32":
            rows[precision]["pattern_vs_ort_fp32"] = compare_with_fp32(
                work / "out_fp32.npz", work / f"out_{precision}.npz"
            )

    if photos:
        for precision in precisions:
            print(f"parity {precision} on {', '.join(photos)} ...", flush=True)
            rows[precision]["parity_photos"] = run_child(PARITY.format(
                artifact=str(work / f"onnx_{precision}"), poses=args.poses, photos=photos, checkpoint=checkpoint,
                seed=seed))  # fmt: skip
            rows[precision]["load_avg_after_parity"] = os.getloadavg()

    goals = {}
    if "int8" in rows:
        goals["int8_time_vs_fp32 <= 0.5"] = rows["int8"]["latency"]["vs_fp32"]
    if "fp16" in rows:
        goals["fp16_size_vs_fp32 <= 0.52"] = rows["fp16"]["size_vs_fp32"]
    weights = f"checkpoint {Path(checkpoint).name}" if checkpoint else f"seed {seed} (UNTRAINED)"
    save(
        args.name or f"onnx_precision_{args.preset}",
        {
            "preset": args.preset,
            "weights": weights,
            "calibration": {"data": args.calib_data, "size": args.calib_size or "default"},
            "repeats": repeats,
            "input": "latency: golden pattern, batch 1; parity: sample photos vs torch fp32",
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(),
            "command": " ".join(sys.argv),
            "goals": goals,
            "rows": rows,
        },
    )
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"artifacts kept in {work}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
