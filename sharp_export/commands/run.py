"""`sharp-export run` (images -> PLY files through an exported artifact) and `sharp-export env`.

`run` goes through the same ``gaussians_for_image`` and ``save_ply`` as `predict`, so the only difference
between their PLY files is the runner that computed the raw Gaussians.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import ply_format_options
from sharp_export.progress import echo
from sharp_export.targets import all_devices


@click.command("run", cls=OneLineCommand)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@ply_format_options
@click.option("--device", type=click.Choice(list(all_devices())), default="cpu", show_default=True)
@click.option("--verify", is_flag=True, help="Re-hash every artifact file against its manifest before loading.")
def run_command(
    artifact: Path,
    inputs: tuple[Path, ...],
    out_dir: Path,
    ply_format: str,
    y_up: bool,
    device: str,
    verify: bool,
) -> None:
    """Predict 3D Gaussians for each image with an exported ARTIFACT; one PLY per image, as `predict` writes."""
    import torch

    from sharp_export.artifact import read_manifest
    from sharp_export.errors import UserInputError
    from sharp_export.pipeline import gaussians_for_image
    from sharp_export.reference.ply import save_ply
    from sharp_export.reference.preprocess import list_images
    from sharp_export.runtime.base import open_runner

    if y_up and ply_format == "official":
        raise UserInputError("--y-up applies to --format viewer or splat; the official PLY keeps OpenCV axes")
    manifest = read_manifest(artifact)
    images = list_images(list(inputs))
    resolution = int(manifest.preprocessing["resolution"])
    start = time.perf_counter()
    runner = open_runner(artifact, device, verify=verify)
    with runner:
        echo(
            f"artifact: {manifest.target} {manifest.precision}, preset '{manifest.source['preset']}', "
            f"{manifest.source['label']} ({time.perf_counter() - start:.1f} s to open)"
        )
        if manifest.parity.get("status") == "failed":
            echo(f"note: this artifact FAILED parity when exported (see {artifact}/parity.json)")
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".splat" if ply_format == "splat" else ".ply"
        for index, path in enumerate(images, start=1):
            prediction = gaussians_for_image(path, runner.infer, resolution, torch.device("cpu"))
            target = out_dir / f"{path.stem}{suffix}"
            save_ply(prediction.gaussians, prediction.meta, target, format=ply_format, y_up=y_up)
            t = prediction.seconds
            echo(
                f"[{index}/{len(images)}] {path.name} -> {target}  "
                f"(model {t['model']:.2f} s, pre {t['preprocess']:.2f} s, post {t['postprocess']:.2f} s)"
            )
    if manifest.source.get("untrained"):
        echo(f"note: these scenes come from {manifest.source['label']}; they show the pipeline, not SHARP's quality")


@click.command("env", cls=OneLineCommand)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--probe", is_flag=True, help="Also import torch and onnxruntime to report CUDA and ORT providers (~2 s)."
)
def env_command(as_json: bool, probe: bool) -> None:
    """Versions of torch and every optional backend, and which targets are usable here (for issue reports)."""
    from sharp_export.env import environment_report, format_environment

    report = environment_report(include_runtime_probes=probe)
    click.echo(json.dumps(report, indent=2) if as_json else format_environment(report))
