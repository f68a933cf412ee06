"""torch AOTInductor on the CPU: the model exported with torch.export, compiled to a .pt2 package, timed.

    python benchmarks/bench_aoti_cpu.py [--preset tiny|sharp] [--precision fp32|bf16] [--runs 2] [--workdir DIR]

A path of the CPU comparison (issue: the fast CPU path), measured, not a target: each step runs in a fresh child
process so its peak RSS is its own. Seeded (untrained) weights for the full preset, the golden perturbed
weights for tiny; batch 1, the golden test pattern. bf16 wraps the forward in CPU autocast before export, so
the compiled graph holds the casts autocast would insert. The package's outputs are compared with the eager
fp32 outputs of the same run (per attribute, raw space). Writes benchmarks/results/aoti_cpu_<preset>_<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_paths import compare  # noqa: E402
from common import run_child, save  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_tiny" / "weights_perturbed.safetensors"

SETUP = """
import json, resource, time, numpy as np, torch
from sharp_export.reference.checkpoint import build_model
from sharp_export.samples import example_inputs
preset = "{preset}"
loaded = build_model(preset, "{weights}") if preset == "tiny" else build_model(preset, seed=0)
model = loaded.model.eval()
ex = example_inputs(1536 if preset == "sharp" else 384, 1)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
"""

EAGER = (
    SETUP
    + """
with torch.no_grad():
    t0 = time.perf_counter(); out = model(ex.image, ex.disparity_factor); dt = time.perf_counter() - t0
np.savez("{save}", *[t.float().numpy() for t in out])
print(json.dumps(dict(forward_s=[dt], peak_rss_gb=peak())))
"""
)

COMPILE = (
    SETUP
    + """
class Forward(torch.nn.Module):
    def __init__(self, inner, bf16):
        super().__init__()
        self.inner, self.bf16 = inner, bf16
    def forward(self, image, disparity_factor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.inner(image, disparity_factor)
        return tuple(t.float() for t in out)
t0 = time.perf_counter()
with torch.no_grad():
    program = torch.export.export(Forward(model, "{precision}" == "bf16"), (ex.image, ex.disparity_factor))
export_s = time.perf_counter() - t0
t0 = time.perf_counter()
path = torch._inductor.aoti_compile_and_package(program, package_path="{package}")
compile_s = time.perf_counter() - t0
print(json.dumps(dict(export_s=export_s, compile_s=compile_s, peak_rss_gb=peak())))
"""
)

RUN = """
import json, os, resource, time, numpy as np, torch
from sharp_export.samples import example_inputs
ex = example_inputs({resolution}, 1)
t0 = time.perf_counter()
runner = torch._inductor.aoti_load_package("{package}")
load_s = time.perf_counter() - t0
times = []
for _ in range({runs}):
    t0 = time.perf_counter()
    with torch.no_grad():
        out = runner(ex.image, ex.disparity_factor)
    times.append(time.perf_counter() - t0)
np.savez("{save}", *[t.float().numpy() for t in out])
print(json.dumps(dict(load_s=load_s, forward_s=times, package_bytes=os.path.getsize("{package}"),
                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny", choices=("tiny", "sharp"))
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="aoti_"))
    work.mkdir(parents=True, exist_ok=True)
    package = work / f"sharp_{args.preset}_{args.precision}.pt2"
    results: dict = {}

    def step(name: str, code: str) -> None:
        load = os.getloadavg()[0]
        print(f"[{name}] load {load:.2f} ...", flush=True)
        results[name] = {"load_average_1min_before": round(load, 2), **run_child(code)}
        print(f"[{name}] {json.dumps(results[name])}", flush=True)

    common = {"preset": args.preset, "weights": WEIGHTS}
    step("eager_fp32", EAGER.format(**common, save=work / "eager.npz"))
    step("aoti_compile", COMPILE.format(**common, precision=args.precision, package=package))
    resolution = 1536 if args.preset == "sharp" else 384
    step("aoti_run", RUN.format(resolution=resolution, package=package, runs=args.runs, save=work / "aoti.npz"))
    results["aoti_run"]["vs_eager_fp32"] = compare(work / "eager.npz", work / "aoti.npz")
    base = results["eager_fp32"]["forward_s"][0]
    results["aoti_run"]["time_vs_eager_fp32"] = round(min(results["aoti_run"]["forward_s"]) / base, 3)
    save(
        f"aoti_cpu_{args.preset}_{args.precision}",
        {
            "what": f"{args.preset} preset, batch 1, golden pattern, torch.export + aoti_compile_and_package "
            f"({args.precision}), CPU, one process per step; time_vs_eager_fp32 = AOTI time / eager fp32 time",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
