"""`sharp-export render`: PLY scenes -> trajectory videos (colour + depth), on CUDA (gsplat) or any CPU.

torch, the reference model and the runtimes are imported inside the command: the CLI imports this module for
`sharp-export --help`, which must stay instant.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import batch_options
from sharp_export.errors import UserInputError
from sharp_export.outputs import for_each_input, output_folder, plan_outputs
from sharp_export.progress import echo

_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
MAX_RENDER_SIDE = 16384  # px; far above any video size, far below what exhausts memory at once


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (W, H); None stays None."""

    if text is None:
        return None
    match = _RESOLUTION.match(text)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserInputError(f"--resolution '{text}' is not of the form WIDTHxHEIGHT", fix="e.g. --resolution 1280x720")
    width, height = int(match.group(1)), int(match.group(2))
    if max(width, height) > MAX_RENDER_SIDE:
        raise UserInputError(
            f"--resolution {width}x{height} is above the {MAX_RENDER_SIDE} px limit per side",
            fix="e.g. --resolution 1920x1080",
        )
    return width, height


def check_render_size(path: Path, width: int, height: int) -> None:
    """A PLY's image size decides the default render size; refuse one no video could hold."""

    if max(width, height) > MAX_RENDER_SIDE:
        raise UserInputError(
            f"the scene's image size asks for a {width}x{height} render, above the {MAX_RENDER_SIDE} px limit per side",
            path=path,
            fix="pass --resolution WIDTHxHEIGHT",
        )


@click.command("render", cls=OneLineCommand)
@click.argument("scenes", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option(
    "--trajectory",
    type=click.Choice(["rotate_forward", "swipe", "shake", "rotate"]),
    default="rotate_forward",
    show_default=True,
    help="SHARP's camera path.",
)
@click.option("--frames", type=click.IntRange(min=1), default=60, show_default=True, help="Frames per video.")
@click.option(
    "--renderer",
    type=click.Choice(["auto", "torch", "gsplat"]),
    default="auto",
    show_default=True,
    help="gsplat needs CUDA and gsplat==1.5.3; torch runs anywhere with the same rules; auto picks gsplat if usable.",
)
@click.option(
    "--resolution", type=str, default=None, help="Render size WIDTHxHEIGHT (default: SHARP's rule from the PLY)."
)
@click.option("--png", is_flag=True, help="Write PNG frames (<scene>_frames/) instead of mp4 videos.")
@click.option(
    "--eps2d",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="2D dilation in pixels^2; SHARP renders with 0, 3DGS viewers usually use 0.3.",
)
@click.option("--no-progress", is_flag=True, help="No per-frame progress bar.")
@batch_options
def command(
    scenes: tuple[Path, ...],
    out_dir: Path,
    trajectory: str,
    frames: int,
    renderer: str,
    resolution: str | None,
    png: bool,
    eps2d: float,
    no_progress: bool,
    force: bool,
    fail_fast: bool,
) -> None:
    """Render each SCENE.ply along SHARP's trajectory into OUT_DIR/<scene>.mp4 and <scene>.depth.mp4.

    A bad scene is reported on its own line and the others are still rendered (exit code non-zero at the
    end); --fail-fast stops at the first. Existing outputs are refused unless --force is given.
    """
    from sharp_export.reference.ply import check_scene, load_ply
    from sharp_export.reference.render import make_trajectory, render_trajectory, resolve_backend

    if not scenes:
        raise UserInputError("no scenes given", fix="pass one or more .ply files written by `sharp-export predict`")
    for path in scenes:
        if path.is_dir():
            raise UserInputError("is a folder, not a scene file", path=path, fix="pass the .ply files themselves")
        if not path.is_file():
            raise UserInputError("scene file not found", path=path, fix="pass an existing .ply file")
    size = parse_resolution(resolution)
    names = ("{}_frames",) if png else ("{}.mp4", "{}.depth.mp4")
    planned = {path: [out_dir / name.format(path.stem) for name in names] for path in scenes}
    folders = frozenset(target for targets in planned.values() for target in targets) if png else frozenset()
    plan_outputs(planned, force, folders)
    backend = resolve_backend(renderer)  # an explicit gsplat fails here, before any work, if it cannot run
    echo(f"renderer: {backend}" + (" (auto)" if renderer == "auto" else ""))

    def render_one(index: int, path: Path) -> None:
        start = time.perf_counter()
        gaussians, meta = load_ply(path)
        check_scene(gaussians, meta, path)
        cameras = make_trajectory(gaussians, meta, trajectory, num_frames=frames, resolution=size)
        camera = cameras[0]
        check_render_size(path, camera.width, camera.height)
        echo(
            f"[{index}/{len(scenes)}] {path.name}: {gaussians.mean_vectors.shape[1]:,} Gaussians, "
            f"{len(cameras)} frames of '{trajectory}' at {camera.width}x{camera.height}"
        )
        written = render_trajectory(
            gaussians,
            meta,
            cameras,
            out_dir,
            path.stem,
            backend=backend,
            png=png,
            progress=not no_progress,
            eps2d=eps2d,
            replace=force,
        )
        shown = written if len(written) <= 2 else [written[0].parent]
        echo(f"    wrote {', '.join(str(p) for p in shown)} in {time.perf_counter() - start:.1f} s")

    with output_folder(out_dir):
        for_each_input(scenes, render_one, fail_fast=fail_fast, written="the other scenes were rendered")
