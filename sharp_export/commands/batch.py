"""`sharp-export batch`: a folder, glob or list of photos -> one scene file each, on Ray, resumable.

The same command runs on a laptop (a local Ray started in-process) and on a cluster (``--address``). The pipeline
is in ``sharp_export.batch``; this module parses and checks the command line before Ray starts (a missing INPUT,
an OUTPUT that is a file, Ray not installed: one line each, nothing started). ray and torch are imported inside
the command: `sharp-export --help` stays instant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import (
    REFERENCE_PRECISIONS,
    check_scene_format,
    max_pixels_option,
    model_options,
    ply_format_options,
    scene_suffix,
)
from sharp_export.errors import CheckpointError, MissingDependencyError, SharpExportError, UserInputError
from sharp_export.progress import echo


class ActorCount(click.ParamType):
    """'2' -> (2, 2); '1-4' -> an autoscaling pool of 1 to 4 actors."""

    name = "N|MIN-MAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        low, _, high = str(value).partition("-")
        try:
            pair = (int(low), int(high or low))
        except ValueError:
            self.fail(f"{value!r} is not N or MIN-MAX (e.g. 2 or 1-4)", param, ctx)
        if pair[0] < 1 or pair[1] < pair[0]:
            self.fail(f"{value!r}: need 1 <= MIN <= MAX", param, ctx)
        return pair


def _artifact_identity(artifact: str, preset: str, checkpoint: str | None, seed: int | None, precision: str,
                       device: str) -> tuple[Any, str, str, bool]:  # fmt: skip
    """(ModelSpec, label, sha256, untrained) of ARTIFACT or the reference model; one line for what cannot open."""
    from sharp_export.batch.worker import ModelSpec

    if artifact != "reference":
        from sharp_export.registry import resolve_artifact

        resolved = resolve_artifact(artifact)
        resolved.runner(device)  # checks the device and that this machine can run it (unopened)
        path = Path(artifact).resolve()
        sha = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()  # it lists every file's sha256
        label = f"{resolved.manifest.target} {resolved.manifest.precision} {path}"
        untrained = bool(resolved.manifest.source.get("untrained"))
        return ModelSpec(artifact=str(path), device=device), label, sha, untrained
    if (checkpoint is None) == (seed is None):
        raise UserInputError(
            "`batch reference` needs exactly one of -c CHECKPOINT or --seed N",
            fix="pass -c for real weights, or --seed N for untrained test weights",
        )
    identity: dict[str, Any] = {"reference": preset, "precision": precision, "seed": seed}
    weights = f"seed {seed}"
    if checkpoint is not None:
        from sharp_export.reference.checkpoint import download
        from sharp_export.reference.hashing import sha256_file

        local = download(checkpoint) if checkpoint.startswith(("https://", "http://")) else Path(checkpoint)
        if not local.is_file():
            raise CheckpointError("checkpoint file not found", path=local, fix="check the -c path")
        checkpoint = str(local.resolve())
        identity["checkpoint_sha256"] = sha256_file(local)
        weights = f"checkpoint {local.name} (sha256 {identity['checkpoint_sha256'][:12]})"
    sha = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    spec = ModelSpec(artifact=None, device=device, preset=preset, checkpoint=checkpoint, seed=seed,
                     precision=precision)  # fmt: skip
    return spec, f"reference {preset}, {weights}, {precision}", sha, checkpoint is None


@click.command("batch", cls=OneLineCommand)
@click.argument("artifact", metavar="ARTIFACT|reference")
@click.argument("source", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder (on a cluster: one every node writes to). Holds the scenes and manifest.parquet.",
)
@click.option("--address", default=None,
              help="A Ray cluster: 'auto' (the one this machine belongs to) or ray://HOST:10001. "
              "Default: a local Ray started for this run.")  # fmt: skip
@click.option(
    "--actors",
    type=ActorCount(),
    default="1",
    show_default=True,
    help="Actors, each with the model open once: N, or MIN-MAX for a pool Ray scales between them.",
)
@click.option(
    "--cpus-per-actor",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="CPUs Ray reserves for each actor, and its thread count.",
)
@click.option(
    "--gpus-per-actor",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs per actor (0.5: two actors share one); above 0 the model runs on CUDA.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Images handed to an actor at a time (each still runs alone through the model).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of INPUT (sorted).")
@click.option("--force", is_flag=True, help="Redo every image, replacing existing outputs atomically.")
@click.option("--retry-failed", is_flag=True, help="Also redo images that failed in an earlier run on the same input.")
@click.option("--no-progress", is_flag=True, help="No progress bar (FAILED and warning lines still print).")
@ply_format_options
@max_pixels_option
@model_options
@click.option("--precision", type=click.Choice(list(REFERENCE_PRECISIONS)), default="fp32", show_default=True,
              help="The reference model's precision (autocast); artifacts keep their own.")  # fmt: skip
@click.pass_context
def command(ctx: click.Context, artifact: str, source: str, out_dir: Path, address: str | None,
            actors: tuple[int, int], cpus_per_actor: int, gpus_per_actor: float, batch_size: int, limit: int | None,
            force: bool, retry_failed: bool, no_progress: bool, ply_format: str, y_up: bool, max_pixels: int,
            preset: str, checkpoint: str | None, seed: int | None, precision: str) -> None:  # fmt: skip
    """Turn every photo of INPUT into a scene file in OUTPUT, with ARTIFACT (or the reference model) on Ray.

    INPUT is a folder, a glob or a list file, local or a URI (s3://, gs://, ...). A rerun skips what the manifest
    shows done; a bad image is a failed row, never the end of the job. Exit code: the highest of the failures.
    """
    for package in ("ray", "pyarrow", "pandas"):  # ray[data]; checked before anything is imported or started
        if importlib.util.find_spec(package) is None:
            raise MissingDependencyError(package, "ray", "sharp-export batch")
    check_scene_format(ply_format, y_up)
    if artifact != "reference" and (checkpoint is not None or seed is not None):
        raise UserInputError("-c / --seed applies to the reference model, not to an artifact", fix="drop them")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError("the -o path is an existing file, not a folder", path=out_dir,
                             fix="pass a folder to -o; it is created when missing")  # fmt: skip
    if address is None and actors[0] * cpus_per_actor > (os.cpu_count() or 1):  # a local Ray would wait forever
        raise UserInputError(
            f"--actors {actors[0]} x --cpus-per-actor {cpus_per_actor} needs {actors[0] * cpus_per_actor} CPUs; "
            f"this machine has {os.cpu_count()}",
            fix="fewer actors or CPUs per actor, or run on a cluster with --address",
        )
    from sharp_export.batch.engine import BatchConfig, run_batch
    from sharp_export.batch.inputs import resolve_inputs
    from sharp_export.batch.summary import format_table
    from sharp_export.batch.worker import JobSpec

    inputs = resolve_inputs(source, scene_suffix(ply_format), limit)  # listed once, before anything starts
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    model, label, sha, untrained = _artifact_identity(artifact, preset, checkpoint, seed, precision, device)
    job = JobSpec(out_dir=str(out_dir.resolve()), format=ply_format, y_up=y_up, max_pixels=max_pixels,
                  threads=cpus_per_actor, artifact=label, artifact_sha256=sha)  # fmt: skip
    config = BatchConfig(
        out_dir=out_dir.resolve(), model=model, job=job,
        address=address, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
        batch_size=batch_size, force=force, retry_failed=retry_failed, progress=not no_progress,
        verbose=bool(ctx.find_root().params.get("verbose")),
    )  # fmt: skip
    summary = run_batch(config, inputs)
    click.echo(format_table(summary))
    if untrained:
        echo("note: these scenes come from UNTRAINED weights; they show the pipeline, not SHARP's quality")
    failed = [row for row in summary.rows if row["status"] == "failed"]
    if failed:
        names = ", ".join(Path(row["input"]).name for row in failed[:5]) + (", ..." if len(failed) > 5 else "")
        error = SharpExportError(
            f"{len(failed)} of {summary.processed} inputs failed ({names}); the other scenes were written",
            fix=f"see the FAILED lines above and the error column of {out_dir / 'manifest.parquet'}",
        )
        error.exit_code = max(int(row["exit_code"] or 1) for row in failed)
        raise error
