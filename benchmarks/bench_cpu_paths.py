"""CPU paths for the full preset side by side: torch eager fp32 / bf16 autocast, OpenVINO f32 / bf16 (IR from torch).

    python benchmarks/bench_cpu_paths.py [--runs 2] [--workdir DIR]
    python benchmarks/bench_cpu_paths.py --ir fp32=out/ov/model.xml --ir int8=out/ov_int8/model.xml \
        --name cpu_paths_full_amx

With ``--ir NAME=XML`` (IRs written by ``sharp-export openvino``) no IR is converted from torch: each given IR
is timed with the f32 hint and with the bf16 hint, as ``openvino_NAME_f32`` / ``openvino_NAME_bf16``, and the
eager rows add a channels-last fp32 run (what ``TorchRunner`` does on the CPU).

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
if {channels_last}:  # what TorchRunner does on the CPU
    loaded.model.to(memory_format=torch.channels_last)
    ex = type(ex)(ex.image.contiguous(memory_format=torch.channels_last), ex.disparity_factor)
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
from sharp_export.converters.onnx.export import RawOutputs
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
core.set_property({{"ENABLE_MMAP": False}})  # as OpenVINORunner: read, compile, drop the model (lower peak RSS)
t0 = time.perf_counter()
model = core.read_model("{ir}")
compiled = core.compile_model(model, "CPU", {{"INFERENCE_PRECISION_HINT": "{hint}", "NUM_STREAMS": "1"}})
del model
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
    parser.add_argument("--ir", action="append", default=[], metavar="NAME=XML", help="time this OpenVINO IR")
    parser.add_argument("--name", default="cpu_paths_full", help="results file name (without .json)")
    args = parser.parse_args()
    irs = dict(item.split("=", 1) for item in args.ir)
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

    step("eager_fp32", EAGER.format(precision="fp32", runs=1, save=reference, channels_last=False))
    candidates = ["eager_bf16"]
    if irs:
        step(
            "eager_fp32_channels_last",
            EAGER.format(precision="fp32", runs=1, save=work / "eager_fp32_channels_last.npz", channels_last=True),
        )
        candidates.append("eager_fp32_channels_last")
    bf16_save = work / "eager_bf16.npz"
    step("eager_bf16", EAGER.format(precision="bf16", runs=1, save=bf16_save, channels_last=bool(irs)))
    if not irs:
        step("openvino_convert", OV_CONVERT.format(ir=ir))
        irs = {"": str(ir)}
    for label, xml in irs.items():
        for hint in ("f32", "bf16"):
            name = "_".join(part for part in ("openvino", label, hint) if part)
            step(name, OV_RUN.format(ir=xml, hint=hint, runs=args.runs, save=work / f"{name}.npz"))
            candidates.append(name)
    for name in candidates:
        if name in results and reference.is_file():
            results[name]["vs_eager_fp32"] = compare(reference, work / f"{name}.npz")
    if "eager_fp32" in results:
        base = results["eager_fp32"]["forward_s"][-1]
        for row in results.values():
            if "forward_s" in row:
                row["speed_vs_eager_fp32"] = round(base / min(row["forward_s"]), 3)
    ir_bytes = {label: sum(p.stat().st_size for p in Path(xml).parent.glob("model.*")) for label, xml in irs.items()}
    if ir.is_file():
        ir_bytes = sum(p.stat().st_size for p in work.glob("sharp.*"))
    save(
        args.name,
        {
            "what": "sharp preset (seeded, untrained), batch 1, golden pattern 1536x1536, CPU, one process per path",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "openvino_ir_bytes": ir_bytes,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
