"""The int8 plans side by side on one fp32 ONNX (issues 31 and 33): calibration time, size and OpenVINO latency.

    python benchmarks/bench_int8_plans.py FP32_DIR [--photos 5] [--runs 3] [--name int8_plans_full]

FP32_DIR holds a ``model.onnx`` written by ``sharp-export onnx`` (precision fp32). Two plans, each built with
``converters/onnx/quantize.py quantize_int8`` and the onnx / openvino targets' rules (uint8 activations, 8-bit weights),
calibrated on OpenVINO on the first ``--photos`` of the bundled sample photos (a fresh pass; the ranges do not
change the latency, so fewer photos only shorten the run); ``--plans`` picks some:

* ``vits_weight_layers``: the shipped plan (the encoder's two ViTs only, their layers with weights, Q/DQ on what
  those Conv / MatMul read; the attention MatMuls float);
* ``vits_inputs``: the same with the attention MatMuls int8 too (shipped in the third session of 2026-12-07);
* ``network_all``: the plan shipped before 2026-12-07 (every network Conv / MatMul but the disparity head, Q/DQ on
  their inputs and outputs).

Each int8 ONNX, and the fp32 ONNX as the baseline, is then compiled by OpenVINO as the runner does (bf16 and f32
inference-precision hints, one stream) and opened in ONNX Runtime CPU as its runner does, and timed
on the golden pattern, one fresh process per (model, runtime), the models alternating; the first run includes
first-inference work, so the figure reported is the median of the later ones.
Recorded per plan: calibrated tensors, calibration seconds per photo, quantize seconds, int8 file size, compile
seconds, latency per run and the process peak RSS. Accuracy is not measured here (the parity rows do that).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, save  # noqa: E402

from sharp_export.converters.onnx.quantize import VITS_WITH_ATTENTION_PLAN, WHOLE_NETWORK_PLAN  # noqa: E402

PLANS = {
    "vits_weight_layers": {},  # quantize_int8's defaults (the shipped plan)
    "vits_inputs": VITS_WITH_ATTENTION_PLAN,  # the ViTs with their attention MatMuls int8 (before 2026-12-07, 4th)
    "network_all": WHOLE_NETWORK_PLAN,
}

QUANTIZE = """
import contextlib, io, json, resource, time
from pathlib import Path
from sharp_export.calibration.dataset import load_calibration_set
from sharp_export.converters.onnx.quantize import ONNXRUNTIME_INT8_OPTIONS, quantize_int8
calibration = load_calibration_set("samples", {resolution}, {photos})
log = io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    details = quantize_int8(Path({fp32!r}), Path({out!r}), calibration, external_data=True,
                            calibration_runtime="openvino", **ONNXRUNTIME_INT8_OPTIONS, **{plan!r})
