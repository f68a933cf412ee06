"""Output safety for the commands that write files: predict, run, render and parity.

* ``output_folder``: the -o folder exists (created if needed) and takes a write, checked before any work;
  a folder created by a command that then fails without writing anything is removed again.
* ``plan_outputs``: the files a batch will write, refused up front when two inputs would write the same
  file or when a file already exists and ``--force`` was not given.
* ``for_each_input``: a batch keeps going past a bad input (one FAILED line each) and fails at the end;
  ``fail_fast`` stops at the first. An output that cannot be written stops the batch at once.

The writers themselves (reference/ply.py, reference/render/video.py, sharp_export/artifact.py) are atomic:
a tagged temporary name, published only when complete (``reference/publish.py``: of two writers of one output
exactly one wins; ``--force`` replaces atomically), removed on every failure. ``output_folder`` first removes
temporaries of ours that dead processes (SIGKILL, a power cut) left in the folder.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sharp_export.errors import BatchError, OutputError, SharpExportError, UserInputError, output_error
from sharp_export.progress import echo
from sharp_export.reference.publish import sweep_stale, temp_path

FORCE_HINT = "pass --force to replace it, or choose another output path"
FRAME_NAME = re.compile(r"(color|depth)_\d{4,}\.png")  # render_trajectory's PNG frames


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def ensure_folder(folder: Path, flag: str = "-o") -> list[Path]:
    """Create ``folder`` if needed and check that it takes a file; return the folders created (deepest first)."""
    if folder.exists() and not folder.is_dir():
        raise UserInputError(
            f"the {flag} path is an existing file, not a folder",
            path=folder,
            fix=f"pass a folder to {flag}; it is created when missing",
        )
    created = _missing_ancestors(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(error, folder, "cannot create the output folder") or OutputError(
            f"cannot create the output folder ({error.strerror or error})", path=folder, fix=f"choose another {flag}"
        ) from None
    try:
        probe = temp_path(folder / "sharp-export-write-check")  # tagged: a killed run's probe is swept later
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as error:
        _remove_empty(created)
        raise output_error(error, folder, "the output folder does not take files") or OutputError(
            f"the output folder does not take files ({error.strerror or error})",
            path=folder,
            fix=f"choose another {flag}",
        ) from None
    return created


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds while empty


@contextlib.contextmanager
def output_folder(folder: Path, flag: str = "-o") -> Iterator[Path]:
    """``ensure_folder`` for the duration of a command; on failure, folders it created and left empty go."""
    created = ensure_folder(folder, flag)
    for stale in sweep_stale(folder):
        echo(stale.note())
    try:
        yield folder
    except BaseException:
        _remove_empty(created)
        raise


def plan_outputs(outputs: dict[Path, list[Path]], force: bool, folders: frozenset[Path] = frozenset()) -> None:
    """Refuse, before any work, a batch whose inputs collide on an output or whose outputs already exist.

    ``outputs`` maps each input to the paths it will write; those in ``folders`` are folders (PNG frames),
    the others files. An existing output needs ``force``; one of the wrong kind is never replaced.
    """
    owner: dict[Path, Path] = {}
    for source, targets in outputs.items():
        for target in targets:
            other = owner.setdefault(target, source)
            if other != source:
                raise UserInputError(
                    f"{other} and {source} would both be written to {target}",
                    fix="rename one of them, or run them with different -o folders",
                )
    existing = [target for target in owner if target.exists() or target.is_symlink()]
    for target in existing:
        if target.is_dir() != (target in folders):
            kind = "folder" if target.is_dir() else "file"
            raise UserInputError(
                f"a {kind} is in the way of this output and is never replaced", path=target, fix="move it away"
            )
    if existing and not force:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise UserInputError(f"already exists{more}; nothing was overwritten", path=existing[0], fix=FORCE_HINT)
    for target in existing:
        problem = frames_problem(target) if target in folders else None
        if problem is not None:
            raise UserInputError(
                f"exists and is not provably a folder of rendered frames ({problem}); --force replaces only a folder "
                "that holds nothing but frames, so nothing was touched",
                path=target,
                fix="choose another -o folder, or move the folder away yourself",
            )


def frames_problem(folder: Path) -> str | None:
    """Why ``--force`` must not replace ``folder``, or None when it holds only ``color_NNNN.png`` and
    ``depth_NNNN.png`` files (what ``render --png`` writes)."""
    if folder.is_symlink():
        return "it is a symbolic link"
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file() or FRAME_NAME.fullmatch(entry.name) is None:
            return f"it holds {entry.name}, which is not a rendered frame"
    return None


def for_each_input(
    inputs: Sequence[Path],
    work: Callable[[int, Path], None],
    *,
    fail_fast: bool,
    written: str,
) -> None:
    """Call ``work(index, path)`` for each input; report a failing input on one line and go on.

    A single input's error, an ``OutputError`` (disk full, read-only) and anything unexpected propagate at
    once; otherwise the failures are summed up at the end in a ``BatchError`` whose message ends in
    ``written`` (e.g. "the other PLY files were written").
    """
    failed: list[tuple[Path, SharpExportError]] = []
    for index, path in enumerate(inputs, start=1):
        try:
            work(index, path)
        except OutputError:
            raise
        except SharpExportError as error:
            if fail_fast or len(inputs) == 1:
                raise
            echo(f"[{index}/{len(inputs)}] {path.name}: FAILED: {error.one_line()}")
            failed.append((path, error))
    if failed:
        raise BatchError(failed, len(inputs), written)
