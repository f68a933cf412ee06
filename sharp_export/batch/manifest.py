"""The manifest of a batch OUTPUT folder: one Parquet row per input image, and the journals that feed it.

``OUTPUT/manifest.parquet`` holds the latest row of every input ever processed into OUTPUT (``SCHEMA``). Parquet
cannot be appended to, so rows reach it through journals: every process that finishes images (each actor, and the
driver for inputs that never reach an actor) appends one JSON line per image to its own
``OUTPUT/.sharp-batch/journal-<pid>-<start>-<random>.jsonl``, flushed and fsynced: an intent line (status
``writing``) just before the image's file is published, its row right after. The driver folds the journals into
the manifest (rewritten atomically, ``publish.write_with``) at the start of a run, which recovers the rows of a
run that was killed, and at its end. A torn last line (the process died mid-write) is skipped. An intent without
its row (the process died after publishing, before the row) becomes the row of the file it names if that file
exists: publishing is atomic, so the file is complete and ours; otherwise the image is redone by the next run.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sharp_export.errors import UserInputError
from sharp_export.reference.hashing import sha256_file
from sharp_export.reference.publish import owner_tag, write_with

MANIFEST_NAME = "manifest.parquet"
STATE_FOLDER = ".sharp-batch"  # journals; a hidden folder inside OUTPUT
JOURNAL_GLOB = "journal-*.jsonl"
WRITING = "writing"  # the status of an intent line: only in journals, never in the manifest
STAGES = ("decode", "preprocess", "model", "postprocess", "write")  # seconds per stage, columns `<stage>_s`

SCHEMA = pa.schema(
    [
        ("input", pa.string()),  # the path or URI as listed
        ("input_sha256", pa.string()),  # of the bytes the actor read (null when they never arrived)
        ("input_size", pa.int64()),
        ("input_mtime_ns", pa.int64()),  # from the listing; a rerun compares it and the size, never re-reads
        ("output", pa.string()),  # relative to OUTPUT; null for a failed row
        ("output_size", pa.int64()),
        ("output_sha256", pa.string()),
        ("status", pa.string()),  # "ok" or "failed" ("writing": an intent, journals only)
        ("error", pa.string()),  # the one-line error of a failed row
        ("exit_code", pa.int32()),  # the documented exit code of that error (0 when ok)
        ("warnings", pa.string()),  # metadata fallbacks taken ("; "-separated), e.g. an absurd EXIF focal length
        *[(f"{stage}_s", pa.float64()) for stage in STAGES],
        ("artifact", pa.string()),  # what computed it: "onnx fp32 out/onnx", "reference tiny seed 0 fp32"
        ("artifact_sha256", pa.string()),  # sha256 of the artifact's manifest.json (it hashes every model file)
        ("format", pa.string()),
        ("y_up", pa.bool_()),
        ("worker", pa.string()),  # host:pid of the process that finished it
        ("written", pa.bool_()),  # False: the output was found published by an earlier attempt of this run
        ("finished", pa.float64()),  # unix time
    ]
)
COLUMNS = tuple(SCHEMA.names)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def new_row(**values: Any) -> dict[str, Any]:
    """A manifest row: ``values`` for the named columns, null for the others."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    return {name: values.get(name) for name in COLUMNS}


class Journal:
    """One process's append-only rows (JSON lines), durable once ``append`` returns."""

    def __init__(self, out_dir: Path):
        folder = out_dir / STATE_FOLDER
        folder.mkdir(exist_ok=True)
        # pid and start time in the name: a test (or a person) can tell which process wrote it.
        self.path = folder / f"journal-{owner_tag()}-{secrets.token_hex(4)}.jsonl"
        self._handle = open(self.path, "x", encoding="utf-8")  # noqa: SIM115 -- open for the process's life

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, allow_nan=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def journal_paths(out_dir: Path) -> list[Path]:
    return sorted((out_dir / STATE_FOLDER).glob(JOURNAL_GLOB))


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The complete rows of one journal (a torn or foreign line is skipped)."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and set(row) == set(COLUMNS):
                rows.append(row)
    return rows


def read_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Input -> its row, from ``OUTPUT/manifest.parquet`` (empty when there is none)."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise UserInputError(
            f"the batch manifest cannot be read ({str(error).splitlines()[0]})",
            path=path,
            fix="move it away to start the manifest afresh (outputs then need --force), or restore it",
        ) from None
    missing = set(COLUMNS) - set(table.column_names)
    if missing:
        raise UserInputError(
            f"the batch manifest lacks columns {sorted(missing)}",
            path=path,
            fix="it was written by another version of sharp-export; move it away, or use that version",
        )
    return {row["input"]: row for row in table.select(list(COLUMNS)).to_pylist()}


def merge(rows: dict[str, dict[str, Any]], new: Iterable[dict[str, Any]]) -> None:
    """Put ``new`` rows (no intents) into ``rows`` (by input), later rows winning; an ok row of an attempt that found
    the output already published never hides the row of the attempt that wrote it."""
    for row in sorted(new, key=lambda r: r["finished"] or 0.0):
        old = rows.get(row["input"])
        if (
            old is not None
            and row["status"] == "ok"
            and not row["written"]
            and old["status"] == "ok"
            and old["output_sha256"] == row["output_sha256"]
        ):
            continue
        rows[row["input"]] = row


def resolve_intents(out_dir: Path, rows: dict[str, dict[str, Any]], intents: Iterable[dict[str, Any]]) -> None:
    """An intent newer than the input's row (or without one) whose file exists: its process died between publishing
    the file and journaling the row. The file is complete (publishing is atomic) and ours: it gets its row."""
    for intent in sorted(intents, key=lambda r: r["finished"] or 0.0):
        old = rows.get(intent["input"])
        if old is not None and (old["finished"] or 0.0) >= (intent["finished"] or 0.0):
            continue
        path = out_dir / intent["output"]
        if not path.is_file():
            continue  # it died before publishing: the image is pending again
        rows[intent["input"]] = {**intent, "status": "ok", "exit_code": 0, "written": True,
                                 "output_size": path.stat().st_size, "output_sha256": sha256_file(path)}  # fmt: skip


def write_manifest(out_dir: Path, rows: dict[str, dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(sorted(rows.values(), key=lambda r: r["input"]), schema=SCHEMA)

    def write(temp: Path) -> None:
        pq.write_table(table, temp)

    write_with(out_dir / MANIFEST_NAME, write, replace=True)


def fold_journals(out_dir: Path, keep: frozenset[Path] = frozenset()) -> dict[str, dict[str, Any]]:
    """Merge every journal (but ``keep``, still being written) into the manifest, rewrite it, delete the journals
    folded; return the rows. Call it only while holding the folder's lock (``lock_folder``)."""
    rows = read_manifest(out_dir)
    folded = [path for path in journal_paths(out_dir) if path not in keep]
    if not folded:
        return rows
    lines = [row for path in folded for row in read_journal(path)]
    merge(rows, [row for row in lines if row["status"] != WRITING])
    resolve_intents(out_dir, rows, [row for row in lines if row["status"] == WRITING])
    write_manifest(out_dir, rows)
    for path in folded:
        path.unlink(missing_ok=True)
    try:
        (out_dir / STATE_FOLDER).rmdir()
    except OSError:
        pass  # journals still being written, or not empty
    return rows