print(json.dumps(dict(seconds=time.perf_counter() - start, log=log.getvalue().splitlines(),
    quantized_nodes=details["quantized_nodes"], calibrated_tensors=details["calibrated_tensors"],
    peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
"""

TIME = """
import json, resource, time, openvino as ov
from sharp_export.samples import example_inputs
core = ov.Core()
core.set_property({{"ENABLE_MMAP": False}})  # as OpenVINORunner
config = {{"INFERENCE_PRECISION_HINT": {hint!r}, "NUM_STREAMS": "1"}}
start = time.perf_counter()
compiled = core.compile_model(core.read_model({onnx!r}), "CPU", config)
compile_s = time.perf_counter() - start
example = example_inputs({resolution}, 1)
request = compiled.create_infer_request()
runs = []
for _ in range({runs}):
    start = time.perf_counter()
    request.infer({{"image": example.image.numpy(), "disparity_factor": example.disparity_factor.numpy()}})
    runs.append(round(time.perf_counter() - start, 2))
print(json.dumps(dict(compile_s=round(compile_s, 1), infer_s=runs,
    peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2))))
"""

# ONNX Runtime CPU, as OnnxRuntimeRunner opens a session (threads = the cores, memory arena off, an int8 graph
# without INT8_DISABLED_OPTIMIZERS).
TIME_ORT = """
import json, os, resource, time, onnxruntime
from sharp_export.runtime.onnxruntime_runner import INT8_DISABLED_OPTIMIZERS
from sharp_export.samples import example_inputs
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = os.cpu_count() or 1
options.enable_cpu_mem_arena = False
start = time.perf_counter()
session = onnxruntime.InferenceSession({onnx!r}, options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS) if {int8} else None)
open_s = time.perf_counter() - start
example = example_inputs({resolution}, 1)
runs = []
for _ in range({runs}):
    start = time.perf_counter()
    session.run(None, {{"image": example.image.numpy(), "disparity_factor": example.disparity_factor.numpy()}})
    runs.append(round(time.perf_counter() - start, 2))
print(json.dumps(dict(compile_s=round(open_s, 1), infer_s=runs,
    peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32_dir", type=Path)
    parser.add_argument("--photos", type=int, default=5, help="calibration photos (of the 5 samples)")
    parser.add_argument("--runs", type=int, default=3, help="inferences per OpenVINO process")
    parser.add_argument("--ort-runs", type=int, default=2, help="inferences per ONNX Runtime process")
    parser.add_argument("--name", default="int8_plans_full")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--plans", default=",".join(PLANS), help=f"comma-separated, of {', '.join(PLANS)}")
    args = parser.parse_args()
    plans = {name: PLANS[name] for name in args.plans.split(",")}
    import onnx

    fp32 = args.fp32_dir.resolve() / "model.onnx"
    graph = onnx.load(str(fp32), load_external_data=False).graph
    resolution = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    work = args.workdir or Path(tempfile.mkdtemp(prefix="int8_plans_"))
    env_cache = os.environ.pop("SHARP_EXPORT_CALIBRATION_CACHE", None)  # a fresh calibration pass per plan
    results: dict = {name: {"settings": settings or "quantize_int8 defaults"} for name, settings in plans.items()}
    for name, plan in plans.items():
        (work / name).mkdir(parents=True, exist_ok=True)
        out = work / name / "model.onnx"
        print(f"[{name}] quantize ...", flush=True)
        code = QUANTIZE.format(resolution=resolution, photos=args.photos, fp32=str(fp32), out=str(out), plan=plan)
        found = run_child(code)
        photos = [
            float(m.group(1)) for line in found["log"] if (m := re.search(r"calibration \d+/\d+: ([\d.]+) s", line))
        ]
        found["calibration_s_per_photo"] = photos
        found["calibration_s"] = round(sum(photos), 1)
        found["int8_bytes"] = sum(f.stat().st_size for f in (work / name).iterdir())
        results[name]["quantize"] = found
        print(f"[{name}] {json.dumps({k: v for k, v in found.items() if k != 'log'})}", flush=True)
    results["fp32"] = {"settings": "the fp32 ONNX itself (no Q/DQ)"}
    models = {"fp32": str(fp32), **{name: str(work / name / "model.onnx") for name in plans}}
    runs = [(f"openvino_{hint}", TIME, {"hint": hint}, args.runs) for hint in ("bf16", "f32")]
    runs.append(("onnxruntime", TIME_ORT, {}, args.ort_runs))
    for label, code, extra, count in runs:
        for name, onnx_path in models.items():
            load = round(os.getloadavg()[0], 2)
            extra = {**extra, "int8": name != "fp32"} if code is TIME_ORT else extra
            timed = run_child(code.format(onnx=onnx_path, resolution=resolution, runs=count, **extra))
            timed["load_average_before"] = load
            timed["median_after_first_s"] = statistics.median(timed["infer_s"][1:] or timed["infer_s"])
            results[name][label] = timed
            print(f"[{name} {label}] {json.dumps(timed)}", flush=True)
    if env_cache is not None:
        os.environ["SHARP_EXPORT_CALIBRATION_CACHE"] = env_cache
    save(
        args.name,
        {
            "what": __doc__.splitlines()[0],
            "command": f"python benchmarks/bench_int8_plans.py {args.fp32_dir} --photos {args.photos} "
            f"--runs {args.runs} --ort-runs {args.ort_runs} --plans {args.plans} --name {args.name}",
            "fp32_onnx": str(fp32),
            "plans": results,
        },
    )


if __name__ == "__main__":
    main()
