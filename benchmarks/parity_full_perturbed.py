"""Full-size parity of every reduced-precision row on the perturbed weights (the real test vector).

    python benchmarks/make_perturbed_weights.py                     # once: ~/.cache/sharp-export/weights/...
    sharp-export parity --write-golden GOLDEN -c WEIGHTS --images coffee.png --images chelsea.png   # once
    python benchmarks/parity_full_perturbed.py --golden GOLDEN [--rows ov_int8,ov_int8_bf16,...] [--workdir DIR]

Each row is exported with the CLI (``sharp-export TARGET -c WEIGHTS --no-parity ...``, under ``/usr/bin/time -v``
for its peak RSS), then checked in a fresh process against the golden bundle exactly as ``sharp-export parity
ARTIFACT --golden GOLDEN`` does (the same harness function, the artifact's own tolerance rows), with the artifact's
inference timed per photo. Core ML cannot predict on Linux: its rows run the torch proxies the export uses
(``fp16_proxy_outputs``, ``weights_proxy_outputs``), labelled PROXY. TensorRT bf16 cannot run in ONNX Runtime's CPU
kernels: that row records the export and its static checks only.

One row at a time (the int8 exports peak near 10 GB). Results are merged into
``benchmarks/results/NAME.json`` after every row, and each row's parity report is written to
``benchmarks/results/NAME/ROW.json``; NAME is ``parity_full_perturbed`` unless ``--name`` says otherwise (give
other weights, such as ``--live-disparity``'s, their own name: the JSON records one weights file). Artifacts are
deleted after their row unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

NAME = "parity_full_perturbed"
CALIB = ("--calib-data", "samples")
# row -> (target, CLI options); every row also gets -c WEIGHTS -o DIR --no-parity.
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx_fp16": ("onnx", ("--precision", "fp16")),
    "onnx_int8": ("onnx", ("--precision", "int8", *CALIB)),
    "openvino_bf16": ("openvino", ("--precision", "bf16")),
    "openvino_int8": ("openvino", ("--precision", "int8", *CALIB)),
    "openvino_int8_bf16": ("openvino", ("--precision", "int8", *CALIB, "--float-ops", "bf16")),
    "tensorrt_fp16": ("tensorrt", ("--precision", "fp16", "--no-build")),
    "tensorrt_bf16": ("tensorrt", ("--precision", "bf16", "--no-build")),
    "tensorrt_int8": ("tensorrt", ("--precision", "int8", *CALIB, "--no-build")),
    "tensorrt_fp8": ("tensorrt", ("--precision", "fp8", *CALIB, "--no-build")),
    "executorch_int8_stages": ("executorch", ("--precision", "int8", "--split", "stages")),  # no photos: dynamic
}
# Core ML rows: torch proxies (mode, --weights); gated by the rows the export would use.
PROXY_ROWS = {
    "coreml_fp16_proxy": ("none", "fp16"),
    "coreml_palettize6_proxy": ("palettize6", "coreml-pal6"),
    "coreml_palettize4_proxy": ("palettize4", "coreml-pal4"),
    "coreml_int8_weights_proxy": ("int8", "coreml-w8"),
}

CHECK_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from sharp_export.parity import harness
from sharp_export.parity.lpips import load_lpips
from sharp_export.parity.report import to_json
from sharp_export.registry import resolve_artifact
artifact, golden = Path(sys.argv[1]), Path(sys.argv[2])
resolved = resolve_artifact(artifact)
manifest = resolved.manifest
tols = resolved.tolerances()
profile = resolved.tolerance_profile
times = []
t0 = time.perf_counter()
with resolved.runner("cpu") as runner:
    open_s = time.perf_counter() - t0
    def timed(image, factor):
        t = time.perf_counter()
        out = runner.infer(image, factor)
        times.append(time.perf_counter() - t)
        return out
    meta = {"artifact": str(artifact), "target": manifest.target, "precision": manifest.precision,
            "tolerance_profile": profile}
    report = harness.check_golden(golden, timed, tols, load_lpips(None), meta,
                                  artifact_input=(resolved.resolution, manifest.source.get("preset")))
    extra = {k: getattr(runner, k) for k in ("effective_precision", "int8_layers") if hasattr(runner, k)}
doc = to_json(report)
doc["timing"] = {"open_s": round(open_s, 2), "infer_s": [round(t, 2) for t in times], **extra}
doc["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
print(json.dumps(doc))
"""

