"""`sharp-export bench`: latency of every artifact and the eager reference on this machine, side by side.

The measuring lives in the package ``sharp_export.bench``; this module parses and validates flags, then writes the
terminal table (stdout), and the JSON / markdown / PNG files asked for. Progress goes to stderr.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import model_options
from sharp_export.errors import UserInputError
from sharp_export.progress import echo


class BatchList(click.ParamType):
    """'1,2,4' -> (1, 2, 4); anything else is a one-line usage error."""

    name = "1,2,4"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        from sharp_export.bench import parse_batches

        try:
            return parse_batches(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _command_line(candidates: tuple[str, ...], params: dict[str, Any]) -> str:
    """The canonical command for this run, every option explicit (what the JSON records)."""
    argv = ["sharp-export", "bench", *candidates]
    if params["images"]:
        for path in params["images"]:
            argv += ["--images", str(path)]
    else:
        argv += ["--sample", params["sample"]]
    argv += ["--device", params["device"], "--batch", ",".join(str(b) for b in params["batches"])]
    argv += ["--warmup", str(params["warmup"]), "--min-time", f"{params['min_time']:g}"]
    argv += ["--max-cv", f"{params['max_cv']:g}", "--max-runs", str(params["max_runs"])]
    argv += ["--max-time", f"{params['max_time']:g}"]
    if "reference" in candidates or params["check"]:
        argv += ["--preset", params["preset"]]
        if params["checkpoint"] is not None:
            argv += ["-c", str(params["checkpoint"])]
        if params["seed"] is not None:
            argv += ["--seed", str(params["seed"])]
        argv += ["--precision", params["precision"]]
    if params["render"]:
        argv.append("--render")
    if params["check"]:
        argv += ["--check", "--poses", str(params["poses"])]
    for flag in ("json", "markdown", "plot"):
        if params[flag] is not None:
            argv += [f"--{flag}", str(params[flag])]
    return shlex.join(argv)


@click.command("bench", cls=OneLineCommand)
@click.argument("candidates", nargs=-1, required=True, metavar="CANDIDATE...")
@click.option(
    "--images", multiple=True, type=click.Path(path_type=Path), help="Image files or folders (default: --sample)."
)
@click.option("--sample", type=str, default=None, help="A bundled sample photo, e.g. coffee (the default).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default="cpu", show_default=True)
@click.option(
    "--batch",
    "batches",
    type=BatchList(),
    default="1",
    show_default=True,
    help="Batch sizes for the throughput table; a fixed-batch artifact skips the others.",
)
@click.option("--warmup", type=click.IntRange(0, 1000), default=1, show_default=True, help="Untimed runs first.")
@click.option(
    "--min-time",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds of timed runs each candidate needs before it may stop.",
)
@click.option(
    "--max-cv",
    type=click.FloatRange(min=0, min_open=True),
    default=0.05,
    show_default=True,
    help="Stable when the model latency's std / mean is at most this.",
)
@click.option(
    "--max-runs", type=click.IntRange(1, 100000), default=30, show_default=True, help="Hard cap: rounds per phase."
)
@click.option(
    "--max-time",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Hard cap: wall seconds per phase (checked after each round).",
)
@model_options
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="The reference's precision (bf16 = autocast; --check always compares with fp32).",
)
@click.option("--render", is_flag=True, help="Also time one torch-renderer view per pass.")
@click.option("--check", is_flag=True, help="Re-run parity of every artifact against the reference on these images.")
@click.option(
    "--poses", type=click.IntRange(0, 4), default=4, show_default=True, help="Rendered views per image for --check."
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the full report.")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path), default=None, help="Write markdown.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write a PNG (matplotlib).")
def command(
    candidates: tuple[str, ...],
    images: tuple[Path, ...],
    sample: str | None,
    device: str,
    batches: tuple[int, ...],
    warmup: int,
    min_time: float,
    max_cv: float,
    max_runs: int,
    max_time: float,
    preset: str,
    checkpoint: str | None,
    seed: int | None,
    precision: str,
    render: bool,
    check: bool,
    poses: int,
    json_path: Path | None,
    markdown_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Time each CANDIDATE (an artifact directory, or the word `reference`) on this machine, side by side.

    Candidates run interleaved, one timed photo -> PLY pass of each in turn, until each has --min-time
    seconds of runs and a model-latency CV of at most --max-cv, or --max-runs / --max-time is reached
    (then it is reported UNSTABLE). Ratios are against the first candidate.
    """
    from sharp_export import bench  # torch: imported when the command runs, never for --help
    from sharp_export.reference.preprocess import list_images
    from sharp_export.samples import DEFAULT_SAMPLE, sample_image_path

    if images and sample is not None:
        raise UserInputError("give --images or --sample, not both")
    if plot_path is not None:
        bench.require_plot()  # before minutes of measuring, not after
    paths = list_images(list(images)) if images else [sample_image_path(sample or DEFAULT_SAMPLE)]
    settings = bench.Settings(
        device=device,
        batches=batches,
        warmup=warmup,
        min_time_s=min_time,
        max_cv=max_cv,
        max_runs=max_runs,
        max_time_s=max_time,
        render=render,
        check=check,
    )
    source = click.get_current_context().get_parameter_source("preset")
    choice = bench.ModelChoice(
        preset=preset,
        checkpoint=checkpoint,
        seed=seed,
        precision=precision,
        preset_given=source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"),
    )
    params = {
        "images": images, "sample": sample or DEFAULT_SAMPLE, "device": device, "batches": batches,
        "warmup": warmup, "min_time": min_time, "max_cv": max_cv, "max_runs": max_runs, "max_time": max_time,
        "preset": preset, "checkpoint": checkpoint, "seed": seed, "precision": precision, "render": render,
        "check": check, "poses": poses, "json": json_path, "markdown": markdown_path, "plot": plot_path,
    }  # fmt: skip
    machine = bench.machine_info(device)  # load average before our own load
    opened, reference = bench.open_candidates(candidates, choice, device, check=check)
    try:
        # Record what was actually used: a preset or weights taken from the artifacts' manifests.
        params["preset"] = opened[0].preset or preset
        if reference is not None:
            params["checkpoint"], params["seed"] = reference.checkpoint_path, reference.seed
        phases = bench.measure(opened, paths, settings)
        if check:
            bench.check_candidates(opened, reference, paths, device, poses)
        report = bench.build_report(opened, settings, phases, paths, machine, _command_line(candidates, params))
    finally:
        for candidate in opened:
            candidate.close()
    click.echo(bench.format_text(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        echo(f"wrote {json_path}")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(bench.format_markdown(report))
        echo(f"wrote {markdown_path}")
    if plot_path is not None:
        bench.write_plot(report, plot_path)
        echo(f"wrote {plot_path}")
