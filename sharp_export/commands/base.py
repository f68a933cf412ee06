"""The one error boundary of the CLI: every command is a ``OneLineCommand``.

A ``SharpExportError`` becomes one ``error: ...`` line on stderr and its exit code; click's usage errors one
line and exit 2; an interrupt exit 130 (SIGTERM is handled like Ctrl-C and exits 143); an unexpected exception
one line naming it, a hint to rerun with ``-v`` (which shows the traceback) and exit code 5; running out of memory
one line and exit 1. No traceback otherwise. Exit codes: errors.py.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click

from sharp_export.errors import (
    INTERRUPTED_EXIT_CODE,
    TERMINATED_EXIT_CODE,
    UNEXPECTED_EXIT_CODE,
    SharpExportError,
    Terminated,
)


class OneLineError(click.ClickException):
    """Shown as a single 'error: ...' line; carries the exit code of the error it stands for."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt) while the command runs, so that kill, CI timeouts,
    containers and Kubernetes get the clean-up Ctrl-C gets. Signals can only be set from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _verbose(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("verbose"))


class OneLineCommand(click.Command):
    """A click command whose every expected failure is one line and a documented exit code."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:
            prefix = f"{parent.command_path} {info_name}" if parent is not None else (info_name or self.name)
            raise OneLineError(f"{prefix}: {error.format_message()}", error.exit_code) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except SharpExportError as error:
            raise OneLineError(error.one_line(), error.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Terminated:
            raise OneLineError("terminated by SIGTERM; partial outputs were removed", TERMINATED_EXIT_CODE) from None
        except KeyboardInterrupt:
            raise OneLineError("interrupted; partial outputs were removed", INTERRUPTED_EXIT_CODE) from None
        except MemoryError:
            if _verbose(ctx):
                raise
            raise OneLineError(
                "out of memory (try a smaller input or preset, fewer images at once, or a machine with more RAM)", 1
            ) from None
        except OSError as error:
            if _verbose(ctx):
                raise
            # A failed read or write (full disk, read-only folder, permission): name the file and the cause.
            where = f"{error.filename}: " if error.filename else ""
            cause = (error.strerror or str(error) or type(error).__name__).strip().splitlines()[0][:300]
            raise OneLineError(f"{where}{cause}", 1) from None
        except Exception as error:
            if _verbose(ctx):
                raise
            text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise OneLineError(
                f"unexpected {type(error).__name__}: {text} (a bug: rerun with -v for the traceback and report it)",
                UNEXPECTED_EXIT_CODE,
            ) from None
