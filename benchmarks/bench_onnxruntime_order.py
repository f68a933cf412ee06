"""ONNX Runtime's node order and the memory of one full-size run: default (topological) vs priority-based.

    python benchmarks/bench_onnxruntime_order.py ONNX_ARTIFACT [ONNX_ARTIFACT ...] [--name onnxruntime_order_full]

For each artifact (an ``onnx`` or ``tensorrt --no-build`` directory) and each order, one fresh process opens
``model.onnx`` the way ``OnnxRuntimeRunner`` does (every core, CPU arena off, int8 artifacts without
MatMulAddFusion) and runs the golden pattern once; it reports its open and run times and its peak RSS
(``ru_maxrss``). The runner uses the priority-based order since this measurement (runtime/onnxruntime_runner.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

ORDERS = ("default", "priority")


def one_run(artifact: Path, order: str) -> dict:
    """In this process: open the artifact's model with ``order`` and run it once."""
    import onnxruntime

    from sharp_export.artifact import read_manifest
    from sharp_export.runtime.onnxruntime_runner import INT8_DISABLED_OPTIMIZERS
    from sharp_export.samples import example_inputs

    manifest = read_manifest(artifact)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.enable_cpu_mem_arena = False
    if order == "priority":
        options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    int8 = manifest.precision == "int8"
    start = time.perf_counter()
    session = onnxruntime.InferenceSession(
        str(artifact / manifest.main_file),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS) if int8 else None,
    )
    open_s = time.perf_counter() - start
    example = example_inputs(int(manifest.io.inputs[0].shape[-1]), 1)
    start = time.perf_counter()
    session.run(None, {"image": example.image.numpy(), "disparity_factor": example.disparity_factor.numpy()})
    return {
        "artifact": f"{manifest.target} {manifest.precision}",
        "order": order,
        "open_s": round(open_s, 1),
        "run_s": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--name", default="onnxruntime_order_full")
    parser.add_argument("--one", nargs=2, metavar=("ARTIFACT", "ORDER"), help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), args.one[1])))
        return
    if not args.artifacts:
        parser.error("name at least one ONNX artifact directory")
    rows = []
    for artifact in args.artifacts:
        for order in ORDERS:
            command = [sys.executable, __file__, "--one", str(artifact), order]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    save(args.name, {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows})


if __name__ == "__main__":
    main()
