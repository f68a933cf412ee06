"""The `sharp-export` command line: a thin click group; each command lives in sharp_export/commands/.

Every command is a ``commands.base.OneLineCommand``, the one place where errors become one line on stderr
and an exit code (no traceback; ``-v`` shows it). Every command module is imported here, so each imports torch
and the toolchains inside its command function only: `sharp-export --help` stays instant.
"""

from __future__ import annotations

import logging

import click

from sharp_export import __version__
from sharp_export.commands import batch, bench, export, parity, predict, render, run, triton, view


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sharp-export")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and tracebacks for unexpected errors.")
def cli(verbose: bool) -> None:
    """Export, check, run and benchmark Apple's SHARP (one image -> 3D Gaussians)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


def _register() -> None:
    cli.add_command(predict.command)
    cli.add_command(render.command)
    cli.add_command(view.command)
    for command in export.target_commands():
        cli.add_command(command)
    cli.add_command(run.run_command)
    cli.add_command(batch.command)
    cli.add_command(parity.command)
    cli.add_command(run.env_command)
    cli.add_command(bench.command)
    cli.add_command(triton.command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
