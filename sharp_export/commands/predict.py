"""`sharp-export predict`: images -> PLY files with the reference PyTorch model.

torch, the reference model and the runtimes are imported inside the command: the CLI imports this module for
`sharp-export --help`, which must stay instant.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import (
    REFERENCE_PRECISIONS,
    batch_options,
    check_scene_format,
    max_pixels_option,
    model_options,
    ply_format_options,
    scene_suffix,
)
from sharp_export.errors import UserInputError
from sharp_export.outputs import for_each_input, output_folder, plan_outputs
from sharp_export.progress import echo


def planned_outputs(images: list[Path], out_dir: Path, suffix: str, render: bool) -> dict[Path, list[Path]]:
    """Input image -> the files predict (and --render) will write for it."""
    videos = (".mp4", ".depth.mp4") if render else ()
    return {path: [out_dir / f"{path.stem}{end}" for end in (suffix, *videos)] for path in images}


@click.command("predict", cls=OneLineCommand)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@model_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(list(REFERENCE_PRECISIONS)),
    default="fp32",
    show_default=True,
    help="Network precision (autocast); the depth-to-Gaussian tail always stays fp32.",
)
@ply_format_options
@click.option("--sample", type=str, default=None, help="Also predict a bundled sample photo (e.g. 'coffee').")
@click.option("--render/--no-render", default=False, help="Render a rotate_forward video of each scene afterwards.")
@click.option("--renderer", type=click.Choice(["auto", "torch", "gsplat"]), default="auto", show_default=True)
@click.option(
    "--frames", type=click.IntRange(min=1), default=60, show_default=True, help="Frames of the --render trajectory."
)
@max_pixels_option
@batch_options
def command(
    inputs: tuple[Path, ...],
    out_dir: Path,
    preset: str,
    checkpoint: str | None,
    seed: int | None,
    device: str,
    precision: str,
    ply_format: str,
    y_up: bool,
    sample: str | None,
    render: bool,
    renderer: str,
    frames: int,
    max_pixels: int,
    force: bool,
    fail_fast: bool,
) -> None:
    """Predict 3D Gaussians for each image (files or directories) and write one PLY per image.

    A bad image is reported on its own line and the others are still written (exit code non-zero at the
    end); --fail-fast stops at the first. Existing outputs are refused unless --force is given.
    """
    import torch

    from sharp_export.pipeline import gaussians_for_image, resolve_device
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.reference.ply import save_ply
    from sharp_export.reference.preprocess import list_images
    from sharp_export.runtime.torch_runner import TorchRunner

    paths = list(inputs)
    if sample is not None:
        from sharp_export.samples import sample_image_path

        paths.append(sample_image_path(sample))
    if not paths:
        raise UserInputError("no input images", fix="pass image files or directories, or --sample coffee")
    images = list_images(paths)
    torch_device = resolve_device(device)
    check_scene_format(ply_format, y_up)
    suffix = scene_suffix(ply_format)
    plan_outputs(planned_outputs(images, out_dir, suffix, render), force)

    with output_folder(out_dir):
        start = time.perf_counter()
        loaded = build_model(preset, checkpoint, seed, device=torch_device, precision=precision)
        echo(
            f"model: preset '{preset}', {loaded.source_label}, {precision} on {torch_device} "
            f"({time.perf_counter() - start:.1f} s to build)"
        )
        runner = TorchRunner(loaded, str(torch_device)).open()
        weights = Path(loaded.checkpoint_path).name if loaded.checkpoint_path else f"seed {loaded.seed}"
        producer = f"the model ({weights}, {precision})"

        def predict_one(index: int, path: Path) -> None:
            # The same path as `run`: preprocessing on the CPU, the runner moves the batch to its device.
            prediction = gaussians_for_image(
                path, runner.infer, loaded.model.resolution, torch.device("cpu"), max_pixels, producer=producer
            )
            target = out_dir / f"{path.stem}{suffix}"
            save_ply(prediction.gaussians, prediction.meta, target, format=ply_format, y_up=y_up, replace=force)
            t = prediction.seconds
            echo(
                f"[{index}/{len(images)}] {path.name} -> {target}  "
                f"(model {t['model']:.2f} s, pre {t['preprocess']:.2f} s, post {t['postprocess']:.2f} s)"
            )
            if render:
                from sharp_export.reference.render import make_trajectory, render_trajectory

                cameras = make_trajectory(prediction.gaussians, prediction.meta, num_frames=frames)
                written = render_trajectory(
                    prediction.gaussians, prediction.meta, cameras, out_dir, path.stem, backend=renderer, replace=force
                )
                echo(f"    rendered {', '.join(str(p) for p in written)}")

        for_each_input(images, predict_one, fail_fast=fail_fast, written="the other scenes were written")
    if not loaded.trained:
        echo(f"note: these scenes come from {loaded.source_label}; they show the pipeline, not SHARP's quality")
