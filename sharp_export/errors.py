"""Error types. Every user-facing error says what was wrong, where, and what to do.

The CLI turns a ``SharpExportError`` into one line on stderr and the exit code below (no traceback):

=====  ======================================================
code   meaning
=====  ======================================================
1      bad input or usage (missing, corrupt or hostile file, wrong keys, conflicting flags), an output
       that cannot be written (full disk, read-only folder, existing file without --force), out of memory
2      a needed optional dependency is missing; also click's own parse errors (unknown option, a
       number out of its range such as --frames 0)
3      parity failed: the artifact does not match the reference
4      conversion failed inside a toolchain
5      unexpected internal error (a bug: rerun with -v for the traceback)
130    interrupted (Ctrl-C); partial outputs are removed
143    terminated (SIGTERM: kill, CI timeouts, containers); partial outputs are removed
=====  ======================================================
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

UNEXPECTED_EXIT_CODE = 5
INTERRUPTED_EXIT_CODE = 130
TERMINATED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every clean-up that Ctrl-C runs (partial outputs removed) runs."""


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
        # A third-party message quoted in ours (torch.load's, PIL's) can span lines: one line is the promise.
        return " ".join(part.strip() for part in text.splitlines() if part.strip())


class UserInputError(SharpExportError):
    """A file, flag or value given by the user is unusable."""

    exit_code = 1


class CheckpointError(UserInputError):
    """A checkpoint cannot be read or does not fit the chosen preset."""


class OutputError(UserInputError):
    """An output cannot be written (full disk, read-only or missing folder, a file in the way).

    A batch stops at this error: every later output would fail the same way.
    """


# errno values that mean "this output location cannot take the write", with what to do about each.
_WRITE_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free disk space or write to another -o folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota or write to another -o folder"),
    errno.EFBIG: ("file too large for this file system", "write to another file system"),
    errno.EROFS: ("the file system is read-only", "write to a writable -o folder"),
    errno.EACCES: ("permission denied", "write to a folder you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "write to a folder you can write to, or fix its permissions"),
    errno.ENOTDIR: ("a parent of this path is a file, not a folder", "choose an -o path under a folder"),
    errno.EEXIST: ("a file is in the way", "remove it or choose another -o path"),
    errno.EISDIR: ("a folder is in the way", "move it away or choose another -o path"),
    errno.EIO: ("input/output error from the device", "check the disk, or write elsewhere"),
}


def output_error(
    error: OSError, path: str | Path, doing: str = "cannot write", outcome: str = ""
) -> SharpExportError | None:
    """The ``OutputError`` for a failed write of ``path``, or None when ``error`` is not a write fault.

    The OS often reports a failed write without a file name (ENOSPC from ``write()``) or with a temporary
    name; the error names the output the user asked for instead.
    """
    known = _WRITE_FAULTS.get(error.errno) if error.errno is not None else None
    if known is None:
        return None
    cause, fix = known
    return OutputError(f"{doing}: {cause}" + (f"; {outcome}" if outcome else ""), path=path, fix=fix)


class BatchError(SharpExportError):
    """Some items of a batch failed (each reported on its own line); the others were written.

    The exit code is the highest among the failures, so a batch with only bad inputs exits 1.
    """

    def __init__(self, failed: Sequence[tuple[Path, SharpExportError]], total: int, written: str):
        names = ", ".join(path.name for path, _ in failed[:5]) + (", ..." if len(failed) > 5 else "")
        super().__init__(
            f"{len(failed)} of {total} inputs failed ({names}); {written}",
            fix="see the FAILED lines above; --fail-fast stops at the first failure",
        )
        self.failed = list(failed)
        self.exit_code = max(error.exit_code for _, error in failed)


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


# A failed export removes its folder, export.log with it: the toolchain's output is seen again with -v.
TOOLCHAIN_OUTPUT_HINT = "rerun with `sharp-export -v` to see the toolchain's own output"


class ConversionError(SharpExportError):
    """A converter toolchain failed."""

    exit_code = 4


class TargetUnavailableError(SharpExportError):
    """A target's toolchain is missing here; the message carries the target's own reason and install hint."""

    exit_code = MissingDependencyError.exit_code  # 2, like every missing optional dependency

    def __init__(self, target: str, reason: str):
        super().__init__(f"target '{target}' is not usable here: {reason}")
