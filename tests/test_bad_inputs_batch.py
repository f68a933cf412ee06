"""Bad-input catalogue, `sharp-export batch` (machinery: tests/catalogue.py). Only faults found before Ray starts:
each case is one line, a documented exit code and an untouched workspace, in well under a second."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from catalogue import Case, Workspace, registrar, run_case

CASES: list[Case] = []
case = registrar(CASES)


@case("batch/missing-input", 1, "nope", "input not found")
def _(ws: Workspace) -> list[Any]:
    return ["batch", ws.artifact_source, ws.path("nope"), "-o", ws.out]


@case("batch/folder-without-images", 1, "no images found in")
def _(ws: Workspace) -> list[Any]:
    ws.file("in/notes.txt", b"no photos here")
    return ["batch", ws.artifact_source, ws.path("in"), "-o", ws.out]


@case("batch/glob-without-matches", 1, "no images match")
def _(ws: Workspace) -> list[Any]:
    ws.photo("in/photo.png")
    return ["batch", ws.artifact_source, ws.path("in/*.jpg"), "-o", ws.out]


@case("batch/output-is-a-file", 1, "out", "is an existing file, not a folder")
def _(ws: Workspace) -> list[Any]:
    ws.file("out", b"a file where the output folder should be")
    return ["batch", ws.artifact_source, ws.photo(), "-o", ws.out]


@case("batch/ray-missing", 2, "needs the Python package 'ray'", "pip install 'sharp-export[ray]'")
def _(ws: Workspace) -> list[Any]:
    ws.monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, find_spec says not installed
    return ["batch", ws.artifact_source, ws.photo(), "-o", ws.out]


@case("batch/existing-output-not-in-the-manifest", 1, "photo.ply", "already exists; nothing was overwritten", "--force")
def _(ws: Workspace) -> list[Any]:
    ws.file("out/photo.ply", b"an earlier result, not made by this batch")
    return ["batch", ws.artifact_source, ws.photo("in/photo.png"), "-o", ws.out]


@case("batch/two-inputs-one-output", 1, "would both be written to")
def _(ws: Workspace) -> list[Any]:
    ws.photo("in/photo.png")
    ws.photo("in/photo.jpg")
    return ["batch", ws.artifact_source, ws.path("in"), "-o", ws.out]


@case("batch/file-in-the-way-of-an-output-folder", 1, "out/sub", "is in the way of an output folder")
def _(ws: Workspace) -> list[Any]:
    ws.photo("in/sub/photo.png")
    ws.file("out/sub", b"a file where the folder of sub/photo.ply must go")
    return ["batch", ws.artifact_source, ws.path("in"), "-o", ws.out]


@case("batch/seed-with-an-artifact", 1, "applies to the reference model")
def _(ws: Workspace) -> list[Any]:
    return ["batch", ws.artifact_source, ws.photo(), "-o", ws.out, "--seed", "0"]


@case("batch/reference-without-weights", 1, "needs exactly one of -c CHECKPOINT or --seed N")
def _(ws: Workspace) -> list[Any]:
    return ["batch", "reference", ws.photo(), "-o", ws.out, "--preset", "tiny"]


@case("batch/more-actors-than-cpus", 1, "needs 64 CPUs", "this machine has")
def _(ws: Workspace) -> list[Any]:
    return ["batch", ws.artifact_source, ws.photo(), "-o", ws.out, "--actors", "64"]


@case("batch/actors-zero", 2, "--actors", "need 1 <= MIN <= MAX")
def _(ws: Workspace) -> list[Any]:
    return ["batch", ws.artifact_source, ws.photo(), "-o", ws.out, "--actors", "0"]


@case("batch/y-up-official", 1, "--y-up applies to")
def _(ws: Workspace) -> list[Any]:
    return ["batch", ws.artifact_source, ws.photo(), "-o", ws.out, "--y-up"]


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input(item: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_artifact: Path) -> None:
    run_case(item, tmp_path, monkeypatch, session_artifact)
