"""Every image mode PIL decodes gives the colours of its 8-bit sRGB equivalent (issue 32, class 3).

Each row of ``MODES`` saves the same picture in one mode and file format and loads it with ``load_image``; the
result must be within one 8-bit step of the reference: the 8-bit RGB picture itself, or for grey modes its grey
version, replicated. Alpha is dropped as ml-sharp drops it (the colours stored under transparent pixels stay) and
said once per image. The 8-bit RGB path itself is pinned by tests/test_preprocess.py and tests/test_golden_data.py.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features

from sharp_export.reference.preprocess import ALPHA_NOTE, load_image, to_rgb

# A smooth colour ramp with dark, light and saturated corners: [48, 64, 3] uint8.
V, U = np.mgrid[0:48, 0:64]
RGB = np.stack([U * 4, V * 5, (U + V) * 2], axis=-1).astype(np.uint8)
GREY = np.asarray(Image.fromarray(RGB).convert("L"))  # PIL's ITU-R 601 luma, the 8-bit grey of the picture
ALPHA = ((U * 3 + V) % 256).astype(np.uint8)  # varied, with fully transparent pixels


def png16(path: Path, values: np.ndarray, colour_type: int) -> None:  # values [H, W] or [H, W, C] uint16
    """A 16-bit PNG written by hand (PIL writes 16-bit grey only): colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    height, width = values.shape[:2]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def save(image: Image.Image, name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        image.save(path)
        return path

    return write


def raw(write_bytes: Callable[[Path], None], name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        write_bytes(folder / name)
        return folder / name

    return write


BASE = Image.fromarray(RGB)
RGBA = Image.fromarray(np.dstack([RGB, ALPHA]))
WIDE = RGB.astype(np.uint16) * 257  # 8-bit values on the 16-bit scale: v * 257
PALETTE = BASE.quantize(256)  # its own 8-bit equivalent is the palette's colours, not the original
PALETTE_RGB = np.asarray(PALETTE.convert("RGB"))
TRANSPARENT_PALETTE = PALETTE.copy()
TRANSPARENT_PALETTE.info["transparency"] = 0

GREY3 = np.repeat(GREY[..., None], 3, axis=-1)
GREY16 = GREY.astype(np.uint16) * 257
ALPHA16 = ALPHA.astype(np.uint16) * 257
BIG_ENDIAN_GREY = Image.frombytes("I;16B", (64, 48), GREY16.astype(">u2").tobytes())  # convert() would clip it

# (id, writer, reference [H, W, 3] uint8, has alpha)
MODES = [
    ("1-png", save(BASE.convert("1"), "a.png"), np.asarray(BASE.convert("1").convert("RGB")), False),
    ("L-png", save(BASE.convert("L"), "a.png"), GREY3, False),
    ("LA-png", save(Image.fromarray(np.dstack([GREY, ALPHA]), "LA"), "a.png"), GREY3, True),
    ("LA-tif", save(Image.fromarray(np.dstack([GREY, ALPHA]), "LA"), "a.tif"), GREY3, True),
    ("P-png", save(PALETTE, "a.png"), PALETTE_RGB, False),
    ("P-transparent-png", save(TRANSPARENT_PALETTE, "a.png"), PALETTE_RGB, True),
    ("PA-tif", save(RGBA.convert("PA"), "a.tif"), np.asarray(RGBA.convert("PA").convert("RGB")), True),
    ("I;16-png", save(Image.fromarray(GREY16), "a.png"), GREY3, False),
    ("I;16-tif", save(Image.fromarray(GREY16), "a.tif"), GREY3, False),
    ("I;16B-tif", save(BIG_ENDIAN_GREY, "a.tif"), GREY3, False),
    ("I-tif", save(Image.fromarray(GREY16.astype(np.int32)), "a.tif"), GREY3, False),
    ("F-tif", save(Image.fromarray(GREY.astype(np.float32) / 255), "a.tif"), GREY3, False),
    ("RGB-png", save(BASE, "a.png"), RGB, False),
    ("RGB-16bit-png", raw(lambda p: png16(p, WIDE, 2), "a.png"), RGB, False),
    ("RGBA-png", save(RGBA, "a.png"), RGB, True),
    ("RGBA-16bit-png", raw(lambda p: png16(p, np.dstack([WIDE, ALPHA16]), 6), "a.png"), RGB, True),
    ("LA-16bit-png", raw(lambda p: png16(p, np.dstack([GREY16, ALPHA16]), 4), "a.png"), GREY3, True),
    ("CMYK-tif", save(BASE.convert("CMYK"), "a.tif"), RGB, False),
    ("CMYK-jpg", save(BASE.convert("CMYK"), "a.jpg"), None, False),  # lossy: compared with its own RGB decode
    ("YCbCr-tif", save(BASE.convert("YCbCr"), "a.tif"), np.asarray(BASE.convert("YCbCr").convert("RGB")), False),
    ("RGBX-tif", save(BASE.convert("RGBX"), "a.tif"), RGB, False),
]  # fmt: skip


@pytest.mark.parametrize(("name", "write", "reference", "alpha"), MODES, ids=[m[0] for m in MODES])
def test_every_mode_gives_its_8_bit_colours(name, write, reference, alpha, tmp_path):
    path = write(tmp_path)
    loaded = load_image(path)
    if reference is None:  # a lossy file: its 8-bit equivalent is what PIL decodes, converted to RGB
        reference = np.asarray(Image.open(path).convert("RGB"))
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (48, 64, 3)
    worst = int(np.abs(loaded.rgb.astype(int) - reference.astype(int)).max())
    assert worst <= 1, f"{name}: {worst} 8-bit steps from its 8-bit equivalent"
    assert list(loaded.warnings).count(ALPHA_NOTE) == (1 if alpha else 0), loaded.warnings


def test_sixteen_bit_grey_is_not_saturated(tmp_path):
    # The case: PIL's own I;16 -> RGB conversion clips at 255, so a 16-bit photo came out almost white.
    Image.fromarray(GREY16).save(tmp_path / "g16.png")
    assert np.asarray(Image.open(tmp_path / "g16.png").convert("RGB")).mean() > 250  # what PIL alone gives
    assert np.array_equal(load_image(tmp_path / "g16.png").rgb, GREY3)


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:  # [H, W, 3] PIL LAB bytes -> [H, W, 3] uint8
    """CIE L*a*b* (D50) -> XYZ -> Bradford D50 to D65 -> linear sRGB -> sRGB, in float64 (textbook formulas)."""
    lightness = lab[..., 0].astype(np.float64) * 100 / 255
    a, b = (lab[..., i].view(np.int8).astype(np.float64) for i in (1, 2))  # PIL stores a*, b* as signed bytes
    fy = (lightness + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def inverse(f: np.ndarray) -> np.ndarray:
        return np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))

    xyz = np.stack([inverse(fx) * 0.96422, inverse(fy), inverse(fz) * 0.82521], axis=-1)
    bradford = np.array([[1.0478112, 0.0228866, -0.0501270], [0.0295424, 0.9904844, -0.0170491],
                         [-0.0092345, 0.0150436, 0.7521316]])  # fmt: skip
    srgb = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]])  # fmt: skip
    linear = np.clip(xyz @ np.linalg.inv(bradford).T @ np.linalg.inv(srgb).T, 0, 1)
    encoded = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.rint(encoded * 255).astype(np.uint8)


