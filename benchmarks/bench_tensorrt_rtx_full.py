"""Full-size TensorRT-RTX engines built on the CPU: build time, engine size and peak RSS per precision.

    python benchmarks/bench_tensorrt_rtx_full.py [--precisions fp16 int8 fp8]
        [--compute-capability sm89] [--preset sharp] [--workdir DIR] [--keep]

Each precision is one `sharp-export tensorrt-rtx` export (``run_export``) in its own fresh process: seed-0 UNTRAINED
weights, int8 / fp8 calibrated on the bundled sample photos (``--calib-data samples``: 5 real photos), ``--no-parity``
(the ONNX's accuracy is measured by the onnx benchmarks; no engine can run here). Recorded per precision: the
export's stage seconds and peak RSS, the TensorRT-ready ONNX size, the TensorRT-RTX parse / build seconds, the build
process's own peak RSS (the builder runs in a child of the export), the network's layer count, the engine's size
and sha256. Nothing here ran an engine: there is no GPU.

Needs up to ~15 GB RAM for int8 / fp8 calibration at full size (run under the shared lock), ~8 GB disk per
precision while it runs, ~15 minutes per calibrated precision on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402

EXPORT = """
import json, resource, time
from pathlib import Path
from sharp_export.contract import ExportRequest
from sharp_export.export import run_export
from sharp_export.artifact import read_manifest
precision = {precision!r}
t0 = time.perf_counter()
out = run_export(ExportRequest(target="tensorrt-rtx", output=Path({out!r}), preset={preset!r}, seed=0,
                               precision=precision, parity=False,
                               calib_data=Path("samples") if precision in ("int8", "fp8") else None,
                               options={{"compute_capability": {cc!r}}}))
total = time.perf_counter() - t0
m = read_manifest(out)
rtx = m.conversion["tensorrt_rtx"]
print(json.dumps(dict(
    total_s=round(total, 1), stage_s=m.conversion["stage_seconds"],
    onnx_export_s=m.conversion.get("export_seconds"),
    onnx_bytes=m.conversion.get("file_bytes") or m.conversion.get("files"),
    calibration=m.conversion.get("calibration"),
    calibration_ranges=m.conversion.get("calibration_ranges"), quantize_s=m.conversion.get("quantize_seconds"),
    tensorrt_rtx_version=rtx["tensorrt_rtx_version"], compute_capabilities=rtx["compute_capabilities"],
    network_layers=rtx["network"]["layers"], parse_s=rtx["parse_seconds"], build_s=rtx["build_seconds"],
    engine_bytes=rtx["engine_bytes"], engine_sha256=rtx["engine_sha256"],
    build_process_peak_rss_gb=rtx["build_peak_rss_gb"],
    export_process_peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    files={{k: v["size"] for k, v in m.files.items()}})))
"""


def run_child(code: str) -> dict:
    """``code`` in a fresh process (its peak RSS its own); its progress lines (stderr) pass through, its last stdout
    line is the JSON result."""
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["fp16", "int8", "fp8"])
    parser.add_argument("--compute-capability", default="sm89")
    parser.add_argument("--preset", default="sharp")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the artifacts")
    parser.add_argument("--name", default=None, help="results file name (default tensorrt_rtx_<preset>)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rtx-bench-", dir=args.workdir))
    name = args.name or f"tensorrt_rtx_{args.preset}"
    rows: dict = {}
    # Precisions measured by an earlier run (same preset and compute capability) are kept unless asked again: a
    # calibrated precision takes ~30 min here, so they are measured in separate runs.
    earlier = RESULTS / f"{name}.json"
    if earlier.is_file():
        before = json.loads(earlier.read_text())
        if (before.get("preset"), before.get("compute_capability")) == (args.preset, args.compute_capability):
            rows.update({p: row for p, row in before.get("results", {}).items() if p not in args.precisions})

    def write(complete: bool) -> None:
        """Saved after every precision: a run stopped later (out of memory on a shared machine) keeps the rows done."""
        save(
            name,
            {
                "what": "sharp-export tensorrt-rtx: TensorRT-ready ONNX + TensorRT-RTX ahead-of-time engine build on "
                "the CPU (no GPU); seed-0 untrained weights; int8 / fp8 calibrated on the 5 bundled sample photos; "
                "--no-parity. No engine was run: no latency exists here.",
                "preset": args.preset,
                "compute_capability": args.compute_capability,
                "precisions_asked": args.precisions,
                "complete": complete,
                "calibration_cache": "SHARP_EXPORT_CALIBRATION_CACHE" in os.environ,
                "results": rows,
            },
        )

    try:
        for precision in args.precisions:
            out = workdir / precision
            print(f"{precision}: exporting to {out}", flush=True)
            code = EXPORT.format(precision=precision, out=str(out), preset=args.preset, cc=args.compute_capability)
            load_before = os.getloadavg()[0]
            rows[precision] = run_child(code)
            # The machine is shared: the 1-minute load before and after says how much other work ran alongside.
            load_after = os.getloadavg()[0]
            rows[precision]["load_average_1min"] = {"before": round(load_before, 2), "after": round(load_after, 2)}
            print(precision, {k: v for k, v in rows[precision].items() if k != "files"}, flush=True)
            if not args.keep:
                shutil.rmtree(out)
            write(complete=all(p in rows for p in args.precisions))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
