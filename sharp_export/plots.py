"""Every picture sharp-export draws, with matplotlib (optional: the ``bench`` extra), imported only when drawing.

* ``write_bench_plot``: `bench --plot`, stacked stage bars and the model latency distribution;
* ``write_view_comparison``: one view of `parity --report-dir`, reference | artifact | amplified difference.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sharp_export.errors import MissingDependencyError


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def require_plot(purpose: str) -> None:
    """One line naming the extra when matplotlib is missing (checked before minutes of work)."""
    if not plot_available():
        raise MissingDependencyError("matplotlib", "bench", purpose)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def write_bench_plot(report: dict[str, Any], path: Path, stages: Sequence[str]) -> Path:
    """PNG: stacked p50 stage bars per candidate (left) and the model latency distribution (right)."""
    require_plot("--plot")
    rows = report["candidates"]
    labels = [row["label"] for row in rows]
    stage_names = [s for s in stages if s != "render" or report["settings"]["render"]]
    figure = _figure(12, 1.6 + 0.6 * len(rows))
    bars, spread = figure.subplots(1, 2, width_ratios=[3, 2])
    left = np.zeros(len(rows))
    for stage in stage_names:
        widths = np.array([row["stages_s"][stage]["p50"] for row in rows])
        bars.barh(labels, widths, left=left, label=stage)
        left += widths
    bars.invert_yaxis()
    bars.set_xlabel("seconds (p50 per stage, batch 1)")
    bars.set_title("photo -> PLY, stacked stages")
    bars.legend(loc="lower right", fontsize="small")
    for index, row in enumerate(rows):
        values = np.asarray(row["runs_s"]["model"])
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        spread.scatter(values, index + jitter, s=10, alpha=0.6, color="tab:blue")
        model = row["stages_s"]["model"]
        for key, marker in (("p50", "|"), ("p90", "4"), ("p99", "x")):
            spread.scatter(
                [model[key]], [index], marker=marker, s=160, color="black", label=key if index == 0 else None
            )
    spread.set_yticks(range(len(rows)), labels)
    spread.legend(loc="lower right", fontsize="small")
    spread.invert_yaxis()
    spread.set_xlabel("seconds")
    spread.set_title(f"model latency, {report['settings']['device']} (n per candidate: {rows[0]['n_runs']})")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def difference_scale(difference: np.ndarray) -> float:  # difference [H, W] >= 0
    """The colour bar's top: the largest difference, at least 1/255 (one 8-bit step) so that a tiny or zero
    difference is not blown up into noise."""
    finite = difference[np.isfinite(difference)]
    return max(float(finite.max()) if finite.size else 0.0, 1.0 / 255.0)


def write_view_comparison(
    reference: np.ndarray,  # [H, W, 3] sRGB in [0, 1]
    candidate: np.ndarray,  # [H, W, 3]
    difference: np.ndarray,  # [H, W] per-pixel max over channels of |reference - candidate|
    path: Path,
    title: str,
) -> Path:
    """PNG: reference | artifact | |difference| amplified to the colour bar's range (0 .. its largest value)."""
    require_plot("parity --report-dir")
    height, width = reference.shape[:2]
    figure = _figure(3 * 3.4 + 0.8, 3.4 * height / width + 0.7)
    panels = figure.subplots(1, 3)
    for axis, image, label in ((panels[0], reference, "reference"), (panels[1], candidate, "artifact")):
        axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
        axis.set_title(label, fontsize="medium")
    top = difference_scale(difference)
    difference = np.nan_to_num(difference, nan=top, posinf=top)  # NaN/Inf candidates: shown at the top
    shown = panels[2].imshow(difference, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
    panels[2].set_title(f"|difference| x{1.0 / top:.3g}", fontsize="medium")
    bar = figure.colorbar(shown, ax=panels[2], fraction=0.046, pad=0.02)
    bar.set_label("absolute difference (sRGB, 0..1)", fontsize="small")
    for axis in panels:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
