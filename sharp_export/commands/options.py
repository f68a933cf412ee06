"""Click options shared by every command that builds the reference model."""

from __future__ import annotations

from collections.abc import Callable

import click

# Kept literal so `--help` does not import torch; tests/test_cli_basics.py checks it equals the PRESETS table.
PRESET_NAMES = ("sharp", "tiny")
# Precisions of the eager reference (autocast); literal for the same reason, checked against reference.checkpoint.
REFERENCE_PRECISIONS = ("fp32", "fp16", "bf16")


def model_options(function: Callable) -> Callable:
    """--preset, -c/--checkpoint and --seed (exactly one of the last two)."""
    decorators = [
        click.option(
            "--preset",
            type=click.Choice(PRESET_NAMES),
            default="sharp",
            show_default=True,
            help="Architecture: 'sharp' is the published model, 'tiny' the small test configuration.",
        ),
        click.option(
            "-c",
            "--checkpoint",
            type=str,
            default=None,
            help="Weights: a .pt/.safetensors state_dict path or an https URL (downloaded once, cached).",
        ),
        click.option(
            "--seed",
            type=int,
            default=None,
            help="Build UNTRAINED seeded random weights instead of loading a checkpoint (for tests and demos).",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


# Scene format -> file name ending; literal so `--help` does not import torch (test_cli_basics checks it equals
# reference.ply.FORMAT_SUFFIXES).
SCENE_FORMATS = {
    "official": ".ply", "viewer": ".ply", "splat": ".splat", "spz": ".spz", "compressed-ply": ".compressed.ply",
}  # fmt: skip
Y_UP_FORMATS = ("viewer", "splat", "compressed-ply")


def scene_suffix(ply_format: str) -> str:
    return SCENE_FORMATS[ply_format]


def check_scene_format(ply_format: str, y_up: bool) -> None:
    """Before any work: --y-up only where the format leaves the axes to us (not the official PLY's OpenCV axes,
    not SPZ's own), and gsply installed for the compact formats."""
    import importlib.util

    from sharp_export.errors import MissingDependencyError, UserInputError

    if y_up and ply_format not in Y_UP_FORMATS:
        why = "SPZ is y-up by definition" if ply_format == "spz" else "the official PLY keeps OpenCV axes"
        raise UserInputError(f"--y-up applies to --format {' / '.join(Y_UP_FORMATS)}; {why}")
    if ply_format in ("spz", "compressed-ply") and importlib.util.find_spec("gsply") is None:
        raise MissingDependencyError("gsply", "spz", f"--format {ply_format}")


def ply_format_options(function: Callable) -> Callable:
    """--format official|viewer|splat|spz|compressed-ply and --y-up, for every command that writes scenes."""
    function = click.option(
        "--y-up", is_flag=True, help="Rotate 180 degrees about x for y-up viewers (viewer/splat/compressed-ply)."
    )(function)
    return click.option(
        "--format",
        "ply_format",
        type=click.Choice(list(SCENE_FORMATS)),
        default="official",
        show_default=True,
        help="official: ml-sharp's PLY; viewer: vertex-only PLY for 3DGS viewers; splat: .splat for WebGL viewers; "
        "spz: Niantic's SPZ v3 (gzip), ~4x smaller; compressed-ply: PlayCanvas/SuperSplat's compressed PLY. "
        "spz and compressed-ply need the 'spz' extra (gsply).",
    )(function)


# Literal for the same reason; tests/test_bad_inputs.py checks it equals reference.preprocess.DEFAULT_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels_option(function: Callable) -> Callable:
    """--max-pixels N: the decompression-bomb guard for every command that reads images."""
    return click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse images with more pixels than this (decompression-bomb guard); raise it for huge photos.",
    )(function)


def batch_options(function: Callable) -> Callable:
    """--force and --fail-fast, for every command that writes one output per input."""
    function = click.option(
        "--fail-fast", is_flag=True, help="Stop at the first input that fails (default: report it and go on)."
    )(function)
    return click.option(
        "--force", is_flag=True, help="Replace existing output files (atomically); without it they are refused."
    )(function)
