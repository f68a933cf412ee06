"""One click command per registered target, generated from its registry row.

Every target command has the model options (--preset, -c/--checkpoint, --seed), -o/--output, --precision
(choices: the row's precisions), --device (the row's devices), --no-parity and --force; --fp16,
--dynamic-batch and --calib-data only where the row supports them; plus the row's own ``TargetOption``
flags. Generating the commands imports no toolchain and not torch: `sharp-export --help` stays instant.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import model_options
from sharp_export.contract import ExportRequest
from sharp_export.errors import UserInputError
from sharp_export.registry import all_targets
from sharp_export.targets import Target, TargetOption

# Names taken by the shared options; a TargetOption must not reuse them.
COMMON_PARAMS = (
    "preset",
    "checkpoint",
    "seed",
    "output",
    "precision",
    "dynamic_batch",
    "calib_data",
    "device",
    "parity",
    "force",
    "fp16_flag",
)


class TargetCommand(OneLineCommand):
    """Adds the target's status ('usable' or why not) to its line in the group's --help."""

    def __init__(self, target: Target, **kwargs: Any):
        super().__init__(**kwargs)
        self.target = target

    def get_short_help_str(self, limit: int = 150) -> str:
        return f"{self.target.description} [{self.target.status()}]"


def _target_option(opt: TargetOption) -> Callable:
    if opt.name in COMMON_PARAMS:
        raise ValueError(f"target option {opt.name!r} clashes with a shared option")
    if opt.type is bool:
        flag = opt.flag[2:]
        return click.option(f"--{flag}/--no-{flag}", opt.name, default=opt.default, show_default=True, help=opt.help)
    kind = click.Choice(list(opt.choices)) if opt.choices else opt.type
    return click.option(opt.flag, opt.name, type=kind, default=opt.default, show_default=True, help=opt.help)


def reproduce_command(target: Target, params: dict[str, Any]) -> str:
    """The canonical shell command for this export: every choice explicit, defaults included."""
    argv = ["sharp-export", target.name, "--preset", params["preset"]]
    if params["checkpoint"] is not None:
        argv += ["-c", str(params["checkpoint"])]
    if params["seed"] is not None:
        argv += ["--seed", str(params["seed"])]
    argv += ["-o", str(params["output"]), "--precision", params["precision"]]
    if params.get("dynamic_batch"):
        argv.append("--dynamic-batch")
    if params.get("calib_data") is not None:
        argv += ["--calib-data", str(params["calib_data"])]
    argv += ["--device", params["device"]]
    for opt in target.options:
        value = params[opt.name]
        if opt.type is bool:
            argv.append(opt.flag if value else f"--no-{opt.flag[2:]}")
        elif value != "" and value is not None:
            argv += [opt.flag, str(value)]
    if not params["parity"]:
        argv.append("--no-parity")
    return shlex.join(argv)


def make_target_command(target: Target) -> click.Command:
    """Build `sharp-export <target>` from the registry row."""
    default_device = target.device_for({o.name: o.default for o in target.options})

    def callback(**params: Any) -> None:
        from sharp_export.export import run_export  # torch is imported only when a command runs

        # --fp16 is a shorthand; an explicit different --precision is a conflict, never silently overridden.
        if params.pop("fp16_flag", False):
            if params["precision"] not in (None, "fp16"):
                raise UserInputError(f"--fp16 conflicts with --precision {params['precision']}")
            params["precision"] = "fp16"
        params["precision"] = params["precision"] or target.default_precision
        options = {opt.name: params[opt.name] for opt in target.options}
        params["device"] = params["device"] or target.device_for(options)  # e.g. tensorrt --no-build: cpu
        request = ExportRequest(
            target=target.name,
            output=params["output"],
            preset=params["preset"],
            checkpoint=params["checkpoint"],
            seed=params["seed"],
            precision=params["precision"],
            dynamic_batch=params.get("dynamic_batch", False),
            calib_data=params.get("calib_data"),
            device=params["device"],
            parity=params["parity"],
            force=params["force"],
            options=options,
            reproduce=reproduce_command(target, params),
        )
        verbose = bool(click.get_current_context().find_root().params.get("verbose"))
        out = run_export(request, show_toolchain_output=verbose)  # -v: the toolchains' output on the terminal too
        click.echo(str(out))  # stdout: just the artifact path, for scripts

    decorators: list[Callable] = [
        model_options,
        click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
            required=True,
            help="Artifact directory to create (refuses to overwrite without --force).",
        ),
        click.option(
            "--precision",
            type=click.Choice(list(target.precisions)),
            default=None,
            help=f"Precision of the artifact (default {target.default_precision}).",
        ),
        *(
            [click.option("--fp16", "fp16_flag", is_flag=True, help="Shorthand for --precision fp16.")]
            if "fp16" in target.precisions
            else []
        ),
        *(
            [click.option("--dynamic-batch", is_flag=True, help="Dynamic batch dimension.")]
            if target.supports_dynamic_batch
            else []
        ),
        *(
            [
                click.option(
                    "--calib-data",
                    type=click.Path(path_type=Path),
                    default=None,
                    help="Calibration photos for int8 / fp8: a folder (searched recursively), or 'samples' for the "
                    "bundled scikit-image photos.",
                )
            ]
            if target.supports_calibration
            else []
        ),
        click.option(
            "--device",
            type=click.Choice(list(target.devices)),
            default=None,
            help=f"Device the artifact runs on for parity (default {default_device}"
            + ("; some options change it: see their help)." if target.default_device is not None else ")."),
        ),
        click.option(
            "--parity/--no-parity",
            default=True,
            show_default=True,
            help="Run the artifact and compare it with PyTorch before declaring success.",
        ),
        click.option("--force", is_flag=True, help="Replace an existing artifact (atomically)."),
        *[_target_option(opt) for opt in target.options],
    ]
    for decorator in reversed(decorators):
        callback = decorator(callback)
    params = getattr(callback, "__click_params__", [])
    params.reverse()
    help_text = (
        f"Export SHARP to {target.description}.\n\n"
        f"Writes a directory with model{target.suffix}, manifest.json (hashes, versions, I/O spec, parity) and "
        f"export.log. Needs: pip install 'sharp-export[{target.extra}]'."
    )
    return TargetCommand(target, name=target.name, callback=callback, params=params, help=help_text)


def target_commands() -> list[click.Command]:
    """One command per registered target, in registry order (the lead adds them to the CLI group)."""
    return [make_target_command(t) for t in all_targets()]
