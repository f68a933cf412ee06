"""Bad-input catalogue, scene commands: predict, render and run (machinery: tests/catalogue.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalogue import (
    RENDER,
    TINY,
    Case,
    Workspace,
    disk_full,
    fail_writes,
    fake_ffmpeg,
    make_read_only,
    png_header_only,
    registrar,
    run_case,
    scene_extras,
    scene_vertices,
    write_ply,
)

CASES: list[Case] = []
case = registrar(CASES)


# ---- predict ------------------------------------------------------------------------------------------------------


@case("predict/decompression-bomb", 1, "20000x20000", "decompression bomb", "--max-pixels 400000000", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.file("in/bomb.png", png_header_only(20000, 20000)), "-o", ws.out, *TINY]


@case("predict/above-a-lowered-max-pixels", 1, "64x48 (3,072 pixels)", "--max-pixels limit of 1,000", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--max-pixels", "1000"]


@case("predict/max-pixels-zero", 2, "--max-pixels")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--max-pixels", "0"]


@case("predict/render-frames-zero", 2, "--frames", "0 is not in the range")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--render", "--frames", "0"]


@case("predict/render-frames-negative", 2, "--frames", "-1 is not in the range")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--render", "--frames", "-1"]


@case("predict/not-an-image", 1, "junk.jpg", "not an image PIL can read", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.file("in/junk.jpg", b"this is not a JPEG at all"), "-o", ws.out, *TINY]


@case("predict/truncated-image", 1, "cut.png", "cannot decode image data", quiet=False)
def _(ws: Workspace) -> list[Any]:
    data = ws.photo("src/photo.png").read_bytes()
    return ["predict", ws.file("in/cut.png", data[: len(data) // 2]), "-o", ws.out, *TINY]


@case("predict/missing-input", 1, "nope.png", "input not found")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.path("in/nope.png"), "-o", ws.out, *TINY]


@case("predict/folder-without-images", 1, "no images found")
def _(ws: Workspace) -> list[Any]:
    ws.file("in/notes.txt", b"no photos here")
    return ["predict", ws.path("in"), "-o", ws.out, *TINY]


@case("predict/output-is-a-file", 1, "out", "existing file, not a folder")
def _(ws: Workspace) -> list[Any]:
    ws.file("out", b"a file where the folder should be")
    return ["predict", ws.photo(), "-o", ws.out, *TINY]


@case("predict/output-parent-is-a-file", 1, "cannot create the output folder", "parent of this path is a file")
def _(ws: Workspace) -> list[Any]:
    ws.file("blocker", b"x")
    return ["predict", ws.photo(), "-o", ws.path("blocker/out"), *TINY]


@case("predict/read-only-output-folder", 1, "out", "does not take files")
def _(ws: Workspace) -> list[Any]:
    photo = ws.photo()
    make_read_only(ws.monkeypatch, ws.out)
    return ["predict", photo, "-o", ws.out, *TINY]


@case("predict/existing-output-without-force", 1, "photo.ply", "already exists", "nothing was overwritten", "--force")
def _(ws: Workspace) -> list[Any]:
    ws.file("out/photo.ply", b"an earlier result")
    return ["predict", ws.photo(), "-o", ws.out, *TINY]


@case("predict/two-inputs-one-output", 1, "would both be written to", "x.ply")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo("in/a/x.png"), ws.photo("in/b/x.png"), "-o", ws.out, *TINY]


@case("predict/disk-full-writing-ply", 1, "photo.ply", "no space left", "no partial file was left", quiet=False)
def _(ws: Workspace) -> list[Any]:
    photo = ws.photo()
    fail_writes(ws.monkeypatch, ws.out, disk_full(), budget=4096)
    return ["predict", photo, "-o", ws.out, *TINY]


@case("predict/disk-full-with-force-keeps-old-file", 1, "no space left", "existing file is unchanged", quiet=False)
def _(ws: Workspace) -> list[Any]:
    photo = ws.photo()
    ws.file("out/photo.ply", b"the earlier result, which must survive")
    fail_writes(ws.monkeypatch, ws.out, disk_full(), budget=4096)
    return ["predict", photo, "-o", ws.out, *TINY, "--force"]


@case("predict/interrupted-mid-write", 130, "interrupted", quiet=False)
def _(ws: Workspace) -> list[Any]:
    photo = ws.photo()
    fail_writes(ws.monkeypatch, ws.out, KeyboardInterrupt(), budget=4096)
    return ["predict", photo, "-o", ws.out, *TINY]


@case("predict/batch-goes-past-a-bad-image", 1, "1 of 2 inputs failed", "bad.jpg", "--fail-fast",
      new=("out/good.ply",), quiet=False, failed=("bad.jpg",))  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    ws.photo("in/good.png")
    ws.file("in/bad.jpg", b"not a JPEG")
    return ["predict", ws.path("in"), "-o", ws.out, *TINY]


@case("predict/batch-fail-fast-stops-at-the-first", 1, "bad.jpg", "not an image PIL can read", quiet=False)
def _(ws: Workspace) -> list[Any]:
    ws.photo("in/good.png")  # sorted after bad.jpg: never reached
    ws.file("in/bad.jpg", b"not a JPEG")
    return ["predict", ws.path("in"), "-o", ws.out, *TINY, "--fail-fast"]


@case(
    "predict/exif-focal-length-zero", 0, "photo.jpg", "focal length gives 0 mm", "default 30 mm", new=("out/photo.ply",)
)
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo("in/photo.jpg", focal_length=0), "-o", ws.out, *TINY]


@case("predict/exif-focal-length-negative", 0, "gives -42 mm", "default 30 mm", new=("out/photo.ply",))
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo("in/photo.jpg", focal_length=-5.0), "-o", ws.out, *TINY]


@case("predict/exif-focal-length-huge", 0, "gives 1e+09 mm", "default 30 mm", new=("out/photo.ply",))
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo("in/photo.jpg", focal_length=1e9), "-o", ws.out, *TINY]


@case("predict/exif-focal-length-not-a-number", 0, "FocalLength 'wide'", "not a finite number", new=("out/photo.ply",))
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo("in/photo.jpg", focal_length="wide"), "-o", ws.out, *TINY]


@case("predict/checkpoint-not-a-checkpoint", 1, "weights.pt", quiet=False)
def _(ws: Workspace) -> list[Any]:
    weights = ws.file("in/weights.pt", b"definitely not a state dict")
    return ["predict", ws.photo(), "-o", ws.out, "--preset", "tiny", "-c", weights]


@case("predict/y-up-with-official-format", 1, "--y-up applies to --format viewer / splat / compressed-ply")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--y-up"]


@case("predict/render-ffmpeg-dies", 1, "photo.mp4", "Broken pipe", "no partial output was left",
      new=("out/photo.ply",), quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    fake_ffmpeg(ws.monkeypatch, die_after=1)
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--render", "--frames", "3"]


# ---- render -------------------------------------------------------------------------------------------------------


@case("render/nan-values", 1, "nan.ply", "NaN or Inf", "x/y/z of 64 Gaussians", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene("in/nan.ply", x=np.nan), "-o", ws.out, *RENDER]


@case("render/infinite-scales", 1, "NaN or Inf", "scale_0..2", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene("in/inf.ply", scale_1=np.inf), "-o", ws.out, *RENDER]


@case("render/zero-vertices", 1, "no Gaussians", quiet=False)
def _(ws: Workspace) -> list[Any]:
    empty = {name: values[:0] for name, values in scene_vertices().items()}
    return ["render", write_ply(ws.path("in/empty.ply"), empty), "-o", ws.out, *RENDER]


@case("render/missing-properties", 1, "lacks Gaussian properties", "rot_0", quiet=False)
def _(ws: Workspace) -> list[Any]:
    vertices = {k: v for k, v in scene_vertices().items() if not k.startswith("rot_")}
    return ["render", write_ply(ws.path("in/norot.ply"), vertices), "-o", ws.out, *RENDER]


@case("render/truncated-file", 1, "truncated PLY", quiet=False)
def _(ws: Workspace) -> list[Any]:
    data = ws.scene("src/scene.ply").read_bytes()
    return ["render", ws.file("in/cut.ply", data[: len(data) - 500]), "-o", ws.out, *RENDER]


@case("render/header-claims-a-trillion-vertices", 1, "truncated PLY", "1000000000000 x 56 bytes", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["render", write_ply(ws.path("in/huge.ply"), scene_vertices(), count=10**12), "-o", ws.out, *RENDER]


@case("render/not-a-ply", 1, "photo.ply", "not a PLY file", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.file("in/photo.ply", ws.photo("src/photo.png").read_bytes()), "-o", ws.out, *RENDER]


@case("render/ascii-ply", 1, "unsupported PLY format 'ascii 1.0'", quiet=False)
def _(ws: Workspace) -> list[Any]:
    text = b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0.5\n"
    return ["render", ws.file("in/ascii.ply", text), "-o", ws.out, *RENDER]


@case("render/all-behind-the-camera", 1, "behind the camera", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene("in/behind.ply", z=-2.0), "-o", ws.out, *RENDER]


@case("render/zero-rotations", 1, "all-zero rotation", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene("in/rot.ply", rot_0=0.0), "-o", ws.out, *RENDER]


@case("render/zero-focal-length", 1, "metadata is unusable", "focal length 0 px", quiet=False)
def _(ws: Workspace) -> list[Any]:
    path = write_ply(ws.path("in/f0.ply"), scene_vertices(), scene_extras(f_px=0.0))
    return ["render", path, "-o", ws.out, *RENDER]


@case("render/absurd-image-size", 1, "100000x100000 render", "16384", "--resolution", quiet=False)
def _(ws: Workspace) -> list[Any]:
    path = write_ply(ws.path("in/big.ply"), scene_vertices(), scene_extras(width=200_000, height=200_000))
    return ["render", path, "-o", ws.out, *RENDER]


@case("render/existing-video-without-force", 1, "scene.mp4", "already exists", "--force")
def _(ws: Workspace) -> list[Any]:
    ws.file("out/scene.mp4", b"an earlier video")
    return ["render", ws.scene(), "-o", ws.out, *RENDER]


@case("render/ffmpeg-dies-mid-video", 1, "scene.mp4", "Broken pipe", "no partial output was left", quiet=False)
def _(ws: Workspace) -> list[Any]:
    fake_ffmpeg(ws.monkeypatch, die_after=1)
    return ["render", ws.scene(), "-o", ws.out, *RENDER]


@case("render/ffmpeg-exits-with-an-error", 1, "ffmpeg exited with status 1", "no partial output", quiet=False)
def _(ws: Workspace) -> list[Any]:
    fake_ffmpeg(ws.monkeypatch, exit_status=1)
    return ["render", ws.scene(), "-o", ws.out, *RENDER]


@case("render/disk-full-writing-png-frames", 1, "scene_frames", "no space left", quiet=False)
def _(ws: Workspace) -> list[Any]:
    scene = ws.scene()
    fail_writes(ws.monkeypatch, ws.out, disk_full(), budget=100)
    return ["render", scene, "-o", ws.out, *RENDER, "--png"]


@case("render/interrupted-between-frames", 130, "interrupted", quiet=False)
def _(ws: Workspace) -> list[Any]:
    from sharp_export.reference.render import video

    real, calls = video.render_scene, []

    def interrupt_second_frame(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ws.monkeypatch.setattr(video, "render_scene", interrupt_second_frame)
    return ["render", ws.scene(), "-o", ws.out, *RENDER]


@case("render/negative-eps2d", 2, "--eps2d")
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene(), "-o", ws.out, *RENDER, "--eps2d", "-0.3"]


@case("render/frames-zero", 2, "--frames")
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene(), "-o", ws.out, "--frames", "0"]


@case("render/resolution-too-large", 1, "--resolution 100000x10", "16384")
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene(), "-o", ws.out, *RENDER, "--resolution", "100000x10"]


@case("render/folder-given-as-scene", 1, "is a folder, not a scene file")
def _(ws: Workspace) -> list[Any]:
    ws.path("in/scenes").mkdir(parents=True)
    return ["render", ws.path("in/scenes"), "-o", ws.out, *RENDER]


@case("render/batch-goes-past-a-bad-scene", 1, "1 of 2 inputs failed", "nan.ply",
      new=("out/good.mp4", "out/good.depth.mp4"), quiet=False, failed=("nan.ply",))  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    return ["render", ws.scene("in/good.ply"), ws.scene("in/nan.ply", x=np.nan), "-o", ws.out, *RENDER]


# ---- view and the compact formats ---------------------------------------------------------------------------------
# `view` refuses what `render` refuses, with the same lines, before any server starts.


@case("view/missing-scene", 1, "nope.ply", "scene file not found")
def _(ws: Workspace) -> list[Any]:
    return ["view", ws.path("in/nope.ply"), "--port", "0"]


@case("view/nan-values", 1, "nan.ply", "NaN or Inf", "x/y/z of 64 Gaussians", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["view", ws.scene("in/nan.ply", x=np.nan), "--port", "0"]


@case("view/truncated-file", 1, "truncated PLY", quiet=False)
def _(ws: Workspace) -> list[Any]:
    data = ws.scene("in/full.ply").read_bytes()
    return ["view", ws.file("in/cut.ply", data[: len(data) - 500]), "--port", "0"]


@case("view/not-a-sharp-ply", 1, "lacks Gaussian properties", "f_dc_0", quiet=False)
def _(ws: Workspace) -> list[Any]:
    mesh = {name: np.zeros(8, np.float32) for name in ("x", "y", "z", "nx", "ny", "nz")}  # a point cloud
    return ["view", write_ply(ws.path("in/mesh.ply"), mesh, {}), "--port", "0"]


@case("view/not-a-ply", 1, "photo.ply", "not a PLY file", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["view", ws.file("in/photo.ply", ws.photo("src/photo.png").read_bytes()), "--port", "0"]


@case("view/corrupt-spz", 1, "bad.spz", "not a readable SPZ file", quiet=False)
def _(ws: Workspace) -> list[Any]:
    pytest.importorskip("gsply")
    return ["view", ws.file("in/bad.spz", b"\x1f\x8b not really gzip"), "--port", "0"]


@case("view/unknown-file-type", 1, "scene.obj", "unknown scene file type '.obj'", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["view", ws.file("in/scene.obj", b"v 0 0 0\n"), "--port", "0"]


@case("view/port-in-use", 1, "port", "is in use", "--port")
def _(ws: Workspace) -> list[Any]:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ws.held.append(busy)
    return ["view", ws.scene(), "--port", str(busy.getsockname()[1])]


@case("predict/y-up-with-spz", 1, "--y-up applies to", "SPZ is y-up by definition")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--format", "spz", "--y-up"]


@case("predict/spz-without-gsply", 2, "--format spz needs the Python package 'gsply'", "sharp-export[spz]")
def _(ws: Workspace) -> list[Any]:
    import importlib.util

    real = importlib.util.find_spec
    ws.monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gsply" else real(name, *a))
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--format", "spz"]


# ---- run ----------------------------------------------------------------------------------------------------------


@case("run/verify-wrong-hash", 1, "do not match the manifest", "model.onnx.data sha256")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    data = bytearray((art / "model.onnx.data").read_bytes())
    data[1000] ^= 0xFF  # same size: only the hash can tell
    (art / "model.onnx.data").write_bytes(bytes(data))
    return ["run", art, ws.photo(), "-o", ws.out, "--verify"]


@case("run/truncated-external-data", 1, "model.onnx.data has", "truncated copy?")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    data = (art / "model.onnx.data").read_bytes()
    (art / "model.onnx.data").write_bytes(data[: len(data) // 3])
    return ["run", art, ws.photo(), "-o", ws.out]


@case("run/damaged-model-same-size", 1, "ONNX Runtime cannot load this model", "--verify")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    size = (art / "model.onnx").stat().st_size
    (art / "model.onnx").write_bytes(b"\x07" * size)
    return ["run", art, ws.photo(), "-o", ws.out]


@case("run/manifest-not-json", 1, "manifest.json", "not valid JSON")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    (art / "manifest.json").write_text('{"schema_version": 1, "target": ')
    return ["run", art, ws.photo(), "-o", ws.out]


@case("run/manifest-points-outside-the-artifact", 1, "malformed manifest", "'../../etc/passwd'")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    ws.edit_manifest(art, lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "size": 1}}))
    return ["run", art, ws.photo(), "-o", ws.out, "--verify"]


@case("run/manifest-of-an-unknown-target", 1, "art", "names target 'bogus'", "known targets: ")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    ws.edit_manifest(art, lambda m: m.update(target="bogus"))
    return ["run", art, ws.photo(), "-o", ws.out]


@case("run/manifest-from-a-newer-version", 1, "schema_version 99")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    ws.edit_manifest(art, lambda m: m.update(schema_version=99))
    return ["run", art, ws.photo(), "-o", ws.out]


@case("run/manifest-without-resolution", 1, "malformed manifest", "preprocessing.resolution")
def _(ws: Workspace) -> list[Any]:
    art = ws.artifact()
    ws.edit_manifest(art, lambda m: m["preprocessing"].pop("resolution"))
    return ["run", art, ws.photo(), "-o", ws.out]


@case("run/not-an-artifact", 1, "not a sharp-export artifact (no manifest.json)")
def _(ws: Workspace) -> list[Any]:
    ws.path("folder").mkdir()
    return ["run", ws.path("folder"), ws.photo(), "-o", ws.out]


@case("run/decompression-bomb", 1, "decompression bomb", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["run", ws.artifact_source, ws.file("in/bomb.png", png_header_only(30000, 30000)), "-o", ws.out]


@case("run/batch-goes-past-a-bad-image", 1, "1 of 2 inputs failed", new=("out/good.ply",), quiet=False,
      failed=("bad.png",))  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    ws.photo("in/good.png")
    ws.file("in/bad.png", b"\x89PNG\r\n\x1a\n broken")
    return ["run", ws.artifact_source, ws.path("in"), "-o", ws.out]


@case("run/disk-full", 1, "photo.ply", "no space left", quiet=False)
def _(ws: Workspace) -> list[Any]:
    photo = ws.photo()
    fail_writes(ws.monkeypatch, ws.out, disk_full(), budget=0)
    return ["run", ws.artifact_source, photo, "-o", ws.out]


@case("run/existing-output-without-force", 1, "photo.ply", "already exists", "--force")
def _(ws: Workspace) -> list[Any]:
    ws.file("out/photo.ply", b"an earlier result")
    return ["run", ws.artifact_source, ws.photo(), "-o", ws.out]


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input(item: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_artifact: Path) -> None:
    run_case(item, tmp_path, monkeypatch, session_artifact)
