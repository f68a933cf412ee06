"""The `sharp-export` command line: a thin click group; each command lives in sharp_export/commands/.

User errors (``SharpExportError``) end as one line on stderr and a non-zero exit code, no traceback.
"""

from __future__ import annotations

import logging

import click

from sharp_export import __version__
from sharp_export.errors import SharpExportError


class SharpExportGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SharpExportError as error:
            click.echo(f"error: {error.one_line()}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=SharpExportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sharp-export")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Export, check, run and benchmark Apple's SHARP (one image -> 3D Gaussians)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


def _register() -> None:
    from sharp_export.commands import export, parity, predict, render, run

    cli.add_command(predict.command)
    cli.add_command(render.command)
    for command in export.target_commands():
        cli.add_command(command)
    cli.add_command(run.run_command)
    cli.add_command(parity.command)
    cli.add_command(run.env_command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
