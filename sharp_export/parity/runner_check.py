"""The export's parity check of an artifact that runs here: its runner against the torch reference, gated.

``sharp_export.export.default_parity_hook`` runs the fresh artifact through its own runner with this; a target's
``parity_hook`` may run another runner (tensorrt-rtx off a GPU: the exact ONNX its engine was built from, in ONNX
Runtime) and label what it ran. Converters may import this module (it does not import the registry).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sharp_export.artifact import PARITY_NAME
from sharp_export.parity.compare import compare_gaussians
from sharp_export.parity.report import ParityReport, format_table, to_json
from sharp_export.parity.tolerances import profile_tolerances
from sharp_export.progress import echo
from sharp_export.reference.gaussians import find_non_finite

if TYPE_CHECKING:
    from sharp_export.contract import ParityContext
    from sharp_export.runtime.base import Runner


def check_with_runner(ctx: ParityContext, runner: Runner, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``runner`` (not yet opened) on the export's example input, gate it with ``ctx.tolerance_profile``, write
    ``parity.json`` into the artifact and return the manifest's parity summary. ``meta`` is added to the report's
    metadata (e.g. a label saying what ran, when it is not the artifact's main file)."""
    tolerances = profile_tolerances(ctx.tolerance_profile)
    with runner:
        candidate = runner.infer(ctx.example.image.numpy(), ctx.example.disparity_factor.numpy())
        seconds = runner.last_inference_time_s
    results = compare_gaussians(ctx.reference, candidate, tolerances, space="raw")
    report_meta = {
        "target": ctx.target.name,
        "precision": ctx.manifest.precision,
        "tolerance_profile": ctx.tolerance_profile,
        "batch": ctx.example.batch,
        "device": ctx.device,
        "input": "golden pattern (export example input)",
        "runner_seconds": seconds,
        **(meta or {}),
    }
    report = ParityReport(results, [], report_meta)
    echo(format_table(report))
    document = to_json(report)
    summary = {
        "status": "passed" if report.passed else "failed",
        "failures": document["failures"],
        "details": PARITY_NAME,
        "batch": ctx.example.batch,
    }
    # Non-finite outputs fail the rows above already; they are named first, in the manifest and the error line, so
    # that no one ships such an artifact unawares (it is kept, marked failed, like any artifact that fails parity).
    problem = find_non_finite(candidate)
    if problem is not None:
        line = f"non-finite outputs: {problem.describe()} on the golden pattern"
        echo(f"    the artifact produced {problem.describe()}")
        summary = {
            **summary,
            "status": "failed",
            "failures": [line, *summary["failures"]],
            "non_finite": asdict(problem),
        }
        document = {**document, "non_finite": asdict(problem)}
    (ctx.artifact_dir / PARITY_NAME).write_text(json.dumps(document, indent=2) + "\n")
    return summary
