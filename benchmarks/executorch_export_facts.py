"""What ExecuTorch exports recorded about themselves, gathered into one JSON: per program the file sizes, the XNNPACK
delegates and the ops left to portable kernels, and per export the stage times and the peak RSS of the export
process (the manifest's ``peak_rss_gb``; ``/usr/bin/time -v`` of the same command gives the same figure).

    python benchmarks/executorch_export_facts.py ARTIFACT... --name executorch_full_exports
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import save


def facts(artifact: Path) -> dict:
    from sharp_export.artifact import read_manifest

    manifest = read_manifest(artifact)
    conversion = manifest.conversion
    programs = [
        {
            key: program[key]
            for key in (
                "name",
                "bytes",
                "xnnpack_delegates",
                "not_delegated",
                "rewrites",
                "export_seconds",
                "lower_seconds",
                "write_seconds",
            )
        }  # fmt: skip
        for program in conversion["programs"]
    ]
    return {
        "artifact": str(artifact),
        "preset": manifest.source["preset"],
        "weights": manifest.source["label"],
        "precision": manifest.precision,
        "split": conversion["split"],
        "total_bytes": sum(sum(p["bytes"].values()) for p in programs),
        "xnnpack_delegates": conversion["xnnpack_delegates"],
        "not_delegated": conversion["not_delegated"],
        "int8": {k: v for k, v in conversion.get("int8", {}).items() if k != "calibration"} or None,
        "stage_seconds": conversion["stage_seconds"],
        "export_peak_rss_gb": conversion["peak_rss_gb"],
        "programs": programs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    save(args.name, {"exports": [facts(a) for a in args.artifacts]})


if __name__ == "__main__":
    main()
