"""Full-size ONNX: export time + peak RSS, ONNX Runtime run vs torch eager forward (time, peak RSS, parity).

    python benchmarks/bench_onnx_full.py [--workdir DIR] [--keep]

Each phase runs in its own fresh process so its peak RSS is its own:

1. export: ``run_export`` of the sharp preset (seed-0 UNTRAINED weights, --no-parity) to ONNX
2. ort:    open the artifact with OnnxRuntimeRunner (CPU, intra-op threads = CPU count), one forward
3. eager:  build the same seeded model, one torch eager forward (torch's default threads = CPU count),
           then compare with the ORT outputs saved by phase 2

With ``--repeats N`` phases 2 and 3 alternate N times (fresh processes each) and the minimum time is compared:
on a shared machine that is the run least disturbed by other work.

Goal (issue): ORT time <= 0.9 x eager time and ORT peak RSS <= eager peak RSS. Needs ~12 GB RAM, ~6 GB disk,
~10 minutes on 2 cores. Input: the golden pattern at 1536x1536 with disparity_factor 1.0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, save  # noqa: E402

EXPORT = """
import json, resource, time
from pathlib import Path
from sharp_export.contract import ExportRequest
from sharp_export.export import run_export
t0 = time.perf_counter()
out = run_export(ExportRequest(target="onnx", output=Path({out!r}), preset="sharp", seed=0, parity=False,
                               options={{"opset": 18, "external_data": "auto"}}))
total = time.perf_counter() - t0
from sharp_export.artifact import read_manifest
m = read_manifest(out)
print(json.dumps(dict(total_s=total, stage_s=m.conversion["stage_seconds"],
    torch_onnx_export_s=m.conversion["export_seconds"], save_s=m.conversion["save_seconds"],
    check_s=m.conversion["check_seconds"], files={{k: v["size"] for k, v in m.files.items()}},
    peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

ORT = """
import json, resource, time
import numpy as np
from sharp_export.samples import example_inputs
from sharp_export.registry import open_runner
ex = example_inputs(1536, 1)
t0 = time.perf_counter()
runner = open_runner({out!r}).open()
open_s = time.perf_counter() - t0
rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
g = runner.infer(ex.image.numpy(), ex.disparity_factor.numpy())
run_s = runner.last_inference_time_s
np.savez({npz!r}, **{{k: v.numpy() for k, v in g._asdict().items()}})
print(json.dumps(dict(open_s=open_s, run_s=run_s, threads=runner.intra_op_threads,
    cpu_memory_arena=runner.cpu_memory_arena, peak_rss_gb_after_open=rss_open,
    peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

EAGER = """
import json, resource, time
import numpy as np, torch
from sharp_export.samples import example_inputs
from sharp_export.reference.checkpoint import build_model
ex = example_inputs(1536, 1)
t0 = time.perf_counter()
loaded = build_model("sharp", seed=0)
build_s = time.perf_counter() - t0
rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
t0 = time.perf_counter()
with torch.no_grad():
    out = loaded.model(ex.image, ex.disparity_factor)
run_s = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
ort = np.load({npz!r})
diff = {{}}
for name, ref in out._asdict().items():
    ref = ref.numpy()
    d = np.abs(ort[name].astype(np.float64) - ref)
    diff[name] = dict(max_abs=float(d.max()), mean_abs=float(d.mean()), max_ref=float(np.abs(ref).max()))
z = out.mean_vectors[..., 2].numpy()
rel_z = np.abs(ort["mean_vectors"][..., 2] - z) / np.abs(z)
diff["z_rel"] = dict(max=float(rel_z.max()), p99=float(np.quantile(rel_z, 0.99)))
print(json.dumps(dict(build_s=build_s, run_s=run_s, threads=torch.get_num_threads(), peak_rss_gb_after_build=rss_build,
    peak_rss_gb=peak, ort_vs_eager=diff)))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None, help="where the 2.6 GB artifact goes (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the artifact afterwards")
    parser.add_argument("--repeats", type=int, default=1, help="alternating ORT / eager runs (min time is used)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-onnx-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out, npz = workdir / "sharp-onnx", workdir / "ort_outputs.npz"
    try:
        print("phase 1/3: export ...", flush=True)
        export = run_child(EXPORT.format(out=str(out)))
        print(f"  {export}", flush=True)
        ort_runs, eager_runs = [], []
        for repeat in range(args.repeats):
            print(f"phase 2/3: ONNX Runtime (run {repeat + 1}/{args.repeats}) ...", flush=True)
            ort_runs.append(run_child(ORT.format(out=str(out), npz=str(npz))))
            print(f"  {ort_runs[-1]}", flush=True)
            print(f"phase 3/3: torch eager (run {repeat + 1}/{args.repeats}) ...", flush=True)
            eager_runs.append(run_child(EAGER.format(npz=str(npz))))
            print(f"  {eager_runs[-1]}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ort = min(ort_runs, key=lambda r: r["run_s"])
    eager = min(eager_runs, key=lambda r: r["run_s"])
    time_ratio = ort["run_s"] / eager["run_s"]
    rss_ratio = max(r["peak_rss_gb"] for r in ort_runs) / max(r["peak_rss_gb"] for r in eager_runs)
    save(
        "onnx_full",
        {
            "what": "sharp preset, seed-0 UNTRAINED weights, batch 1, 1536x1536 golden pattern, CPU",
            "repeats": args.repeats,
            "ort_run_s_all": [round(r["run_s"], 1) for r in ort_runs],
            "eager_run_s_all": [round(r["run_s"], 1) for r in eager_runs],
            "load_average_1_5_15": os.getloadavg(),
            "export": export,
            "onnxruntime": ort,
            "torch_eager": eager,
            "ort_time_over_eager": round(time_ratio, 3),
            "ort_peak_rss_over_eager": round(rss_ratio, 3),
            "goal": {"time_ratio_max": 0.9, "rss_ratio_max": 1.0},
            "goal_met": {"time": time_ratio <= 0.9, "rss": rss_ratio <= 1.0},
        },
    )


if __name__ == "__main__":
    main()
