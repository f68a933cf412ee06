"""The export's parity check of an artifact that runs here: its runner against the torch reference, gated.

``sharp_export.export.default_parity_hook`` runs the fresh artifact through its own runner with this; a target's
``parity_hook`` may run another runner (tensorrt-rtx off a GPU: the exact ONNX its engine was built from, in ONNX
Runtime) and label what it ran. Converters may import this module (it does not import the registry).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sharp_export.parity.compare import compare_gaussians
from sharp_export.parity.report import ParityReport, format_table, to_json
from sharp_export.parity.tolerances import profile_tolerances
from sharp_export.progress import echo

if TYPE_CHECKING:
    from sharp_export.contract import ParityContext
    from sharp_export.runtime.base import Runner

PARITY_NAME = "parity.json"


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
    (ctx.artifact_dir / PARITY_NAME).write_text(json.dumps(document, indent=2) + "\n")
    return {
        "status": "passed" if report.passed else "failed",
        "failures": document["failures"],
        "details": PARITY_NAME,
        "batch": ctx.example.batch,
    }
