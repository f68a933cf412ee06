"""The report: one JSON-ready dict per run (schema SCHEMA), and the text / markdown tables made from it.

``machine_info`` records the machine (from ``sharp_export.env``) before the runs; ``build_report`` turns the
measured candidates into the report; ``format_text`` / ``format_markdown`` read only the report, so a saved
JSON can be rendered again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sharp_export.bench.candidates import Candidate
from sharp_export.bench.measuring import STAGES, Phase, Settings, Stats, memory_method, stability
from sharp_export.env import cpu_info, cuda_info, environment_report

SCHEMA = "sharp-export-bench/1"
SHORT = {"preprocess": "pre", "model": "model", "postprocess": "post", "ply_write": "ply", "render": "render"}
GB = 1e9


# ---- the machine ---------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    """Python, platform, CPU (``env.cpu_info``), CUDA device on cuda (``env.cuda_info``), package versions."""

    report = environment_report()
    return {
        "python": report["python"],
        "platform": report["platform"],
        "cpu": cpu_info(),
        "cuda": cuda_info() if device == "cuda" else None,
        "packages": report["packages"],
        "onnxruntime_providers": report.get("onnxruntime_providers"),
    }


# ---- the report ----------------------------------------------------------------------------------------------


def _stats_or_none(values: Sequence[float]) -> dict[str, Any] | None:
    return Stats.of(values).to_dict() if len(values) else None


def candidate_report(candidate: Candidate, settings: Settings) -> dict[str, Any]:
    stages = [s for s in STAGES if s != "render" or settings.render]
    model = [p["model"] for p in candidate.passes]
    total_timed = sum(p["total"] for p in candidate.passes)
    stable, reason = stability(model, total_timed, settings)
    throughput: dict[str, Any] = {}
    for size in settings.batches:
        result = candidate.batches.get(size)
        if result is None or result.skipped is not None or not result.latencies:
            throughput[str(size)] = {"skipped": result.skipped if result is not None else "not measured"}
            continue
        timed = sum(result.latencies)
        # Batch 1 reuses the pipeline passes, so it shares their verdict (min-time counts whole passes).
        ok, why = (stable, reason) if size == 1 else stability(result.latencies, timed, settings)
        throughput[str(size)] = {
            "images_per_s": size * len(result.latencies) / timed,
            "latency_s": Stats.of(result.latencies).to_dict(),
            "stable": ok,
            "stability": why,
            "rss_run_peak_gb": max(result.rss_peaks) / GB if result.rss_peaks else None,
        }
    run_peak = max(candidate.pass_rss_peaks) if candidate.pass_rss_peaks else 0
    return {
        "name": candidate.name,
        "label": candidate.label,
        "kind": candidate.kind,
        "target": candidate.target,
        "precision": candidate.precision,
        "preset": candidate.preset,
        "resolution": candidate.resolution,
        "batch": "any" if candidate.fixed_batch is None else candidate.fixed_batch,
        "runner": type(candidate.runner).__name__,
        "runner_threads": getattr(candidate.runner, "intra_op_threads", None) or torch.get_num_threads(),
        "manifest_sha256": candidate.manifest_sha256,
        "weights": candidate.source,
        "parity": candidate.parity_status,
        "check": candidate.check,
        "n_runs": len(candidate.passes),
        "stable": stable,
        "stability": reason,
        "stages_s": {stage: _stats_or_none([p[stage] for p in candidate.passes]) for stage in stages + ["total"]},
        "throughput": throughput,
        "memory": {
            "rss_open_gb": candidate.rss_open_bytes / GB,
            "rss_run_peak_gb": run_peak / GB,
            "rss_peak_estimate_gb": (candidate.rss_open_bytes + run_peak) / GB,
            "cuda_max_allocated_gb": max(candidate.cuda_peaks) / GB if candidate.cuda_peaks else None,
        },
        "runs_s": {stage: [round(p[stage], 6) for p in candidate.passes] for stage in stages + ["total"]},
    }


def passing(row: dict[str, Any]) -> bool:
    """An artifact row that passed parity: the --check result when there is one, else its manifest's."""
    if row["kind"] != "artifact":
        return False
    if row.get("check"):
        return row["check"].get("status") == "passed"
    return row["parity"] == "passed"


def build_report(
    candidates: Sequence[Candidate],
    settings: Settings,
    phases: dict[str, Phase],
    images: Sequence[Path],
    machine: dict[str, Any],
    command: str,
) -> dict[str, Any]:
    rows = [candidate_report(c, settings) for c in candidates]
    first = rows[0]["stages_s"]
    for row in rows:
        for stage in ("model", "total"):
            base, mine = first[stage], row["stages_s"][stage]
            row[f"ratio_{stage}_p50"] = mine["p50"] / base["p50"] if base and mine and base["p50"] else None
    winners = [row for row in rows if passing(row)]
    fastest = min(winners, key=lambda row: row["stages_s"]["model"]["p50"])["name"] if winners else None

    machine = {**machine, "cpu": {**machine["cpu"], "loadavg_end": cpu_info()["loadavg"]}}
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings.to_dict(),
        "images": [str(p) for p in images],
        "machine": machine,
        "memory_method": {
            "vmhwm-reset": "per pass: /proc/self/clear_refs resets the process peak RSS (VmHWM); peak - RSS at start",
            "sampled": "per pass: RSS sampled every 2 ms; highest sample - RSS at start (may miss short peaks)",
        }[memory_method()]
        + "; rss_open_gb is the RSS growth while opening the candidate (weights, sessions); cuda_max_allocated_gb "
        "is torch's allocator only (ONNX Runtime and TensorRT allocate outside it)",
        "timing": "host clock around each stage; the device is synchronised before and after the model call; "
        "model time includes host<->device copies; ratios are p50 / the first candidate's p50",
        "phases": {name: phase.to_dict() for name, phase in phases.items()},
        "ratio_base": rows[0]["name"],
        "fastest_passing_artifact": fastest,
        "candidates": rows,
    }


