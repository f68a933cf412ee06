"""Error types. Every user-facing error says what was wrong, where, and what to do.

The CLI turns a ``SharpExportError`` into one line on stderr and the exit code below (no traceback):

=====  ======================================================
code   meaning
=====  ======================================================
1      bad input or usage (missing file, wrong keys, bad flag)
2      a needed optional dependency is missing
3      parity failed: the artifact does not match the reference
4      conversion failed inside a toolchain
5      unexpected internal error (a bug: rerun with -v for the traceback)
130    interrupted (Ctrl-C); partial outputs are removed
=====  ======================================================
"""

from __future__ import annotations

from pathlib import Path

UNEXPECTED_EXIT_CODE = 5
INTERRUPTED_EXIT_CODE = 130


class SharpExportError(Exception):
    """Base class: one clear sentence, an optional file and an optional fix."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path is not None else self.message
        if self.fix:
            text += f" ({self.fix})"
        return text


class UserInputError(SharpExportError):
    """A file, flag or value given by the user is unusable."""

    exit_code = 1


class CheckpointError(UserInputError):
    """A checkpoint cannot be read or does not fit the chosen preset."""


class MissingDependencyError(SharpExportError):
    """An optional package (extra) is not installed."""

    exit_code = 2

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            fix=f"pip install 'sharp-export[{extra}]'",
        )


class ParityError(SharpExportError):
    """An artifact's outputs do not match the reference within tolerance."""

    exit_code = 3


class ConversionError(SharpExportError):
    """A converter toolchain failed."""

    exit_code = 4


class TargetUnavailableError(SharpExportError):
    """A target's toolchain is missing here; the message carries the target's own reason and install hint."""

    exit_code = MissingDependencyError.exit_code  # 2, like every missing optional dependency

    def __init__(self, target: str, reason: str):
        super().__init__(f"target '{target}' is not usable here: {reason}")
