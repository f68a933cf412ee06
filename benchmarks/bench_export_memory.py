"""Full-size exports as a user runs them: wall time, peak memory of the whole process tree, calibration time and the
export's own parity summary, one `sharp-export <target>` command per row.

    python benchmarks/bench_export_memory.py --checkpoint PERTURBED.safetensors [--rows openvino-int8-bf16 ...]
        [--workdir DIR] [--keep]

Each row runs the CLI in a fresh process (``sharp-export <target> -o DIR --preset sharp -c CHECKPOINT ...``) with
the export's own parity check on (golden pattern, the artifact's runner against torch fp32). While it runs, the
proportional memory (PSS) of the command and of every child it starts is summed every 0.25 s
(``tree_peak_pss_gb``: what the machine must hold, helper processes included); ``export_peak_rss_gb`` is the export
process's own ``ru_maxrss``, as its manifest records it. The calibration seconds are the quantizer's
(``quantize_seconds``: the MinMax pass + ONNX Runtime's quantize_static; for ExecuTorch, PT2E's prepare + convert,
with no calibration pass).

Rows are merged into ``benchmarks/results/export_memory_full.json`` (a later run replaces only the rows it ran, and
each row keeps its own date), so one row can be re-measured without the others.

Use the perturbed full-size weights (benchmarks/make_perturbed_weights.py): seed-0 weights leave the prediction head
zero and hide the decoder's error (docs/full-size-precision.md). Needs up to ~10 GB RAM per row (OpenVINO fp32, in
its check) and ~8 GB disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, run_tree_sampled  # noqa: E402

NAME = "export_memory_full"
# row -> (target, precision, extra CLI arguments)
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "openvino-int8-bf16": ("openvino", "int8", ["--calib-data", "samples", "--float-ops", "bf16"]),
    "openvino-int8-bf16-ort-calibration": (
        "openvino",
        "int8",
        ["--calib-data", "samples", "--float-ops", "bf16", "--calib-runtime", "onnxruntime"],
    ),
    "openvino-int8": ("openvino", "int8", ["--calib-data", "samples"]),
    "openvino-bf16": ("openvino", "bf16", []),
    "openvino-fp32": ("openvino", "fp32", []),
    "onnx-fp32": ("onnx", "fp32", []),
    "onnx-fp16": ("onnx", "fp16", []),
    "onnx-int8": ("onnx", "int8", ["--calib-data", "samples"]),
    "tensorrt-fp16": ("tensorrt", "fp16", ["--no-build"]),
    "tensorrt-bf16": ("tensorrt", "bf16", ["--no-build"]),
    "tensorrt-int8": ("tensorrt", "int8", ["--no-build", "--calib-data", "samples"]),
    "tensorrt-fp8": ("tensorrt", "fp8", ["--no-build", "--calib-data", "samples"]),
    "executorch-fp32": ("executorch", "fp32", ["--split", "stages"]),
    "executorch-int8": ("executorch", "int8", ["--split", "stages"]),  # activations quantized as it runs: no photos
    # Core ML: off macOS the package cannot run, so its check is the torch proxy of the plan (fp16) or fp32 torch.
    "coreml-fp32": ("coreml", "fp32", []),
    "coreml-fp16": ("coreml", "fp16", []),
    # TensorRT-RTX: the engine is built here on the CPU (default compute capability); its check runs the ONNX it was
    # built from on ONNX Runtime (the engine needs an RTX GPU).
    "tensorrt-rtx-fp16": ("tensorrt-rtx", "fp16", []),
    "tensorrt-rtx-bf16": ("tensorrt-rtx", "bf16", []),
    "tensorrt-rtx-int8": ("tensorrt-rtx", "int8", ["--calib-data", "samples"]),
    "tensorrt-rtx-fp8": ("tensorrt-rtx", "fp8", ["--calib-data", "samples"]),
}


def run_row(name: str, checkpoint: Path, workdir: Path, keep: bool, preset: str = "sharp") -> dict:
    target, precision, extra = ROWS[name]
    out = workdir / name
    command = ["sharp-export", target, "-o", str(out), "--preset", preset, "-c", str(checkpoint),
               "--precision", precision, "--force", *extra]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    log = workdir / f"{name}.log"
    run = run_tree_sampled(command, log=log)
    row: dict = {
        "command": " ".join(command[:2] + ["-o", "DIR"] + command[4:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exit_code": run.exit_code,
        "wall_s": round(run.wall_s, 1),
        "tree_peak_pss_gb": round(run.tree_peak_bytes / 1e9, 2),
        "log_tail": log.read_text().splitlines()[-3:],
    }
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        conversion = manifest["conversion"]
        row["stage_seconds"] = conversion.get("stage_seconds")
        row["export_peak_rss_gb"] = conversion.get("peak_rss_gb")
        row["artifact_bytes"] = sum(f["size"] for f in manifest["files"].values())
        reduced = conversion.get("int8") or conversion
        for key in ("calibration_ranges", "quantize_seconds"):
            if key in reduced:
                row[key] = reduced[key]
        parity = manifest.get("parity") or {}
        row["parity"] = {"status": parity.get("status"), "failures": parity.get("failures")}
        details = out / "parity.json"
        if details.is_file():  # the export's check: golden pattern, the artifact's runner against torch fp32
            document = json.loads(details.read_text())
            row["parity"]["tolerance_profile"] = document["meta"].get("tolerance_profile")
            row["parity"]["attributes"] = {
                f"{a['attribute']}.{a['metric']}": {k: a[k] for k in ("p99", "max", "tolerance", "passed")}
                for a in document["attributes"]
            }
    row["calibration_lines"] = [line.strip() for line in log.read_text().splitlines() if "calibration" in line][:8]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({k: v for k, v in row.items() if k != "calibration_lines"}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="full-size weights (the perturbed ones)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the artifacts (under --workdir)")
    parser.add_argument("--preset", default="sharp", help="tiny: a smoke run of this script (saved under another name)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="export-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{NAME}.json" if args.preset == "sharp" else workdir / f"{NAME}_{args.preset}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"benchmark": NAME, "rows": {}}
    payload.update(
        what="full-size exports (preset sharp) with their parity check on, one CLI command per row in a fresh "
        f"process (preset {args.preset}); int8 calibrated on the 5 bundled sample photos; tree_peak_pss_gb sums "
        "the command and its children; rows with their own machine block ran there, the others on the machine above",
        checkpoint=args.checkpoint.name,
    )
    payload.setdefault("machine", machine_info())  # for the rows without their own "machine" (older runs)
    for name in args.rows:
        payload["rows"][name] = {
            **run_row(name, args.checkpoint, workdir, args.keep, args.preset),
            "machine": machine_info(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")  # after every row: a killed run keeps what it measured
    print(f"saved {path}")


if __name__ == "__main__":
    main()
