"""What a batch run does with each input, decided by the driver before any work; and the folder lock.

An input is **done** (skipped) when the manifest's row for it says ``ok``, was made by the same artifact (sha256)
in the same format, its input has the listed size and modification time, and its output file exists with the
recorded size. An input that **failed before** (the manifest's row
says ``failed``, for this same input, artifact and format) is skipped too, unless ``--retry-failed``: a corrupt
file stays corrupt. Otherwise it is **pending**. A pending input whose output file exists anyway (another artifact or
format made it, or a file that is not ours) is refused up front, nothing overwritten, unless ``--force``; with
``--force`` every input is pending and existing outputs are replaced atomically.

Exactly once within a run: each pending input carries the identity (inode, size, mtime) its output had when the
run was planned (None: absent). A worker that finds a different identity knows that an earlier attempt of this
run (a worker killed after publishing) wrote it, and does not write it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharp_export.batch.inputs import InputFile, Inputs
from sharp_export.errors import UserInputError

Identity = tuple[int, int, int]  # st_ino, st_size, st_mtime_ns


def identity(path: Path) -> Identity | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Work:
    """What a worker needs to know about one pending input besides its bytes."""

    uri: str
    output: str  # relative to OUTPUT
    size: int
    mtime_ns: int | None
    prior: Identity | None  # the output as planned: None (absent), or the file --force replaces


@dataclass
class Plan:
    pending: list[InputFile]
    done: list[InputFile]  # skipped: complete, as the manifest shows
    failed_before: list[InputFile]  # skipped: failed in an earlier run on this same input (--retry-failed redoes)
    work: dict[str, Work]  # filesystem path (as Ray's reader reports it) -> Work


def _same_job(item: InputFile, row: dict[str, Any], artifact_sha256: str, fmt: str, y_up: bool) -> bool:
    """The row was made from this input (listed size and mtime) by this artifact in this format."""
    if (row["artifact_sha256"], row["format"], bool(row["y_up"])) != (artifact_sha256, fmt, y_up):
        return False
    return row["input_size"] == item.size and (item.mtime_ns is None or row["input_mtime_ns"] == item.mtime_ns)


def is_done(item: InputFile, row: dict[str, Any] | None, out_dir: Path, artifact_sha256: str, fmt: str,
            y_up: bool) -> bool:  # fmt: skip
    """The manifest row says this input's output is complete and was made from this input the way asked now."""
    if row is None or row["status"] != "ok" or row["output"] != item.output:
        return False
    if not _same_job(item, row, artifact_sha256, fmt, y_up):
        return False
    found = identity(out_dir / item.output)
    return found is not None and found[1] == row["output_size"]


def make_plan(
    inputs: Inputs,
    out_dir: Path,
    rows: dict[str, dict[str, Any]],
    *,
    artifact_sha256: str,
    fmt: str,
    y_up: bool,
    force: bool,
    retry_failed: bool = False,
) -> Plan:
    pending, done, failed_before, in_the_way = [], [], [], []
    for item in inputs.files:
        row = rows.get(item.uri)
        if not force and is_done(item, row, out_dir, artifact_sha256, fmt, y_up):
            done.append(item)
            continue
        known_bad = row is not None and row["status"] == "failed" and _same_job(item, row, artifact_sha256, fmt, y_up)
        if known_bad and not (force or retry_failed):
            failed_before.append(item)
            continue
        pending.append(item)
        target = out_dir / item.output
        if target.is_symlink() or target.is_dir():
            raise UserInputError(
                "a folder or link is in the way of this output and is never replaced",
                path=target,
                fix="move it away, or choose another -o folder",
            )
        if not force and target.exists():
            in_the_way.append(target)
    _folders_are_free(out_dir, {item.output for item in pending})
    if in_the_way:
        more = f"; {len(in_the_way) - 1} more outputs are in the way too" if len(in_the_way) > 1 else ""
        raise UserInputError(
            f"already exists; nothing was overwritten (the manifest does not show it made from this input by this "
            f"artifact in this format{more})",
            path=in_the_way[0],
            fix="pass --force to redo and replace them, or choose another -o folder",
        )
    work = {
        item.path: Work(item.uri, item.output, item.size, item.mtime_ns, identity(out_dir / item.output))
        for item in pending
    }
    return Plan(pending, done, failed_before, work)


def _folders_are_free(out_dir: Path, outputs: set[str]) -> None:
    """Refuse up front a file where an output's folder must go (``OUTPUT/a`` a file, ``a/photo.ply`` to write)."""
    checked: set[Path] = set()
    for output in sorted(outputs):
        for folder in reversed(Path(output).parents[:-1]):  # outermost first, OUTPUT itself excluded
            if folder in checked:
                continue
            checked.add(folder)
            path = out_dir / folder
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise UserInputError(
                    "a file or link is in the way of an output folder and is never replaced",
                    path=path,
                    fix="move it away, or choose another -o folder",
                )


@contextlib.contextmanager
def lock_folder(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUTPUT for the run: a second batch writing into the same folder is refused."""
    descriptor = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(
                "another sharp-export batch is writing into this folder",
                path=out_dir,
                fix="wait for it to finish, or choose another -o folder",
            ) from None
        yield
    finally:
        os.close(descriptor)  # releases the lock