def test_lab_is_converted_exactly(tmp_path):
    rng = np.random.default_rng(0)
    colours = np.concatenate([RGB, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)], axis=1)
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(Image.fromarray(colours), to_lab).save(tmp_path / "lab.tif")
    stored = Image.open(tmp_path / "lab.tif")
    assert stored.mode == "LAB"
    loaded = load_image(tmp_path / "lab.tif").rgb.astype(int)
    # The LAB file's own 8-bit sRGB equivalent: within one step of the textbook conversion of its values.
    assert int(np.abs(loaded - _lab_to_srgb(np.asarray(stored))).max()) <= 1
    # 8-bit L*a*b* cannot hold every sRGB colour near black: 17 steps is the measured worst against the original.
    assert int(np.abs(loaded - colours.astype(int)).max()) <= 17


def test_float_and_sixteen_bit_values_out_of_range_are_clipped_and_said():
    wild = Image.fromarray(np.full((4, 4), 2.5, np.float32))
    rgb, notes = to_rgb(wild)
    assert (rgb == 255).all() and len(notes) == 1 and "outside 0..1" in notes[0]
    rgb, notes = to_rgb(Image.fromarray(np.full((4, 4), -7, np.int32)))
    assert (rgb == 0).all() and "outside 0..65535" in notes[0]


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_heic_and_avif_with_alpha(suffix, tmp_path):
    if suffix == ".heic":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
    elif not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    path = tmp_path / f"a{suffix}"
    RGBA.save(path, quality=100)
    loaded = load_image(path)
    # Lossy 4:2:0 files: the reference is the file's own decode (RGB part); the alpha is dropped and said once.
    if suffix == ".heic":
        own = np.asarray(pillow_heif.open_heif(path, convert_hdr_to_8bit=True).to_pillow())[..., :3]
    else:
        own = np.asarray(Image.open(path).convert("RGBA"))[..., :3]
    assert int(np.abs(loaded.rgb.astype(int) - own.astype(int)).max()) <= 1
    assert int(np.abs(loaded.rgb.astype(int) - RGB.astype(int)).max()) <= 8  # measured 4-5 (lossy codec)
    assert loaded.warnings == (ALPHA_NOTE,)


def test_predict_gives_the_same_colours_for_8_and_16_bit(tmp_path):
    # The symptom end to end: f_dc of a 16-bit grey PNG vs the same picture in 8 bits (tiny model, seed 0).
    from click.testing import CliRunner

    from sharp_export.cli import cli
    from sharp_export.reference.ply import read_ply_elements

    Image.fromarray(GREY).save(tmp_path / "eight.png")
    Image.fromarray(GREY16).save(tmp_path / "sixteen.png")
    args = ["predict", str(tmp_path / "eight.png"), str(tmp_path / "sixteen.png"), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--preset", "tiny", "--seed", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    eight, sixteen = (read_ply_elements(tmp_path / "out" / f"{n}.ply")["vertex"] for n in ("eight", "sixteen"))
    for name in ("f_dc_0", "f_dc_1", "f_dc_2"):
        assert np.array_equal(eight[name], sixteen[name]), name  # identical model input, identical PLY