PROXY_CHILD = r"""
import json, resource, sys, time, torch
from pathlib import Path
from sharp_export.parity import harness
from sharp_export.parity.lpips import load_lpips
from sharp_export.parity.report import to_json
from sharp_export.parity.tolerances import PROFILES
from sharp_export.reference.checkpoint import build_model
from sharp_export.converters.coreml.fp16_proxy import fp16_proxy_outputs
weights, golden, mode, profile = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
model = build_model("sharp", weights).model.eval()
times = []
if mode == "none":
    def candidate(image, factor):
        t = time.perf_counter()
        with torch.no_grad():
            out = fp16_proxy_outputs(model, image, factor)
        times.append(time.perf_counter() - t)
        return out
else:
    from sharp_export.converters.coreml.weights import weight_plan, weights_proxy_outputs
    plan = weight_plan(mode)
    def candidate(image, factor):
        t = time.perf_counter()
        with torch.no_grad():
            out, _ = weights_proxy_outputs(model, image, factor, plan, "fp16")
        times.append(time.perf_counter() - t)
        return out
meta = {"target": "coreml", "precision": "fp16", "weights": mode, "tolerance_profile": profile,
        "proxy": "PROXY: torch forward with the Core ML fp16 plan" + ("" if mode == "none" else
                 " and the package's expanded weights") + "; Core ML itself runs only on macOS"}
report = harness.check_golden(golden, candidate, dict(PROFILES[profile]), load_lpips(None), meta)
doc = to_json(report)
doc["timing"] = {"proxy_forward_s": [round(t, 2) for t in times]}
doc["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
print(json.dumps(doc))
"""


def run_timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; stdout+stderr to ``log``; returns rc, seconds, peak RSS."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=handle, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "rc": rc,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(int(peak.group(1)) / 1e6, 2) if peak else None,
    }


def child_json(code: str, args: list[str], log: Path) -> tuple[dict | None, dict]:
    stats = run_timed([sys.executable, "-c", code, *args], log)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), stats


def summarize(report: dict) -> dict:
    """Per photo: p99 / max of each gated attribute metric, the worst view figures, pass/fail."""
    photos: dict[str, dict] = {}
    for a in report["attributes"]:
        photo, attribute = a["attribute"].split(":", 1)
        if a.get("tolerance") is None:
            continue
        entry = photos.setdefault(photo, {"attributes": {}, "views": {}})
        entry["attributes"][a["metric"]] = {
            "p99": a["p99"], "max": a["max"], "tolerance": a["tolerance"], "statistic": a["statistic"],
            "passed": a["passed"],
        }  # fmt: skip
    for v in report["views"]:
        photo = v["view"].split(":", 1)[0]
        entry = photos.setdefault(photo, {"attributes": {}, "views": {}})
        value = v.get("value")
        worst = entry["views"].setdefault(v["metric"], {"worst": value, "passed": True})
        if value is not None and worst["worst"] is not None:
            lower = v["metric"] in ("psnr_db", "ssim")
            worst["worst"] = min(worst["worst"], value) if lower else max(worst["worst"], value)
        worst["passed"] = worst["passed"] and v["passed"]
        worst["tolerance"] = v.get("tolerance")
    return photos


