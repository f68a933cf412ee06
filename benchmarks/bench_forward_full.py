"""Full-size (sharp preset, 1536x1536) CPU forward: time and peak RSS, in a fresh process.

    python benchmarks/bench_forward_full.py [--precision fp32|bf16] [--channels-last]

Reference (docs/architecture.md §9.1, official code, same 2-core machine): 155.4 s, peak RSS 6.86 GB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, save  # noqa: E402

CHILD = """
import json, resource, time, torch
from sharp_export.reference.checkpoint import build_model, autocast_context
t0 = time.perf_counter()
loaded = build_model("sharp", seed=0, precision="{precision}")
build_s = time.perf_counter() - t0
rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
image = torch.rand(1, 3, 1536, 1536, generator=torch.Generator().manual_seed(0))
if {channels_last}:  # what TorchRunner does on the CPU
    loaded.model.to(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last)
t0 = time.perf_counter()
with torch.no_grad(), autocast_context(loaded, torch.device("cpu")):
    out = loaded.model(image, torch.tensor([0.8]))
forward_s = time.perf_counter() - t0
finite = all(bool(torch.isfinite(t).all()) for t in out)
print(json.dumps(dict(build_s=build_s, forward_s=forward_s, peak_rss_gb_after_build=rss_build,
    peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, outputs_finite=finite,
    num_gaussians=out.mean_vectors.shape[1])))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and input")
    args = parser.parse_args()
    result = run_child(CHILD.format(precision=args.precision, channels_last=args.channels_last))
    import os

    save(
        f"forward_full_{args.precision}" + ("_channels_last" if args.channels_last else ""),
        {
            "what": "sharp preset, seeded weights, batch 1, 1536x1536, torch eager CPU",
            "precision": args.precision,
            "channels_last": args.channels_last,
            "load_average_1min_after": round(os.getloadavg()[0], 2),
            **result,
            "official_reference": {"forward_s": 155.4, "peak_rss_gb": 6.86, "source": "docs/architecture.md §9.1"},
        },
    )


if __name__ == "__main__":
    main()
