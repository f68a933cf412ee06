"""Latency of every artifact (and the eager reference) on the hardware at hand, measured side by side.

Every candidate is opened once in this process and timed interleaved: each round runs one timed pass of
every candidate in turn, so a burst of machine noise lands on all of them rather than on whichever
happened to run at that moment. A pass is the whole photo -> PLY path, timed per stage:

    preprocess   load_image + prepare_input (decode, resize to R x R, disparity factor)
    model        runner.infer: host arrays in, host Gaussians out (device copies included)
    postprocess  unproject_gaussians (NDC x z -> metric camera space)
    ply_write    save_ply, official format, fsync'd to a temporary file
    render       one torch-renderer view, the first pose of rotate_forward (only with render=True)

Rounds continue until every candidate has at least ``min_time_s`` of timed passes and a model-latency
coefficient of variation at or below ``max_cv``, or a hard cap (``max_runs`` rounds, ``max_time_s`` per
phase) is hit; a candidate that did not meet the bound is reported "unstable", never silently averaged.
Memory is measured per pass: on Linux the process's peak-RSS counter (VmHWM) is reset before each pass
through /proc/self/clear_refs, so each candidate's peak is its own even though all share one process.

The modules, each importing only those above it:

    candidates   Candidate, ModelChoice, open_candidates: the reference and artifacts, validated, then opened
    measuring    Settings, Stats, the per-pass memory peak, the timed rounds and their stability (measure)
    check        check_candidates: the parity column, through sharp_export.parity.harness
    report       machine_info, build_report (the JSON, SCHEMA), format_text / format_markdown
    plot         write_plot (matplotlib, imported only when drawing)

Machine facts come from ``sharp_export.env`` (``cpu_info``, ``cuda_info``), RSS readings from
``sharp_export.progress``.
"""

from sharp_export.bench.candidates import REFERENCE, Candidate, ModelChoice, open_candidates
from sharp_export.bench.check import check_candidates
from sharp_export.bench.measuring import (
    STAGES,
    Phase,
    Settings,
    Stats,
    measure,
    memory_method,
    parse_batches,
    stability,
    track_rss_peak,
)
from sharp_export.bench.plot import plot_available, require_plot, write_plot
from sharp_export.bench.report import SCHEMA, build_report, format_markdown, format_text, machine_info

__all__ = [
    "REFERENCE",
    "SCHEMA",
    "STAGES",
    "Candidate",
    "ModelChoice",
    "Phase",
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
    "stability",
    "track_rss_peak",
    "write_plot",
]
