"""The bad-input catalogue: every expected fault of every command is one clear line and a documented exit code.

Each case builds its inputs in its own workspace (``tmp_path``), runs one CLI command in-process and checks:

* the exit code (README "Exit codes"; click's parse errors are 2);
* stderr: no traceback, exactly one ``error:`` line, the last one; before any work it is the only line;
  README's "Errors and what to do" table has a row for it, with the exit code we got;
* the workspace afterwards: no temporary or partial file anywhere, no file changed or removed, and exactly
  the expected new files (nothing for a refused command, the good inputs' outputs for a batch).

Faults the machine cannot be asked for are simulated at the OS boundary: a full disk is ``open()`` whose
``write`` fails with ENOSPC after some bytes, a read-only folder is a chmod (or, as root, where chmod does
not stop writes, ``os.open``/``open``/``os.mkdir`` failing with EROFS), a dying ffmpeg a stand-in for
imageio-ffmpeg's frame writer. All models are the tiny preset or a 64 px stand-in; the one real artifact
is built once per session.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import use_standin_model
from PIL import Image

from sharp_export.cli import cli
from sharp_export.errors import BatchError, OutputError, UserInputError, output_error

TINY = ("--preset", "tiny", "--seed", "0")
TEMP_MARKERS = (".tmp", ".partial", ".tmp-", ".old-", "_frames.", ".sharp-export-write-check-")
PY_OPEN = builtins.open

# ---- inputs ------------------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with almost no pixel data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def photo_pixels() -> np.ndarray:  # [48, 64, 3] uint8, smooth colours
    v, u = np.mgrid[0:48, 0:64]
    return np.stack([u * 4, v * 5, (u + v) * 2], axis=-1).astype(np.uint8)


def save_photo(path: Path, focal_length: object = None) -> Path:
    """A 64 x 48 photo; ``focal_length`` goes into the Exif sub-IFD's FocalLength tag when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if focal_length is not None:
        exif.get_ifd(0x8769)[0x920A] = focal_length
    Image.fromarray(photo_pixels()).save(path, exif=exif)
    return path


def scene_vertices(count: int = 64) -> dict[str, np.ndarray]:
    """A small renderable scene in the official PLY vertex layout (log scales, opacity logits, SH DC)."""
    rng = np.random.default_rng(0)
    columns = {
        "x": rng.uniform(-0.5, 0.5, count),
        "y": rng.uniform(-0.4, 0.4, count),
        "z": rng.uniform(2.0, 3.0, count),
        **{f"f_dc_{i}": rng.uniform(-1, 1, count) for i in range(3)},
        "opacity": np.full(count, 2.0),
        **{f"scale_{i}": np.full(count, np.log(0.05)) for i in range(3)},
        "rot_0": np.ones(count),
        **{f"rot_{i}": np.zeros(count) for i in range(1, 4)},
    }
    return {name: values.astype(np.float32) for name, values in columns.items()}


def scene_extras(f_px: float = 50.0, width: int = 64, height: int = 48) -> dict[str, np.ndarray]:
    return {
        "intrinsic": np.array([f_px, 0, width / 2, 0, f_px, height / 2, 0, 0, 1], np.float32),
        "image_size": np.array([width, height], np.uint32),
        "color_space": np.array([0], np.uint8),
    }


