"""Bad-input catalogue, artifacts and the rest: parity, the export targets and env (machinery: tests/catalogue.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalogue import (
    TINY,
    Case,
    Workspace,
    disk_full,
    fail_writes,
    make_read_only,
    registrar,
    run_case,
)
from conftest import use_standin_model

CASES: list[Case] = []
case = registrar(CASES)


# ---- parity -------------------------------------------------------------------------------------------------------


@case("parity/artifact-of-another-preset", 1, "the artifact is preset 'tiny', not 'sharp'")
def _(ws: Workspace) -> list[Any]:
    return ["parity", ws.artifact_source, "--preset", "sharp", "--images", ws.photo(), "--report", ws.path("p.json")]


@case("parity/reference-of-another-seed", 1, "exported from seed 0", "--seed 1")
def _(ws: Workspace) -> list[Any]:
    return [
        "parity",
        ws.artifact_source,
        "--poses",
        "0",
        "--seed",
        "1",
        "--images",
        ws.photo(),
        "--report",
        ws.path("p.json"),
    ]


@case("parity/golden-bundle-of-another-preset", 1, "golden bundle holds 1536 px inputs", "takes 384 px")
def _(ws: Workspace) -> list[Any]:
    index = {"schema_version": 1, "resolution": 1536, "poses": [], "images": [], "source": {"preset": "sharp"}}
    ws.file("golden/golden.json", json.dumps(index).encode())
    np.savez(ws.path("golden/golden.npz"), unused=np.zeros(1))
    return ["parity", ws.artifact_source, "--poses", "0", "--golden", ws.path("golden"), "--report", ws.path("p.json")]


@case("parity/golden-index-not-json", 1, "golden.json", "not valid JSON")
def _(ws: Workspace) -> list[Any]:
    ws.file("golden/golden.json", b"{oops")
    return ["parity", ws.artifact_source, "--poses", "0", "--golden", ws.path("golden"), "--report", ws.path("p.json")]


@case("parity/golden-arrays-incomplete", 1, "golden arrays lack", "photo/image")
def _(ws: Workspace) -> list[Any]:
    image = {"name": "photo", "f_px": 50.0, "width": 64, "height": 48}
    index = {"schema_version": 1, "resolution": 384, "poses": [], "images": [image], "source": {}}
    ws.file("golden/golden.json", json.dumps(index).encode())
    np.savez(ws.path("golden/golden.npz"), unused=np.zeros(1))
    return ["parity", ws.artifact_source, "--poses", "0", "--golden", ws.path("golden"), "--report", ws.path("p.json")]


@case("parity/report-exists-without-force", 1, "p.json", "already exists", "--force")
def _(ws: Workspace) -> list[Any]:
    ws.file("p.json", b"{}")
    return ["parity", ws.artifact_source, "--images", ws.photo(), "--report", ws.path("p.json")]


@case("parity/report-dir-exists-without-force", 1, "report", "already exists (pass --force")
def _(ws: Workspace) -> list[Any]:
    ws.file("report/index.html", b"<html>an earlier report</html>")
    return ["parity", ws.artifact_source, "--images", ws.photo(), "--poses", "0", "--report-dir", ws.path("report")]


@case("parity/report-dir-not-ours-with-force", 1, "report", "not provably a sharp-export parity report folder")
def _(ws: Workspace) -> list[Any]:
    ws.file("report/index.html", b"<html>somebody's page</html>")
    return ["parity", ws.artifact_source, "--images", ws.photo(), "--poses", "0", "--report-dir", ws.path("report"),
            "--force"]  # fmt: skip


@case("parity/report-folder-missing", 1, "--report folder does not exist")
def _(ws: Workspace) -> list[Any]:
    return ["parity", ws.artifact_source, "--images", ws.photo(), "--report", ws.path("nowhere/p.json")]


@case("parity/poses-out-of-range", 2, "--poses", "5 is not in the range")
def _(ws: Workspace) -> list[Any]:
    return ["parity", ws.artifact_source, "--poses", "5"]


@case("parity/tolerances-not-json", 1, "tol.json", "cannot parse tolerance file")
def _(ws: Workspace) -> list[Any]:
    tol = ws.file("tol.json", b"{not json")
    return ["parity", ws.artifact_source, "--images", ws.photo(), "--tolerances", tol, "--report", ws.path("p.json")]


@case("parity/write-golden-over-a-folder", 1, "already exists", "--force")
def _(ws: Workspace) -> list[Any]:
    ws.file("golden/notes.txt", b"keep me")
    return ["parity", *TINY, "--images", ws.photo(), "--write-golden", ws.path("golden")]


@case("parity/manifest-not-json", 1, "manifest.json", "not valid JSON")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    (art / "manifest.json").write_bytes(b"\xff\xfe binary")
    return ["parity", art, "--images", ws.photo(), "--report", ws.path("p.json")]


# ---- exports (onnx, coreml) -----------------------------------------------------------------------------------------


@case("onnx/output-is-a-file", 1, "art", "existing file, not a folder")
def _(ws: Workspace) -> list[Any]:
    ws.file("art", b"not a folder")
    return ["onnx", *TINY, "-o", ws.path("art"), "--no-parity"]


@case("onnx/output-folder-read-only", 1, "cannot create the output folder")
def _(ws: Workspace) -> list[Any]:
    make_read_only(ws.monkeypatch, ws.path("locked"))
    return ["onnx", *TINY, "-o", ws.path("locked/art"), "--no-parity"]


@case("onnx/disk-full", 1, "art", "no space left", "nothing was left at that path", quiet=False)
def _(ws: Workspace) -> list[Any]:
    use_standin_model(ws.monkeypatch)
    fail_writes(ws.monkeypatch, ws.root, disk_full(), budget=10_000)
    return ["onnx", *TINY, "-o", ws.path("art"), "--no-parity"]


@case("onnx/interrupted-writing-the-manifest", 130, "interrupted", quiet=False)
def _(ws: Workspace) -> list[Any]:
    use_standin_model(ws.monkeypatch)
    from sharp_export import export

    def half_manifest(directory: Path, manifest: Any) -> Path:
        (directory / "manifest.json").write_text('{"schema_version": 1, ')
        raise KeyboardInterrupt

    ws.monkeypatch.setattr(export, "write_manifest", half_manifest)
    return ["onnx", *TINY, "-o", ws.path("art"), "--no-parity"]


@case("onnx/opset-too-old", 1, "--opset 16 is not supported")
def _(ws: Workspace) -> list[Any]:
    return ["onnx", *TINY, "-o", ws.path("art"), "--opset", "16"]


@case("onnx/opset-not-a-number", 2, "--opset", "'x' is not a valid integer")
def _(ws: Workspace) -> list[Any]:
    return ["onnx", *TINY, "-o", ws.path("art"), "--opset", "x"]


@case("onnx/checkpoint-missing", 1, "missing.pt", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["onnx", "--preset", "tiny", "-c", ws.path("missing.pt"), "-o", ws.path("art"), "--no-parity"]


@case("tensorrt-rtx/fp8-for-ampere", 1, "--precision fp8 cannot be built for sm86", "SM89 or later")
def _(ws: Workspace) -> list[Any]:
    return ["tensorrt-rtx", *TINY, "-o", ws.path("art"), "--precision", "fp8", "--calib-data", "samples",
            "--compute-capability", "sm86"]  # fmt: skip


@case("tensorrt-rtx/unknown-compute-capability", 1, "--compute-capability 'sm90': unknown ['sm90']")
def _(ws: Workspace) -> list[Any]:
    return ["tensorrt-rtx", *TINY, "-o", ws.path("art"), "--compute-capability", "sm90"]


@case("coreml/unknown-deployment-target", 2, "--deployment-target", "iOS9")
def _(ws: Workspace) -> list[Any]:
    return ["coreml", *TINY, "-o", ws.path("art"), "--deployment-target", "iOS9"]


@case("coreml/fp16-conflicts-with-precision", 1, "--fp16 conflicts with --precision fp32")
def _(ws: Workspace) -> list[Any]:
    return ["coreml", *TINY, "-o", ws.path("art"), "--fp16", "--precision", "fp32"]


@case("coreml/output-is-a-file", 1, "existing file, not a folder")
def _(ws: Workspace) -> list[Any]:
    ws.file("art", b"not a folder")
    return ["coreml", *TINY, "-o", ws.path("art"), "--no-parity"]


# ---- env ----------------------------------------------------------------------------------------------------------


@case("env/unknown-option", 2, "env: No such option '--bogus'")
def _(ws: Workspace) -> list[Any]:
    return ["env", "--bogus"]


@case("env/unexpected-argument", 2, "env: Got unexpected extra argument (now)")
def _(ws: Workspace) -> list[Any]:
    return ["env", "now"]


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input(item: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_artifact: Path) -> None:
    run_case(item, tmp_path, monkeypatch, session_artifact)
