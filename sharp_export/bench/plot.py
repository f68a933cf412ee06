"""The PNG of a bench report (``--plot``): stacked stage bars and the model latency distribution.

matplotlib is optional (the ``bench`` extra) and imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sharp_export.bench.measuring import STAGES
from sharp_export.errors import MissingDependencyError


def plot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def require_plot() -> None:
    if not plot_available():
        raise MissingDependencyError("matplotlib", "bench", "--plot")


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """PNG: stacked p50 stage bars per candidate (left) and the model latency distribution (right)."""
    require_plot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["candidates"]
    labels = [row["label"] for row in rows]
    stage_names = [s for s in STAGES if s != "render" or report["settings"]["render"]]
    figure = Figure(figsize=(12, 1.6 + 0.6 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
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