def write_ply(
    path: Path,
    vertices: dict[str, np.ndarray],
    extras: dict[str, np.ndarray] | None = None,
    count: int | None = None,  # the vertex count the header claims (default: the real one)
) -> Path:
    """A binary little-endian PLY from columns; each extra is a one-property element of its own name."""
    names = {"f4": "float", "u4": "uint", "u1": "uchar"}
    first = next(iter(vertices.values()), np.zeros(0, np.float32))
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {len(first) if count is None else count}"]
    lines += [f"property float {name}" for name in vertices]
    body = np.stack(list(vertices.values()), axis=-1).astype("<f4").tobytes() if vertices else b""
    for name, values in (extras if extras is not None else scene_extras()).items():
        lines += [f"element {name} {len(values)}", f"property {names[values.dtype.str[1:]]} {name}"]
        body += values.astype(values.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\nend_header\n").encode() + body)
    return path


# ---- faults at the OS boundary ---------------------------------------------------------------------------------


def _under(path: Any, root: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).absolute().is_relative_to(root)
    except (TypeError, ValueError):
        return False  # file descriptors and the like


class FaultyFile:
    """A writable file that takes ``budget`` bytes, keeps them, then raises ``error`` (a full disk, Ctrl-C)."""

    def __init__(self, handle: Any, budget: int, error: BaseException):
        self._handle = handle
        self._budget = budget
        self._error = error

    def write(self, data: Any) -> int:
        data = bytes(data) if not isinstance(data, str) else data
        if len(data) > self._budget:
            self._handle.write(data[: self._budget])
            self._budget = 0
            raise self._error
        self._budget -= len(data)
        return self._handle.write(data)

    def __enter__(self) -> FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def fail_writes(monkeypatch: pytest.MonkeyPatch, root: Path, error: BaseException, budget: int = 100) -> None:
    """Every file opened for writing under ``root`` fails with ``error`` after ``budget`` bytes."""
    root = root.absolute()

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = PY_OPEN(file, mode, *args, **kwargs)
        if any(flag in mode for flag in "wax+") and _under(file, root):
            return FaultyFile(handle, budget, error)
        return handle

    monkeypatch.setattr(builtins, "open", faulty_open)
    monkeypatch.setattr(io, "open", faulty_open)


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def make_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` stops taking files: chmod where that works, else (root) EROFS from the OS calls."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except PermissionError:
        return  # the test restores the mode afterwards
    probe.unlink()
    folder.chmod(0o755)  # chmod does not stop this user (root): refuse the calls instead
    root = folder.absolute()

    def refuse(name: str, real: Callable) -> Callable:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if _under(path, root) and (name != "open" or _writes(args, kwargs)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
            return real(path, *args, **kwargs)

        return call

    def _writes(args: tuple, kwargs: dict) -> bool:
        flags = args[0] if args else kwargs.get("flags", kwargs.get("mode", os.O_RDONLY))
        if isinstance(flags, str):
            return any(flag in flags for flag in "wax+")
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

    monkeypatch.setattr(os, "open", refuse("open", os.open))
    monkeypatch.setattr(os, "mkdir", refuse("mkdir", os.mkdir))
    monkeypatch.setattr(builtins, "open", refuse("open", builtins.open))
    monkeypatch.setattr(io, "open", refuse("open", io.open))


def fake_ffmpeg(monkeypatch: pytest.MonkeyPatch, *, die_after: int | None = None, exit_status: int = 0) -> None:
    """Replace imageio-ffmpeg's writer: it writes frames to the file itself, and either dies after
    ``die_after`` frames as a broken pipe (imageio's multi-line IOError) or exits with ``exit_status``."""
    import imageio_ffmpeg

    class Process:
        def poll(self) -> int:
            return exit_status

    def write_frames(path: str, size: tuple[int, int], **kwargs: Any) -> Iterator[None]:
        p = Process()  # noqa: F841 -- read by the writer, as imageio-ffmpeg's own local 'p'
        with PY_OPEN(path, "wb") as handle:
            frames = 0
            while True:
                try:
                    frame = yield
                except GeneratorExit:
                    return
                if die_after is not None and frames >= die_after:
                    raise OSError("[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg -y ...\n\nFFMPEG STDERR OUTPUT:\n")
                handle.write(np.asarray(frame).tobytes())
                frames += 1

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", write_frames)


# ---- the workspace a case builds in -------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path
    monkeypatch: pytest.MonkeyPatch
    artifact_source: Path  # the session's tiny ONNX artifact (read-only use; copy it to damage it)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def photo(self, rel: str = "in/photo.png", focal_length: object = None) -> Path:
        return save_photo(self.path(rel), focal_length)

    def file(self, rel: str, data: bytes) -> Path:
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def scene(self, rel: str = "in/scene.ply", **changes: Any) -> Path:
        vertices = scene_vertices()
        for name, value in changes.items():
            vertices[name] = np.broadcast_to(np.float32(value), vertices[name].shape).copy()
        return write_ply(self.path(rel), vertices)

    def artifact(self, rel: str = "art") -> Path:
        """A private copy of the session artifact (to damage)."""
        target = self.path(rel)
        shutil.copytree(self.artifact_source, target)
        return target

    def edit_manifest(self, artifact: Path, edit: Callable[[dict], None]) -> None:
        path = artifact / "manifest.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))


@dataclass
class Case:
    name: str
    exit_code: int
    fragments: tuple[str, ...]  # must all appear in the error line (or the warning line, for exit 0)
    build: Callable[[Workspace], list[Any]]  # sets the case up, returns the command line
    new: frozenset[str] = frozenset()  # files (relative to the workspace) the command must leave behind
    quiet: bool = True  # the error comes before any work: it is the only line on stderr
    failed: tuple[str, ...] = ()  # inputs that must each have a "FAILED:" line (batches)


CASES: list[Case] = []


def case(name: str, exit_code: int, *fragments: str, new: tuple[str, ...] = (), quiet: bool = True,
         failed: tuple[str, ...] = ()) -> Callable:  # fmt: skip
    def register(build: Callable[[Workspace], list[Any]]) -> Callable:
        CASES.append(Case(name, exit_code, fragments, build, frozenset(new), quiet, failed))
        return build

    return register


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


@case("predict/y-up-with-official-format", 1, "--y-up applies to --format viewer or splat")
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--y-up"]


@case("predict/render-ffmpeg-dies", 1, "photo.mp4", "Broken pipe", "no partial output was left",
      new=("out/photo.ply",), quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    fake_ffmpeg(ws.monkeypatch, die_after=1)
    return ["predict", ws.photo(), "-o", ws.out, *TINY, "--render", "--frames", "3"]


# ---- render -------------------------------------------------------------------------------------------------------

RENDER = ("--frames", "2", "--no-progress", "--renderer", "torch")


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


# ---- the checks ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ONNX artifact every run/parity case reads, with its weights in model.onnx.data."""
    target = tmp_path_factory.mktemp("bad_inputs") / "tiny-onnx"
    result = CliRunner().invoke(cli, ["onnx", *TINY, "-o", str(target), "--no-parity", "--external-data", "always"])
    assert result.exit_code == 0, result.output
    assert (target / "model.onnx.data").is_file()
    return target


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Relative path -> (size, first KB) of every file under ``root`` (enough to see a change)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with PY_OPEN(path, "rb") as handle:
                files[path.relative_to(root).as_posix()] = (path.stat().st_size, handle.read(1024))
    return files


def folders(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_dir()}


def readme_error_table() -> list[tuple[list[re.Pattern], int | None]]:
    """README "Errors and what to do": (fragment patterns, exit code or None for 'highest of the failures')."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Errors and what to do", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        patterns = []
        for fragment in re.findall(r"`([^`]+)`", cells[0]):
            pattern = re.escape(fragment).replace(re.escape("..."), ".*").replace(re.escape("<Error>"), r"\w+")
            patterns.append(re.compile(pattern.replace(re.escape("N of M"), r"\d+ of \d+")))
        rows.append((patterns, int(cells[1]) if cells[1].isdigit() else None))
    return rows


def check_documented(line: str, exit_code: int) -> None:
    """The README's error table has a row for this line, and its exit code is the one we got."""
    rows = [code for patterns, code in readme_error_table() if any(p.search(line) for p in patterns)]
    assert rows, f"README's error table has no row for: {line}"
    assert any(code in (exit_code, None) for code in rows), f"README gives exit {rows} for: {line}"


def check_stderr(result: Result, item: Case) -> None:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if item.exit_code == 0:
        assert not errors, result.stderr
        warnings = [line for line in lines if line.startswith("warning:")]
        assert len(warnings) == 1, result.stderr
        for fragment in item.fragments:
            assert fragment in warnings[0], warnings[0]
        check_documented(warnings[0], 0)
        return
    assert errors == lines[-1:], result.stderr  # one error line, the last one
    if item.quiet:
        assert len(lines) == 1, result.stderr
    for fragment in item.fragments:
        assert fragment in errors[0], errors[0]
    for name in item.failed:
        assert any("FAILED:" in line and name in line for line in lines), result.stderr
    check_documented(errors[0], item.exit_code)


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input(item: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_artifact: Path) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path, monkeypatch, session_artifact)
    try:
        args = [str(a) for a in item.build(ws)]
        before, folders_before = snapshot(tmp_path), folders(tmp_path)
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    finally:
        for folder in (tmp_path / "out", tmp_path / "locked"):
            if folder.is_dir():
                folder.chmod(0o755)
    monkeypatch.undo()  # the simulated faults end with the command
    assert result.exit_code == item.exit_code, result.output
    check_stderr(result, item)
    after = snapshot(tmp_path)
    leftovers = [name for name in after if any(marker in Path(name).name for marker in TEMP_MARKERS)]
    assert not leftovers, f"temporary or partial files left: {leftovers}"
    assert {name: after.get(name) for name in before} == before, "an existing file was changed or removed"
    assert set(after) - set(before) == item.new, "unexpected new files"
    for name in item.new:
        assert after[name][0] > 0
    needed = {parent.as_posix() for name in item.new for parent in Path(name).parents} - {"."}
    assert folders(tmp_path) - folders_before - needed == set(), "a folder was created and left behind"


def test_the_catalogue_covers_every_command() -> None:
    commands = {c.name.split("/")[0] for c in CASES}
    assert commands >= {"predict", "render", "run", "parity", "onnx", "coreml", "env"}
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    assert {c.exit_code for c in CASES} == {0, 1, 2, 130}


# ---- the pieces the catalogue relies on ----------------------------------------------------------------------------


def test_max_pixels_default_is_one_number() -> None:
    from sharp_export.commands.options import DEFAULT_MAX_PIXELS as CLI_DEFAULT
    from sharp_export.reference.preprocess import DEFAULT_MAX_PIXELS

    assert CLI_DEFAULT == DEFAULT_MAX_PIXELS == 100_000_000


def test_raising_max_pixels_lets_a_big_image_through(tmp_path: Path) -> None:
    from sharp_export.reference.preprocess import load_image

    path = save_photo(tmp_path / "p.png")
    with pytest.raises(UserInputError, match="--max-pixels 3072"):
        load_image(path, max_pixels=3071)
    assert load_image(path, max_pixels=3072).rgb.shape == (48, 64, 3)


def test_pil_keeps_its_own_limit_after_a_refusal(tmp_path: Path) -> None:
    from sharp_export.reference.preprocess import load_image

    limit = Image.MAX_IMAGE_PIXELS
    bomb = tmp_path / "b.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))
    with pytest.raises(UserInputError, match="decompression bomb"):
        load_image(bomb)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_output_error_maps_write_faults_only(tmp_path: Path) -> None:
    full = output_error(disk_full(), tmp_path / "x.ply")
    assert isinstance(full, OutputError) and "no space left" in str(full) and "x.ply" in str(full)
    assert output_error(OSError(errno.ENOENT, "No such file"), tmp_path) is None
    assert output_error(OSError("no errno"), tmp_path) is None


def test_batch_error_exits_with_the_worst_failure() -> None:
    from sharp_export.errors import MissingDependencyError

    failed = [(Path("a.jpg"), UserInputError("bad")), (Path("b.heic"), MissingDependencyError("x", "heic", "HEIC"))]
    error = BatchError(failed, 3, "the other scene was written")
    assert error.exit_code == 2 and "2 of 3 inputs failed (a.jpg, b.heic)" in error.one_line()


def test_force_replaces_existing_outputs(tmp_path: Path) -> None:
    photo, scene = save_photo(tmp_path / "in" / "photo.png"), write_ply(tmp_path / "in" / "scene.ply", scene_vertices())
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.ply").write_bytes(b"old")
    (out / "scene.mp4").write_bytes(b"old")
    runner = CliRunner()
    result = runner.invoke(cli, ["predict", str(photo), "-o", str(out), *TINY, "--force"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["render", str(scene), "-o", str(out), *RENDER, "--force"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "photo.ply").read_bytes()[:4] == b"ply\n" and (out / "scene.mp4").stat().st_size > 100
    assert sorted(p.name for p in out.iterdir()) == ["photo.ply", "scene.depth.mp4", "scene.mp4"]


def test_png_frames_replace_an_old_folder_only_when_complete(tmp_path: Path) -> None:
    from sharp_export.reference.ply import load_ply
    from sharp_export.reference.render import make_trajectory, render_trajectory

    gaussians, meta = load_ply(write_ply(tmp_path / "s.ply", scene_vertices()))
    cameras = make_trajectory(gaussians, meta, num_frames=2)
    old = tmp_path / "out" / "s_frames"
    old.mkdir(parents=True)
    (old / "color_0000.png").write_bytes(b"old frame")
    written = render_trajectory(gaussians, meta, cameras, tmp_path / "out", "s", backend="torch", png=True,
                                progress=False)  # fmt: skip
    assert len(written) == 4 and (old / "color_0000.png").read_bytes() != b"old frame"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s_frames"]
