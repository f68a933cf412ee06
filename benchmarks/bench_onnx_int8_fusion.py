"""ONNX Runtime on an int8 graph, with and without the graph optimizations the runner turns off for int8 artifacts
(``runtime/onnxruntime_runner.py INT8_DISABLED_OPTIMIZERS``): seconds a run, peak RSS, and how far the outputs move.

    python benchmarks/bench_onnx_int8_fusion.py INT8_DIR/model.onnx [--runs 2] [--name onnx_int8_fusion_full]

Each setting runs in a fresh process (its own ``ru_maxrss``) on the golden pattern at the model's input size
(disparity factor 1.0); the outputs of the two settings are compared tensor by tensor (max and p99 of |a - b|,
and the relative depth change of the Gaussian means). Saves ``benchmarks/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

SETTINGS = {"onnxruntime_default": False, "runner_int8": True}


def worker(model: Path, disable: bool, runs: int, out: Path) -> None:
    import resource
    import time

    import onnxruntime

    from sharp_export.runtime.onnxruntime_runner import INT8_DISABLED_OPTIMIZERS
    from sharp_export.samples import example_inputs

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False  # as the runner opens it
    start = time.perf_counter()
    session = onnxruntime.InferenceSession(
        str(model),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS) if disable else None,
    )
    open_s = time.perf_counter() - start
    size = session.get_inputs()[0].shape[-1]
    inputs = example_inputs(size)
    feeds = {"image": inputs.image.numpy(), "disparity_factor": inputs.disparity_factor.numpy()}
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        values = session.run(None, feeds)
        seconds.append(round(time.perf_counter() - start, 1))
    names = [o.name for o in session.get_outputs()]
    np.savez(out.with_suffix(".npz"), **dict(zip(names, values, strict=True)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    out.write_text(json.dumps({"open_s": round(open_s, 1), "run_s": seconds, "peak_rss_gb": round(peak, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--name", default="onnx_int8_fusion_full")
    parser.add_argument("--worker", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, SETTINGS[args.worker], args.runs, args.out)
        return
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            out = Path(tmp) / f"{setting}.json"
            command = [sys.executable, __file__, str(args.model), "--runs", str(args.runs), "--worker", setting,
                       "--out", str(out)]  # fmt: skip
            subprocess.run(command, check=True)
            rows[setting] = json.loads(out.read_text())
            print(setting, rows[setting], flush=True)
        a, b = (np.load(Path(tmp) / f"{s}.npz") for s in SETTINGS)
        differences = {}
        for name in a.files:
            delta = np.abs(a[name].astype(np.float64) - b[name])
            differences[name] = {"max": float(delta.max()), "p99": float(np.percentile(delta, 99))}
        means = [n for n in a.files if "mean" in n]
        if means:
            za, zb = a[means[0]][..., 2].astype(np.float64), b[means[0]][..., 2]
            relative = np.abs(zb - za) / np.maximum(np.abs(za), 1e-6)
            differences["means_rel_depth"] = {"max": float(relative.max()), "p99": float(np.percentile(relative, 99))}
    save(
        args.name,
        {
            "what": "one int8 ONNX graph in ONNX Runtime CPU: its default graph optimizations against the runner's "
            "int8 setting (INT8_DISABLED_OPTIMIZERS off), fresh process each, golden pattern",
            "model": str(args.model.name),
            "settings": rows,
            "output_differences": differences,
        },
    )


if __name__ == "__main__":
    main()
