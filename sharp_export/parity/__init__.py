"""Parity harness: compare a candidate's Gaussians and renders with the reference, gate on tolerances.

Typical use::

    tolerances = load_tolerances("onnx", "fp16", overrides=None)
    attributes = compare_gaussians(reference, candidate, tolerances, space="raw")
    ref_views = render_views(ref_unprojected, meta)
    cand_views = render_views(cand_unprojected, meta, trajectory_from=ref_unprojected)  # same cameras
    lpips = load_lpips()  # None -> an UNAVAILABLE line per view saying what to install
    views = compare_renders(ref_views, cand_views, lpips, tolerances)
    report = ParityReport(attributes, views, meta={"target": "onnx", "precision": "fp16"})
    print(format_table(report)); json.dump(to_json(report), f); raise_if_failed(report)
"""

from sharp_export.parity.compare import AttributeResult, compare_gaussians
from sharp_export.parity.lpips import LPIPS, load_lpips, lpips_status
from sharp_export.parity.metrics import depth_error, psnr, ssim
from sharp_export.parity.report import ParityReport, format_table, raise_if_failed, to_json
from sharp_export.parity.tolerances import TOLERANCES, Tolerance, load_tolerances
from sharp_export.parity.views import ViewResult, compare_renders, compare_views, render_views

__all__ = [
    "LPIPS",
    "TOLERANCES",
    "AttributeResult",
    "ParityReport",
    "Tolerance",
    "ViewResult",
    "compare_gaussians",
    "compare_renders",
    "compare_views",
    "depth_error",
    "format_table",
    "load_lpips",
    "load_tolerances",
    "lpips_status",
    "psnr",
    "raise_if_failed",
    "render_views",
    "ssim",
    "to_json",
]
