"""Where the int8 calibration pass spends its time and memory (issue 31): OpenVINO's own per-op counters.

    python benchmarks/profile_calibration_pass.py FP32_DIR/model.onnx [--name calibration_pass_profile_full]

Each case runs in its own process: ``plain`` (the fp32 graph as exported, the model alone) and ``calibration`` (the
graph ``minmax_ranges`` runs: a ReduceMin / ReduceMax pair after each tensor the int8 plan calibrates, i.e. what an
export runs). Both compiled by ``quantize.openvino_calibration_model`` (fp16 weights, bf16 hint, one stream) with
``PERF_COUNT``, two inferences of the golden pattern; recorded: compile
seconds, RSS after compiling, each inference's seconds, the process peak RSS, and the second inference's time per
OpenVINO node type and per kernel (the counters add a little to the inference time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, save  # noqa: E402

CHILD = """
import json, resource, time
from collections import defaultdict
from pathlib import Path
import openvino as ov
from sharp_export.converters.onnx import quantize
from sharp_export.progress import rss_gb
from sharp_export.samples import example_inputs
source, case = Path({source!r}), {case!r}
start = time.perf_counter()
if case == "plain":  # the network alone, compiled as the pass compiles its graph (fp16 weights, same settings)
    tensors = 0
    compiled, label = quantize.openvino_calibration_model(source, {{"PERF_COUNT": "YES"}})
else:
    names = quantize.planned_calibration_tensors(source)
    tensors = len(names)
    augmented, _ = quantize._augmented_with_reductions(source, names)
    try:
        compiled, label = quantize.openvino_calibration_model(augmented, {{"PERF_COUNT": "YES"}})
    finally:
        augmented.unlink(missing_ok=True)
request = compiled.create_infer_request()
compile_s, compiled_rss = time.perf_counter() - start, rss_gb()
resolution = quantize._load_graph_only(source).graph.input[0].type.tensor_type.shape.dim[-1].dim_value
example = example_inputs(resolution, 1)
feeds = {{"image": example.image.numpy(), "disparity_factor": example.disparity_factor.numpy()}}
infer_s = []
for _ in range(2):
    start = time.perf_counter()
    request.infer(feeds)
    infer_s.append(round(time.perf_counter() - start, 2))
by_type, by_kernel = defaultdict(float), defaultdict(float)
for node in request.get_profiling_info():
    seconds = node.real_time.total_seconds()
    by_type[node.node_type] += seconds
    by_kernel[node.exec_type] += seconds
top = lambda d: {{k: round(v, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v >= 0.05}}
print(json.dumps(dict(case=case, runtime=label, calibration_tensors=tensors, compile_s=round(compile_s, 1),
    rss_after_compile_gb=round(compiled_rss, 2), infer_s=infer_s,
    peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    seconds_by_node_type=top(by_type), seconds_by_kernel=top(by_kernel))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32_onnx", type=Path)
    parser.add_argument("--name", default="calibration_pass_profile_full")
    args = parser.parse_args()
    cases = {case: run_child(CHILD.format(source=str(args.fp32_onnx.resolve()), case=case))
             for case in ("plain", "calibration")}  # fmt: skip
    for case, result in cases.items():
        print(case, result["infer_s"], result["peak_rss_gb"], list(result["seconds_by_node_type"].items())[:6])
    payload = {
        "what": __doc__.splitlines()[0],
        "command": f"python benchmarks/profile_calibration_pass.py {args.fp32_onnx} --name {args.name}",
        "cases": cases,
    }
    save(args.name, payload)


if __name__ == "__main__":
    main()
