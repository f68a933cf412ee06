"""Opening an OpenVINO artifact with and without the runner's compiled-model cache, each open a fresh process.

    python benchmarks/bench_openvino_cache.py ARTIFACT [--name openvino_compile_cache_full]

Modes, in this order, each in its own process: ``off`` ($SHARP_EXPORT_OPENVINO_CACHE=off: read + compile), then
``first`` (an empty cache folder: compile and write the blob), then ``cached`` twice (import the blob). Recorded per
open: seconds to open (``Runner.open``), the first inference on the golden pattern, the peak RSS, the cache state the
runner reports and a checksum of the outputs (the imported model must give the same numbers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

CHILD = """
import json, os, resource, time
import numpy as np
from sharp_export.registry import open_runner
from sharp_export.samples import example_inputs
runner = open_runner({artifact!r})
start = time.perf_counter()
runner.open()
opened = time.perf_counter() - start
example = example_inputs(int(runner.io.inputs[0].shape[-1]), 1)
start = time.perf_counter()
out = runner.infer(example.image, example.disparity_factor)
infer = time.perf_counter() - start
print(json.dumps(dict(cache_state=runner.cache_state, open_s=round(opened, 2), first_infer_s=round(infer, 2),
    peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    checksum=float(sum(np.asarray(t, dtype=np.float64).sum() for t in out)))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--name", default="openvino_compile_cache_full")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="ov-cache-"))
    rows = []
    for mode in ("off", "first", "cached", "cached"):
        env_value = "off" if mode == "off" else str(cache)
        code = f"import os; os.environ['SHARP_EXPORT_OPENVINO_CACHE'] = {env_value!r}\n" + CHILD.format(
            artifact=str(args.artifact.resolve())
        )
        result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        row = {"mode": mode, **json.loads(result.stdout.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    save(
        args.name,
        {
            "what": "OpenVINORunner.open with the compiled-model cache off, empty (compile + write) and filled "
            "(import), each a fresh process; first inference on the golden pattern",
            "artifact": {
                "target": manifest["target"],
                "precision": manifest["precision"],
                "options": manifest["options"],
                "preset": manifest["source"].get("preset"),
            },  # fmt: skip
            "cache_bytes": sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
