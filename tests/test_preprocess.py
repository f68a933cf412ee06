"""Image loading and model-input preparation against the golden data and ml-sharp's EXIF rules."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.reference.preprocess import list_images, load_image, prepare_input
from sharp_export.samples import SAMPLE_NAMES, default_sample_path, sample_image_path

DIAGONAL_35MM = math.sqrt(36**2 + 24**2)


def expected_f_px(f_35mm: float, width: int, height: int) -> float:
    return f_35mm * math.sqrt(width**2 + height**2) / DIAGONAL_35MM


def save_with_exif(path, pixels: np.ndarray, main: dict | None = None, exif_ifd: dict | None = None) -> None:
    """Write an image whose EXIF has ``main`` tags in IFD0 and ``exif_ifd`` tags in the Exif sub-IFD."""
    exif = Image.Exif()
    for tag, value in (main or {}).items():
        exif[tag] = value
    sub = exif.get_ifd(0x8769)
    for tag, value in (exif_ifd or {}).items():
        sub[tag] = value
    Image.fromarray(pixels).save(path, exif=exif)


def test_golden_640x480_input(golden_dir):
    golden = np.load(golden_dir / "out_640x480_perturbed.npz")
    image = load_image(golden_dir / "input_640x480.png")
    assert (image.width, image.height) == (640, 480)
    # No EXIF: ml-sharp's 30 mm default. Same float64 formula, so equal to the last bit.
    assert image.f_px == float(golden["f_px"])
    assert image.f_px == pytest.approx(expected_f_px(30.0, 640, 480), rel=1e-15)
    tensor, disparity_factor = prepare_input(image, 384)
    assert tensor.shape == (1, 3, 384, 384) and tensor.dtype == torch.float32
    # README: "float64 sum 219457.550329" (printed to 6 decimals); measured 219457.55032867938.
    assert tensor.double().sum().item() == pytest.approx(219457.550329, abs=1e-6)
    assert disparity_factor.numpy().tobytes() == golden["disparity_factor"].tobytes()


def test_square_input_is_not_resampled(golden_dir):
    image = load_image(golden_dir / "input.png")
    tensor, disparity_factor = prepare_input(image, 384)
    expected = torch.from_numpy(np.array(Image.open(golden_dir / "input.png"))).permute(2, 0, 1).float() / 255.0
    assert torch.equal(tensor[0], expected)
    assert disparity_factor.item() == pytest.approx(expected_f_px(30.0, 384, 384) / 384, rel=1e-7)


def test_prepare_input_dtype_and_resize_corners(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    tensor, factor = prepare_input(load_image(tmp_path / "x.png"), 64, dtype=torch.float16)
    assert tensor.dtype == torch.float16 and factor.dtype == torch.float16
    # align_corners=True keeps the four corner pixels exactly (up to the fp16 cast).
    corners = tensor[0, :, [0, 0, -1, -1], [0, -1, 0, -1]].float()
    expected = torch.from_numpy(pixels[[0, 0, -1, -1], [0, -1, 0, -1]].T / 255.0).float()
    assert torch.allclose(corners, expected, atol=5e-4)  # fp16 rounding of values in [0, 1]: <= 2.4e-4


@pytest.mark.parametrize(
    ("orientation", "turns"),
    [(1, 0), (3, 2), (6, -1), (8, 1), (2, 0)],  # 2 (mirror) is ignored by ml-sharp, so by us
)
def test_exif_orientation(tmp_path, orientation, turns):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    save_with_exif(tmp_path / "o.png", pixels, main={0x0112: orientation})  # PNG: lossless, exact check
    image = load_image(tmp_path / "o.png")
    expected = np.rot90(pixels, k=turns)  # k=-1: clockwise, what orientation 6 asks for
    np.testing.assert_array_equal(image.rgb, expected)
    assert (image.height, image.width) == expected.shape[:2]


def test_exif_orientation_jpeg(tmp_path):
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:20, :40] = 255  # white top-left quadrant
    save_with_exif(tmp_path / "o.jpg", pixels, main={0x0112: 6}, exif_ifd={0xA405: 26})
    image = load_image(tmp_path / "o.jpg")
    assert (image.width, image.height) == (40, 80)
    # After a clockwise quarter turn the white block sits top-right.
    assert image.rgb[:40, 20:].mean() > 240 and image.rgb[:40, :20].mean() < 15
    assert image.f_px == pytest.approx(expected_f_px(26, 40, 80), rel=1e-12)


@pytest.mark.parametrize(
    ("main", "exif_ifd", "f_35mm"),
    [
        ({}, {0xA405: 50}, 50.0),  # FocalLengthIn35mmFilm
        ({}, {0xA405: 50, 0x920A: 4.25}, 50.0),  # 35 mm value wins over the raw one
        ({}, {0xA405: 0, 0x920A: 4.25}, 4.25 * 8.4),  # 35 mm < 1 -> raw focal length, < 10 mm -> x 8.4
        ({}, {0x920A: 24.0}, 24.0),  # raw focal length >= 10 mm used as is
        ({}, {}, 30.0),  # nothing -> 30 mm
        ({0x920A: 35.0}, {}, 35.0),  # non-standard: FocalLength in IFD0 still found
    ],
)
def test_focal_length_rules(tmp_path, main, exif_ifd, f_35mm):
    save_with_exif(tmp_path / "f.jpg", np.full((30, 40, 3), 128, np.uint8), main=main, exif_ifd=exif_ifd)
    image = load_image(tmp_path / "f.jpg")
    assert image.f_px == pytest.approx(expected_f_px(f_35mm, 40, 30), rel=1e-12)
    _, factor = prepare_input(image, 16)
    assert factor.item() == pytest.approx(image.f_px / 40, rel=1e-7)


def test_grey_rgba_and_palette(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, size=(8, 9), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png").rgb, np.stack([grey] * 3, axis=-1))

    rgba = np.random.default_rng(2).integers(0, 256, size=(8, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png").rgb
    assert loaded.shape == (8, 9, 3) and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, rgba[:, :, :3])

    palette = Image.fromarray(rgba[:, :, :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png").rgb, np.array(palette.convert("RGB")))


def test_heic_roundtrip(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pixels = np.full((32, 48, 3), (200, 80, 40), dtype=np.uint8)
    pillow_heif.from_bytes(mode="RGB", size=(48, 32), data=pixels.tobytes()).save(tmp_path / "h.heic", quality=95)
    image = load_image(tmp_path / "h.heic")
    assert image.rgb.shape == (32, 48, 3)
    assert np.abs(image.rgb.astype(int) - pixels).max() <= 6  # lossy HEVC of a flat colour: measured 1


def test_heic_without_pillow_heif(tmp_path, monkeypatch):
    (tmp_path / "h.heic").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # makes `import pillow_heif` fail
    with pytest.raises(MissingDependencyError, match="pillow-heif"):
        load_image(tmp_path / "h.heic")


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(UserInputError, match="not found") as missing:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(missing.value)
    with pytest.raises(UserInputError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(UserInputError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    pixels = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_list_images(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("z.png", "a.JPG", "b/c.heic", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    single = tmp_path / "z.png"
    found = list_images([tmp_path, single])
    assert found == [tmp_path / "a.JPG", tmp_path / "b" / "c.heic", tmp_path / "z.png", single]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no images"):
        list_images([tmp_path / "empty"])
    with pytest.raises(UserInputError, match="not found"):
        list_images([tmp_path / "missing.png"])


def test_samples_ship_with_scikit_image():
    assert set(SAMPLE_NAMES) == {"astronaut", "coffee", "chelsea", "rocket", "motorcycle_left"}
    sizes = {}
    for name in SAMPLE_NAMES:
        image = load_image(sample_image_path(name))
        sizes[name] = (image.width, image.height)
        assert image.f_px == pytest.approx(expected_f_px(30.0, image.width, image.height), rel=1e-12)
    assert sizes["coffee"] == (600, 400) and sizes["astronaut"] == (512, 512)
    assert default_sample_path() == sample_image_path("coffee")
    with pytest.raises(UserInputError, match="unknown sample"):
        sample_image_path("lena")
