"""CPU paths for the full preset side by side: torch eager fp32 / bf16 autocast, OpenVINO f32 / bf16 (IR from torch).

    python benchmarks/bench_cpu_paths.py [--runs 2] [--workdir DIR]

Each path runs in its own fresh process, so its peak RSS is its own. Seeded (untrained) weights, batch 1,
the golden test pattern at 1536x1536. Every candidate's outputs are compared with the eager fp32 outputs of
the same run (per-attribute max / p99). The 1-minute load average is recorded before each step: on a
shared 2-core machine a load above ~2 means other work took CPU time during that step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, save  # noqa: E402

EAGER = """
import json, os, resource, time, numpy as np, torch
from sharp_export.reference.checkpoint import build_model, autocast_context
from sharp_export.samples import example_inputs
loaded = build_model("sharp", seed=0, precision="{precision}")
ex = example_inputs(1536, 1)
times = []
for _ in range({runs}):
    t0 = time.perf_counter()
    with torch.no_grad(), autocast_context(loaded, torch.device("cpu")):
        out = loaded.model(ex.image, ex.disparity_factor)
    times.append(time.perf_counter() - t0)
if "{save}":
    np.savez("{save}", *[t.float().numpy() for t in out])
print(json.dumps(dict(forward_s=times, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

OV_CONVERT = """
import json, resource, time, torch, openvino as ov
from sharp_export.reference.checkpoint import build_model
from sharp_export.samples import example_inputs
from sharp_export.converters.onnx_export import RawOutputs
model = build_model("sharp", seed=0).model.eval()
ex = example_inputs(1536, 1)
t0 = time.perf_counter()
with torch.no_grad():
    ovm = ov.convert_model(RawOutputs(model), example_input=(ex.image, ex.disparity_factor))
convert_s = time.perf_counter() - t0
t0 = time.perf_counter()
ov.save_model(ovm, "{ir}", compress_to_fp16=False)
save_s = time.perf_counter() - t0
print(json.dumps(dict(convert_s=convert_s, save_s=save_s, openvino=ov.__version__,
                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

OV_RUN = """
import json, resource, time, numpy as np, openvino as ov
from sharp_export.samples import example_inputs
ex = example_inputs(1536, 1)
core = ov.Core()
t0 = time.perf_counter()
compiled = core.compile_model("{ir}", "CPU", {{"INFERENCE_PRECISION_HINT": "{hint}", "NUM_STREAMS": "1"}})
compile_s = time.perf_counter() - t0
request = compiled.create_infer_request()
times = []
for _ in range({runs}):
    t0 = time.perf_counter()
    request.infer([ex.image.numpy(), ex.disparity_factor.numpy()])
    times.append(time.perf_counter() - t0)
outs = [request.get_output_tensor(i).data.copy() for i in range(5)]
np.savez("{save}", *outs)
print(json.dumps(dict(compile_s=compile_s, forward_s=times,
                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""


def compare(reference_npz: Path, candidate_npz: Path) -> dict:
    import numpy as np
    import torch

    from sharp_export.parity.compare import compare_gaussians
    from sharp_export.reference.gaussians import Gaussians3D

    def load(path: Path) -> Gaussians3D:
        data = np.load(path)
        return Gaussians3D(*(torch.from_numpy(data[f"arr_{i}"]) for i in range(5)))

    results = compare_gaussians(load(reference_npz), load(candidate_npz), None, space="raw")
    return {r.metric: {"max": r.max, "p99": r.p99} for r in results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip", nargs="*", default=[], help="candidate names to skip")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cpu_paths_"))
    work.mkdir(parents=True, exist_ok=True)
    ir = work / "sharp.xml"
    reference = work / "eager_fp32.npz"
    results: dict = {}

    def step(name: str, code: str) -> None:
        if name in args.skip:
            return
        load = os.getloadavg()[0]
        print(f"[{name}] load {load:.2f} ...", flush=True)
        results[name] = {"load_average_1min_before": round(load, 2), **run_child(code)}
        print(f"[{name}] {json.dumps(results[name])}", flush=True)

    step("eager_fp32", EAGER.format(precision="fp32", runs=1, save=reference))
    step("eager_bf16", EAGER.format(precision="bf16", runs=1, save=work / "eager_bf16.npz"))
    step("openvino_convert", OV_CONVERT.format(ir=ir))
    step("openvino_f32", OV_RUN.format(ir=ir, hint="f32", runs=args.runs, save=work / "openvino_f32.npz"))
    step("openvino_bf16", OV_RUN.format(ir=ir, hint="bf16", runs=args.runs, save=work / "openvino_bf16.npz"))
    for name in ("eager_bf16", "openvino_f32", "openvino_bf16"):
        if name in results and reference.is_file():
            results[name]["vs_eager_fp32"] = compare(reference, work / f"{name}.npz")
    if "eager_fp32" in results:
        base = results["eager_fp32"]["forward_s"][-1]
        for row in results.values():
            if "forward_s" in row:
                row["speed_vs_eager_fp32"] = round(base / min(row["forward_s"]), 3)
    ir_bytes = sum(p.stat().st_size for p in work.glob("sharp.*")) if ir.is_file() else None
    save(
        "cpu_paths_full",
        {
            "what": "sharp preset (seeded, untrained), batch 1, golden pattern 1536x1536, CPU, one process per path",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "openvino_ir_bytes": ir_bytes,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
