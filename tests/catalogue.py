"""The machinery of the bad-input catalogue (tests/test_bad_inputs*.py): every expected fault of every command is
one clear line and a documented exit code.

Each case builds its inputs in its own workspace (``tmp_path``), runs one CLI command in-process and ``run_case``
checks:

* the exit code (README "Exit codes"; click's parse errors are 2);
* stderr: no traceback, exactly one ``error:`` line, the last one; before any work it is the only line;
  README's "Errors and what to do" table has a row for it, with the exit code we got;
* the workspace afterwards: no temporary or partial file anywhere, no file changed or removed, and exactly
  the expected new files (nothing for a refused command, the good inputs' outputs for a batch).

Faults the machine cannot be asked for are simulated at the OS boundary: a full disk is ``open()`` whose
``write`` fails with ENOSPC after some bytes, a read-only folder is a chmod (or, as root, where chmod does
not stop writes, ``os.open``/``open``/``os.mkdir`` failing with EROFS), a dying ffmpeg a stand-in for
imageio-ffmpeg's frame writer. All models are the tiny preset or a 64 px stand-in; the one real artifact
is built once per session (conftest.py ``session_artifact``).

The cases live in the test files by command group; each keeps its own list (``CASES = []``,
``case = registrar(CASES)``) and parametrizes ``run_case`` over it. Not collected: the name does not start with
``test_``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from sharp_export.cli import cli

TINY = ("--preset", "tiny", "--seed", "0")
RENDER = ("--frames", "2", "--no-progress", "--renderer", "torch")
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
    held: list = field(default_factory=list)  # objects the case keeps alive while the command runs (a socket)

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


def registrar(cases: list[Case]) -> Callable:
    """The ``@case(name, exit_code, *fragments, ...)`` decorator of one test file: it appends to ``cases``."""

    def case(name: str, exit_code: int, *fragments: str, new: tuple[str, ...] = (), quiet: bool = True,
             failed: tuple[str, ...] = ()) -> Callable:  # fmt: skip
        def register(build: Callable[[Workspace], list[Any]]) -> Callable:
            cases.append(Case(name, exit_code, fragments, build, frozenset(new), quiet, failed))
            return build

        return register

    return case


# ---- the checks ---------------------------------------------------------------------------------------------------


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


def run_case(item: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_artifact: Path) -> None:
    """Build the case in ``tmp_path``, run its command in-process, and check exit code, stderr and workspace."""
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
    for held in ws.held:
        held.close()
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
