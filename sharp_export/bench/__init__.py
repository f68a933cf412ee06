"""`sharp-export bench`: latency of every artifact and the eager reference, measured side by side.

Step one of splitting the former ``sharp_export/bench.py`` into a package: the module moved unchanged to
``sharp_export.bench.measuring``; the names the command and the tests use are re-exported here.
"""

from sharp_export.bench.measuring import (
    REFERENCE,
    SCHEMA,
    STAGES,
    ModelChoice,
    Settings,
    Stats,
    build_report,
    check_candidates,
    format_markdown,
    format_text,
    machine_info,
    measure,
    memory_method,
    open_candidates,
    parse_batches,
    plot_available,
    require_plot,
    track_rss_peak,
    write_plot,
)

__all__ = [
    "REFERENCE",
    "SCHEMA",
    "STAGES",
    "ModelChoice",
    "Settings",
    "Stats",
    "build_report",
    "check_candidates",
    "format_markdown",
    "format_text",
    "machine_info",
    "measure",
    "memory_method",
    "open_candidates",
    "parse_batches",
    "plot_available",
    "require_plot",
    "track_rss_peak",
    "write_plot",
]
