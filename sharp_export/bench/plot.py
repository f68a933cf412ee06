"""The PNG of a bench report (``--plot``), drawn by sharp_export.plots (matplotlib, imported only when drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sharp_export import plots
from sharp_export.bench.measuring import STAGES

plot_available = plots.plot_available


def require_plot() -> None:
    plots.require_plot("--plot")


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """PNG: stacked p50 stage bars per candidate (left) and the model latency distribution (right)."""
    return plots.write_bench_plot(report, path, STAGES)
