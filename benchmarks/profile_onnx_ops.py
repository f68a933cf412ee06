"""Where an ONNX artifact's time goes in ONNX Runtime CPU: one profiled forward, time summed per op type.

    python benchmarks/profile_onnx_ops.py ARTIFACT_DIR [--name NAME] [--top 25]

ARTIFACT_DIR is an onnx (or TensorRT-ready ONNX) artifact; the input is the golden pattern at the artifact's
resolution. ORT's profiler times each kernel run, so the per-op sums include no Python overhead; the total is a
little above an unprofiled run. Writes benchmarks/results/NAME.json (default: onnx_ops_<artifact dir name>).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from sharp_export.artifact import read_manifest  # noqa: E402
from sharp_export.runtime.base import omp_threads  # noqa: E402
from sharp_export.samples import example_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    import onnxruntime

    manifest = read_manifest(args.artifact)
    resolution = manifest.io.inputs[0].shape[-1]
    example = example_inputs(resolution, 1)
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = omp_threads() or os.cpu_count() or 1
        options.enable_cpu_mem_arena = False  # as the project's runner
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = onnxruntime.InferenceSession(str(args.artifact / manifest.main_file), options)
        feeds = {"image": example.image.numpy(), "disparity_factor": example.disparity_factor.numpy()}
        start = time.perf_counter()
        session.run(None, feeds)
        wall = time.perf_counter() - start
        events = json.loads(Path(session.end_profiling()).read_text())

    per_op: dict[str, float] = defaultdict(float)
    per_node: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        per_op[op] += event["dur"] / 1e6
        per_node[event["name"].removesuffix("_kernel_time")] += event["dur"] / 1e6
        calls[op] += 1
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda item: -item[1])
    print(f"wall {wall:.1f} s, kernels {total:.1f} s")
    for op, seconds in ranked:
        print(f"  {op:28s} {seconds:8.2f} s  {100 * seconds / total:5.1f} %  ({calls[op]} runs)")
    save(
        args.name or f"onnx_ops_{args.artifact.name}",
        {
            "artifact": str(args.artifact),
            "precision": manifest.precision,
            "preset": manifest.source.get("preset"),
            "threads": options.intra_op_num_threads,
            "wall_s": round(wall, 2),
            "kernel_s": round(total, 2),
            "per_op_s": {op: round(seconds, 3) for op, seconds in ranked},
            "runs": dict(calls),
            "top_nodes_s": {
                node: round(seconds, 3)
                for node, seconds in sorted(per_node.items(), key=lambda item: -item[1])[: args.top]
            },
        },
    )


if __name__ == "__main__":
    main()
