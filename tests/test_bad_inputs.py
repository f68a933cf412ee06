"""The bad-input catalogue as a whole, and the pieces it relies on.

The cases are in tests/test_bad_inputs_scenes.py (predict, render, run), tests/test_bad_inputs_exports.py
(parity, the export targets, env), tests/test_bad_inputs_batch.py (batch, before Ray starts) and
tests/test_bad_inputs_safety.py (--force, non-finite values, SIGTERM,
concurrent writers, across commands); the machinery in tests/catalogue.py.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from catalogue import RENDER, TINY, disk_full, png_header_only, save_photo, scene_vertices, write_ply
from click.testing import CliRunner
from PIL import Image
from test_bad_inputs_batch import CASES as BATCH_CASES
from test_bad_inputs_exports import CASES as EXPORT_CASES
from test_bad_inputs_safety import CASES as SAFETY_CASES
from test_bad_inputs_scenes import CASES as SCENE_CASES

from sharp_export.cli import cli
from sharp_export.errors import BatchError, OutputError, UserInputError, output_error

CASES = SCENE_CASES + EXPORT_CASES + SAFETY_CASES + BATCH_CASES


def test_the_catalogue_covers_every_command() -> None:
    commands = {c.name.split("/")[0] for c in CASES}
    assert commands >= {"predict", "render", "view", "run", "batch", "parity", "onnx", "coreml", "env", "triton"}
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    assert {c.exit_code for c in CASES} == {0, 1, 2, 3, 130, 143}


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
                                progress=False, replace=True)  # fmt: skip
    assert len(written) == 4 and (old / "color_0000.png").read_bytes() != b"old frame"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s_frames"]
