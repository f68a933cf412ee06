"""Photo -> PLY as a whole process: `sharp-export run ARTIFACT PHOTO -o OUT`, timed from the shell's point of view.

    python benchmarks/bench_run_process.py ARTIFACT [--photo coffee] [--runs 3] [--name run_process_full]

Each run is a fresh process (imports, opening the artifact, the model, unprojection, PLY write), its wall time and
the peak resident memory of its process tree measured from outside (``bench_export_memory.tree_rss_bytes``). An
OpenVINO artifact's compiled-model cache gets its own empty folder first, so run 1 compiles (and writes the cache)
and runs 2.. import it, as a user's first and later runs do. The command's own timing lines are kept.

The ml-sharp figure quoted beside it in docs/benchmarks.md (111.6 s, 7.2 GB, same photo, perturbed full weights,
this machine) was measured by the issue's author; ml-sharp is not installed here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_memory import tree_rss_bytes  # noqa: E402
from common import machine_info, save  # noqa: E402


def one_run(command: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    peak = 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.1):
            peak = max(peak, tree_rss_bytes(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    return {
        "exit_code": process.returncode,
        "wall_s": round(time.perf_counter() - start, 2),
        "tree_peak_rss_gb": round(peak / 1e9, 2),
        "output": [line for line in output.splitlines() if line.strip()][-8:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--photo", default="coffee", help="a bundled sample name or an image path")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="run_process_full")
    args = parser.parse_args()
    from sharp_export.samples import SAMPLE_FILES, sample_image_path

    photo = sample_image_path(args.photo) if args.photo in SAMPLE_FILES else Path(args.photo)
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    env = dict(os.environ)
    cache = Path(tempfile.mkdtemp(prefix="ov-cache-"))
    env["SHARP_EXPORT_OPENVINO_CACHE"] = str(cache)
    runs = []
    for number in range(1, args.runs + 1):
        out = Path(tempfile.mkdtemp(prefix="run-out-"))
        command = ["sharp-export", "run", str(args.artifact), str(photo), "-o", str(out), "--force"]
        print(f"run {number}: $ {' '.join(command)}", flush=True)
        row = one_run(command, env)
        row["ply_bytes"] = sum(p.stat().st_size for p in out.rglob("*.ply"))
        print(json.dumps({k: v for k, v in row.items() if k != "output"}), flush=True)
        runs.append(row)
    save(
        args.name,
        {
            "what": "sharp-export run ARTIFACT PHOTO -o OUT, one fresh process per run (photo -> PLY, wall time and "
            "peak RSS of the process tree); run 1 compiles the OpenVINO model into an empty cache, later runs import",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "artifact": {
                "target": manifest["target"],
                "precision": manifest["precision"],
                "options": manifest["options"],
                "weights": manifest["source"].get("label"),
            },  # fmt: skip
            "photo": photo.name,
            "runs": runs,
            "machine_detail": machine_info(),
        },
    )


if __name__ == "__main__":
    main()