# ---- text and markdown output --------------------------------------------------------------------------------


def _sec(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _parity_cell(row: dict[str, Any]) -> str:
    text = "-" if row["kind"] == "reference" else row["parity"]
    if row.get("check"):
        text += f" / check {row['check']['status']}"
    return text


def table_rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """(latency rows, throughput + memory rows), header first, as plain strings."""
    render = report["settings"]["render"]
    stage_names = [s for s in STAGES if s != "render" or render]
    head = ["candidate", "target", "precision", "parity", "n", "model p50", "p90", "p99", "mean", "std", "cv"]
    head += ["x first"] + [SHORT[s] for s in stage_names if s != "model"] + ["total", "status"]
    latency = [head]
    batches = report["settings"]["batches"]
    memory = [["candidate"] + [f"img/s b={b}" for b in batches] + ["RSS open GB", "RSS run GB", "CUDA GB"]]
    fastest = report["fastest_passing_artifact"]
    for row in report["candidates"]:
        stages = row["stages_s"]
        model = stages["model"]
        ratio = row["ratio_model_p50"]
        name = row["label"] + (" *" if row["name"] == fastest else "")
        latency.append(
            [name, row["target"], row["precision"], _parity_cell(row), str(row["n_runs"]), _sec(model["p50"]),
             _sec(model["p90"]), _sec(model["p99"]), _sec(model["mean"]), _sec(model["std"]),
             "-" if model["cv"] is None else f"{model['cv']:.3f}", "-" if ratio is None else f"{ratio:.2f}"]
            + [_sec(stages[s]["p50"]) for s in stage_names if s != "model"]
            + [_sec(stages["total"]["p50"]), "stable" if row["stable"] else "UNSTABLE"]
        )  # fmt: skip
        cells = [row["label"]]
        for b in batches:
            entry = row["throughput"][str(b)]
            if "skipped" in entry:
                cells.append(f"skip: {entry['skipped']}")
            else:
                cells.append(f"{entry['images_per_s']:.3g}" + ("" if entry["stable"] else " (unstable)"))
        mem = row["memory"]
        cuda = mem["cuda_max_allocated_gb"]
        cells += [f"{mem['rss_open_gb']:.3f}", f"{mem['rss_run_peak_gb']:.3f}", "-" if cuda is None else f"{cuda:.3f}"]
        memory.append(cells)
    return latency, memory


def _plain(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _machine_line(report: dict[str, Any]) -> str:
    machine = report["machine"]
    cpu = machine["cpu"]
    text = (
        f"{report['settings']['device']}; CPU {cpu['model']}, {cpu['cores_available']} cores, torch threads "
        f"{cpu['torch_threads']}, load {', '.join(f'{x:.2f}' for x in cpu['loadavg'] or [])}"
    )
    if machine.get("cuda"):
        cuda = machine["cuda"]
        text += f"; GPU {cuda['device_name']} (driver {cuda['driver']}, CUDA {cuda['cuda_runtime']})"
    return text


def _notes(report: dict[str, Any]) -> list[str]:
    notes = [
        "seconds, batch 1; model p90/p99/mean/std/cv over n timed passes; the stage columns (pre = load + "
        "preprocess, post = unprojection, ply = PLY write, render = one torch view) and total are p50s",
        "'x first' = model p50 / the first candidate's; parity = the manifest's status"
        + (" / --check on these images" if report["settings"]["check"] else ""),
    ]
    fastest = report["fastest_passing_artifact"]
    if fastest:
        row = next(r for r in report["candidates"] if r["name"] == fastest)
        notes.append(
            f"* fastest passing artifact: {row['label']} (model p50 {_sec(row['stages_s']['model']['p50'])} s)"
        )
    else:
        notes.append(
            "no artifact has a passing parity status" + ("" if report["settings"]["check"] else " (try --check)")
        )
    for row in report["candidates"]:
        if not row["stable"]:
            notes.append(f"UNSTABLE {row['label']}: {row['stability']} when the cap stopped the runs")
    return notes


def format_text(report: dict[str, Any]) -> str:
    latency, memory = table_rows(report)
    return "\n".join(
        [f"machine: {_machine_line(report)}", "", _plain(latency), "", _plain(memory), ""] + _notes(report)
    )


def format_markdown(report: dict[str, Any]) -> str:
    latency, memory = table_rows(report)
    parts = [
        "# sharp-export bench",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {_machine_line(report)}",
        f"- images: {', '.join(Path(p).name for p in report['images'])}",
        f"- created: {report['created']}",
        "",
        "## Latency per stage (batch 1, photo -> PLY)",
        "",
        _markdown(latency),
        "",
        "## Throughput and memory",
        "",
        _markdown(memory),
        "",
    ]
    parts += [f"- {note}" for note in _notes(report)]
    return "\n".join(parts) + "\n"
