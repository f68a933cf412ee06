"""Parity harness: compare a candidate's Gaussians and renders with the reference, gate on tolerances.

Typical use::

    tolerances = profile_tolerances("fp16-onnx", overrides=None)  # registry.load_tolerances("onnx", "fp16")
    attributes = compare_gaussians(reference, candidate, tolerances, space="raw")
    ref_views = render_views(ref_unprojected, meta)
    cand_views = render_views(cand_unprojected, meta, trajectory_from=ref_unprojected)  # same cameras
    lpips = load_lpips()  # None -> an UNAVAILABLE line per view saying what to install
    views = compare_renders(ref_views, cand_views, lpips, tolerances)
    report = ParityReport(attributes, views, meta={"target": "onnx", "precision": "fp16"})
    print(format_table(report)); json.dump(to_json(report), f); raise_if_failed(report)
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported name -> submodule. Imported on first use, so that `sharp_export.parity.tolerances` (plain data,
# read by the target registry) can be imported without torch.
_EXPORTS = {
    "AttributeResult": "compare",
    "compare_gaussians": "compare",
    "LPIPS": "lpips",
    "load_lpips": "lpips",
    "lpips_status": "lpips",
    "depth_error": "metrics",
    "psnr": "metrics",
    "ssim": "metrics",
    "ParityReport": "report",
    "format_table": "report",
    "raise_if_failed": "report",
    "to_json": "report",
    "PROFILES": "tolerances",
    "Tolerance": "tolerances",
    "profile_tolerances": "tolerances",
    "ViewResult": "views",
    "compare_renders": "views",
    "compare_views": "views",
    "render_views": "views",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