def save(rows: dict, weights: Path, weights_sha: str, golden: Path, name: str = NAME) -> Path:
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {**old.get("rows", {}), **rows}
    doc = {
        "benchmark": name,
        # The machine of the rows that carry no "machine" of their own (every row records its own since the
        # machines of this workplace changed CPU between sessions: Xeon with AMX, then AMD EPYC without).
        "machine": old.get("machine") or machine_info(),
        "what": "full preset, perturbed weights (benchmarks/make_perturbed_weights.py), every reduced-precision row "
        "exported with the CLI and checked against a golden bundle of coffee + chelsea (torch fp32, 4 views each) "
        "with the artifact's own tolerance rows; Core ML rows are torch proxies",
        "weights": {"path": str(weights), "sha256": weights_sha},
        "golden": str(golden),
        "rows": merged,
    }  # fmt: skip
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help="default: make_perturbed_weights' path")
    parser.add_argument("--rows", default=",".join([*ROWS, *PROXY_ROWS]))
    parser.add_argument("--workdir", type=Path, default=Path(".tmp-parity-full"))
    parser.add_argument("--keep", action="store_true", help="keep the artifacts")
    # One JSON per weights file: rows of other weights (e.g. --live-disparity) go under their own name.
    parser.add_argument("--name", default=NAME, help=f"results name (default {NAME})")
    args = parser.parse_args()
    from make_perturbed_weights import default_path

    from sharp_export.reference.hashing import sha256_file

    weights = args.weights or default_path("sharp")
    weights_sha = sha256_file(weights)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reports = RESULTS / args.name
    reports.mkdir(parents=True, exist_ok=True)
    cli = str(Path(sys.executable).with_name("sharp-export"))
    for row in args.rows.split(","):
        print(f"== {row}", flush=True)
        load_before = round(os.getloadavg()[0], 2)
        machine = machine_info()
        if row in PROXY_ROWS:
            mode, profile = PROXY_ROWS[row]
            doc, stats = child_json(PROXY_CHILD, [str(weights), str(args.golden), mode, profile],
                                    args.workdir / f"{row}.check.log")  # fmt: skip
            entry = {"export": {"command": "none: Core ML runs only on macOS; torch proxy", **stats}}
        else:
            target, options = ROWS[row]
            out = args.workdir / row
            command = [cli, target, "-c", str(weights), "-o", str(out), "--no-parity", "--force", *options]
            export = run_timed(command, args.workdir / f"{row}.export.log")
            entry = {"export": {"command": " ".join(["sharp-export", *command[1:]]), **export}}
            doc = None
            if export["rc"] == 0 and row != "tensorrt_bf16":
                doc, stats = child_json(CHECK_CHILD, [str(out), str(args.golden)], args.workdir / f"{row}.check.log")
                entry["check"] = {"command": f"sharp-export parity {out} --golden {args.golden}", **stats}
            manifest = out / "manifest.json"
            if manifest.exists():
                data = json.loads(manifest.read_text())
                entry["manifest_options"] = data.get("options")
                entry["conversion_summary"] = {
                    k: v for k, v in (data.get("conversion") or {}).items()
                    if k in ("excluded_modules", "quantized_nodes", "calibration_method", "size_vs_fp32",
                             "inference_precision_hint", "tensorrt_ready", "kept_fp32_regions")
                }  # fmt: skip
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        if doc is not None:
            (reports / f"{row}.json").write_text(json.dumps(doc, indent=1) + "\n")
            entry.update(passed=doc["passed"], failures=doc["failures"], timing=doc.get("timing"),
                         check_peak_rss_gb=doc.get("peak_rss_gb"), profile=doc["meta"].get("tolerance_profile"),
                         photos=summarize(doc))  # fmt: skip
        entry["load_average"] = {"before": load_before, "after": round(os.getloadavg()[0], 2)}
        entry["machine"] = machine
        print(json.dumps({row: {k: entry.get(k) for k in ("passed", "failures", "timing")}}), flush=True)
        print(f"saved {save({row: entry}, weights, weights_sha, args.golden, args.name)}", flush=True)


if __name__ == "__main__":
    main()
