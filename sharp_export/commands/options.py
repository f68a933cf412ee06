"""Click options shared by every command that builds the reference model."""

from __future__ import annotations

from collections.abc import Callable

import click

from sharp_export.reference.model.params import PRESETS


def model_options(function: Callable) -> Callable:
    """--preset, -c/--checkpoint and --seed (exactly one of the last two)."""
    decorators = [
        click.option(
            "--preset",
            type=click.Choice(sorted(PRESETS)),
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
