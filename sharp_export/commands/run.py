"""`sharp-export run` (images -> PLY files through an exported artifact) and `sharp-export env`.

`run` goes through the same ``gaussians_for_image`` and ``save_ply`` as `predict`, so the only difference
between their PLY files is the runner that computed the raw Gaussians.

torch, the reference model and the runtimes are imported inside the command: the CLI imports this module for
`sharp-export --help`, which must stay instant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import (
    batch_options,
    check_scene_format,
    max_pixels_option,
    ply_format_options,
    scene_suffix,
)
from sharp_export.env import environment_report, format_environment
from sharp_export.outputs import for_each_input, output_folder, plan_outputs
from sharp_export.progress import echo
from sharp_export.registry import all_devices, resolve_artifact


@click.command("run", cls=OneLineCommand)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@ply_format_options
@click.option("--device", type=click.Choice(list(all_devices())), default="cpu", show_default=True)
@click.option("--verify", is_flag=True, help="Re-hash every artifact file against its manifest before loading.")
@max_pixels_option
@batch_options
def run_command(
    artifact: Path,
    inputs: tuple[Path, ...],
    out_dir: Path,
    ply_format: str,
    y_up: bool,
    device: str,
    verify: bool,
    max_pixels: int,
    force: bool,
    fail_fast: bool,
) -> None:
    """Predict 3D Gaussians for each image with an exported ARTIFACT; one PLY per image, as `predict` writes.

    A bad image is reported on its own line and the others are still written (exit code non-zero at the
    end); --fail-fast stops at the first. Existing outputs are refused unless --force is given.
    """
    import torch

    from sharp_export.commands.predict import planned_outputs
    from sharp_export.pipeline import gaussians_for_image
    from sharp_export.reference.ply import save_ply
    from sharp_export.reference.preprocess import list_images

    check_scene_format(ply_format, y_up)
    resolved = resolve_artifact(artifact, verify=verify)  # the manifest, read once, and its target row
    manifest = resolved.manifest
    images = list_images(list(inputs))
    suffix = scene_suffix(ply_format)
    plan_outputs(planned_outputs(images, out_dir, suffix, render=False), force)
    resolution = int(manifest.preprocessing["resolution"])
    producer = f"artifact {artifact} ({manifest.target} {manifest.precision})"
    with output_folder(out_dir):
        start = time.perf_counter()
        with resolved.runner(device) as runner:
            echo(
                f"artifact: {manifest.target} {manifest.precision}, preset '{manifest.source.get('preset')}', "
                f"{manifest.source.get('label')} ({time.perf_counter() - start:.1f} s to open)"
            )
            if manifest.parity.get("status") == "failed":
                echo(f"note: this artifact FAILED parity when exported (see {artifact}/parity.json)")

            def run_one(index: int, path: Path) -> None:
                prediction = gaussians_for_image(
                    path, runner.infer, resolution, torch.device("cpu"), max_pixels, producer=producer, artifact=True
                )
                target = out_dir / f"{path.stem}{suffix}"
                save_ply(prediction.gaussians, prediction.meta, target, format=ply_format, y_up=y_up, replace=force)
                t = prediction.seconds
                echo(
                    f"[{index}/{len(images)}] {path.name} -> {target}  "
                    f"(model {t['model']:.2f} s, pre {t['preprocess']:.2f} s, post {t['postprocess']:.2f} s)"
                )

            for_each_input(images, run_one, fail_fast=fail_fast, written="the other scenes were written")
    if manifest.source.get("untrained"):
        echo(f"note: these scenes come from {manifest.source['label']}; they show the pipeline, not SHARP's quality")


@click.command("env", cls=OneLineCommand)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--probe", is_flag=True, help="Also import torch and onnxruntime to report CUDA and ORT providers (slower)."
)
def env_command(as_json: bool, probe: bool) -> None:
    """Versions of torch and every optional backend, and which targets are usable here (for issue reports)."""

    report = environment_report(include_runtime_probes=probe)
    click.echo(json.dumps(report, indent=2) if as_json else format_environment(report))
