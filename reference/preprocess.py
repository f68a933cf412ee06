"""Image loading and model-input preparation, matching ml-sharp's ``io.load_rgb`` and ``predict_image``.

What ml-sharp does and we therefore do (docs/architecture.md §7.1):

* PIL decode; HEIC through pillow_heif (8-bit conversion of HDR files).
* EXIF orientation 3, 6, 8 applied as 180 / 270 / 90 degree rotations. The mirrored orientations
  (2, 4, 5, 7) are ignored by ml-sharp, so they are ignored here too: the focal length and the model
  input must be those of the official pipeline.
* 8-bit RGB as decoded; RGBA with its alpha dropped (the colours stored under transparent pixels are used,
  not composited onto a background), grey replicated to three channels. Each image with an alpha channel
  gets one warning line saying so.

Where ml-sharp passes other modes on as raw index or channel data (palette indices as grey, 16-bit values
cut to 8 bits), we give the colours of the image's 8-bit sRGB equivalent instead (``to_rgb``; tested
within one 8-bit step per mode in tests/test_image_modes.py): 1 and L grey; LA, PA, La, RGBa with their
alpha dropped; P through its palette (transparency dropped); 16-bit grey (I;16, I;16B, I;16L, I;16N) and
I scaled from 0..65535; F read as 0..1; CMYK, YCbCr, RGBX and HSV through PIL's conversions; LAB (CIE
L*a*b*, D50) through littlecms to sRGB. 16-bit RGB and RGBA PNGs are decoded to 8 bits by PIL itself.
Embedded ICC profiles are ignored for every mode, as ml-sharp ignores them for RGB.
* Focal length from EXIF, looked up in the main IFD and the Exif sub-IFD (0x8769, where cameras put
  FocalLength); f_px = f_35mm * sqrt(W^2 + H^2) / sqrt(36^2 + 24^2) with the rotated W, H.

Where we deliberately differ from ml-sharp, for hostile or broken files:

* Images above ``max_pixels`` (100 MP by default) are refused from their header, before any pixel is
  decoded (a decompression bomb is a small file that claims a huge size).
* A focal length that is not a number, or whose 35 mm equivalent lies outside [1, 10000] mm (0, negative,
  absurdly large), is replaced by the 30 mm default with a warning line; ml-sharp would carry it into f_px.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sharp_export.errors import MissingDependencyError, UserInputError

DEFAULT_FOCAL_35MM = 30.0  # ml-sharp's assumption when EXIF has no focal length
CROP_FACTOR_GUESS = 8.4  # ml-sharp's crude phone-sensor crop factor for raw focal lengths below 10 mm
HEIF_SUFFIXES = (".heic", ".heif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".avif") + HEIF_SUFFIXES
ALPHA_NOTE = "has an alpha channel, dropped as ml-sharp does (colours under transparent pixels are used as stored)"

EXIF_IFD = 0x8769
TAG_ORIENTATION = 0x0112
TAG_FOCAL_LENGTH = 0x920A  # FocalLength, mm of the real lens (Exif IFD)
TAG_FOCAL_35MM = 0xA405  # FocalLengthIn35mmFilm (PIL name; exiftool calls it FocalLenIn35mmFilm)
_FOCAL_TAG_NAMES = {TAG_FOCAL_35MM: "FocalLengthIn35mmFilm", TAG_FOCAL_LENGTH: "FocalLength"}
# Plausible 35 mm equivalent focal lengths: below 1 mm the diagonal field of view passes 174 degrees, above
# 10 m it is under 0.25 degrees. Values outside are corrupt EXIF, not lenses.
FOCAL_35MM_RANGE = (1.0, 10_000.0)
DEFAULT_MAX_PIXELS = 100_000_000  # decompression-bomb guard (--max-pixels); a 100 MP photo still loads


@dataclass
class LoadedImage:
    rgb: np.ndarray  # [H, W, 3] uint8, orientation applied
    f_px: float  # focal length in pixels for this (rotated) image
    width: int
    height: int
    path: Path
    # Fallbacks taken for broken metadata; the toolkit prints them (sharp_export.pipeline.load_photo), since
    # reference/ imports nothing of it but its errors.
    warnings: tuple[str, ...] = ()


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file as ml-sharp does; any unreadable input is a ``UserInputError`` naming the file.

    Images with more than ``max_pixels`` pixels are refused before decoding (decompression-bomb guard).
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError("image file not found", path=path, fix="check the path")
    if path.is_dir():
        raise UserInputError("expected an image file, got a directory", path=path, fix="pass the file itself")
    return _decode(path, path, max_pixels)


def load_image_bytes(data: bytes, name: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """``load_image`` for the bytes of an image file (read elsewhere: object storage, ``sharp-export batch``).

    The same decoder on the same bytes, so the same pixels, EXIF focal length and warnings as ``load_image`` on the
    file; ``name`` is where the bytes came from (named in errors; its suffix picks the HEIC decoder).
    """
    return _decode(io.BytesIO(data), Path(name), max_pixels)


def _decode(source: Path | io.BytesIO, path: Path, max_pixels: int) -> LoadedImage:
    pil = _open_pil(source, path, max_pixels)
    try:
        exif = _exif_values(pil)
        pil = _apply_orientation(pil, exif.get(TAG_ORIENTATION, 1))
        rgb, mode_notes = to_rgb(pil)
    except (OSError, ValueError, SyntaxError) as error:  # PIL reports truncated / corrupt data lazily
        raise UserInputError(f"cannot decode image data ({error})", path=path, fix="re-export the image") from error
    height, width = rgb.shape[:2]
    f_35mm, notes = checked_focal_length_35mm(exif)
    notes = mode_notes + notes
    return LoadedImage(
        rgb=rgb,
        f_px=focal_length_px(f_35mm, width, height),
        width=width,
        height=height,
        path=path,
        warnings=tuple(notes),
    )


def check_pixel_count(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image whose header claims more than ``max_pixels`` pixels (nothing decoded yet)."""
    if width * height > max_pixels:
        raise UserInputError(
            f"image is {width}x{height} ({width * height:,} pixels), above the --max-pixels limit of "
            f"{max_pixels:,}: refused unread as a possible decompression bomb",
            path=path,
            fix=f"if you trust the file, pass --max-pixels {width * height}",
        )


def _open_pil(source: Path | io.BytesIO, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """PIL image of ``source`` (a file, or its bytes), pixels decoded; ``path`` names it in errors."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() in HEIF_SUFFIXES:
        try:
            import pillow_heif
        except ImportError as error:
            raise MissingDependencyError("pillow-heif", "heic", "Reading HEIC images") from error
        try:
            heif = pillow_heif.open_heif(source, convert_hdr_to_8bit=True)
            check_pixel_count(path, *heif.size, max_pixels)
            return heif.to_pillow()
        except PermissionError as error:
            raise UserInputError("cannot read the file (permission denied)", path=path) from error
        except (OSError, ValueError, RuntimeError) as error:
            raise UserInputError(f"not a readable HEIC image ({error})", path=path) from error
    # Our limit replaces PIL's own (a warning at 89 MP, an error at 179 MP): the header is read with PIL's
    # check off, our check runs, and only then are pixels decoded.
    previous_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None
            pil = Image.open(source)
            check_pixel_count(path, pil.width, pil.height, max_pixels)
            pil.load()
    except PermissionError as error:
        raise UserInputError(
            "cannot read the file (permission denied)", path=path, fix="check its permissions"
        ) from error
    except UnidentifiedImageError as error:
        raise UserInputError(
            "not an image PIL can read", path=path, fix=f"use one of {', '.join(IMAGE_SUFFIXES)}"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise UserInputError(f"cannot decode image data ({error})", path=path, fix="re-export the image") from error
    except Image.DecompressionBombError as error:  # a decoder's own check (should not fire with the limit off)
        raise UserInputError(f"refused as a possible decompression bomb ({error})", path=path) from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    return pil


def _exif_values(pil) -> dict[int, object]:
    """Orientation and focal-length tags from the main IFD and the Exif sub-IFD.

    ml-sharp takes Orientation from the main IFD (falling back to the sub-IFD) and the focal lengths
    from the Exif sub-IFD only, where cameras write them. We prefer the same IFDs and fall back to the
    other one, so a non-standard file with FocalLength in the main IFD still gets its focal length.
    """
    exif = pil.getexif()
    main = {tag: value for tag, value in exif.items() if tag != EXIF_IFD}
    sub = dict(exif.get_ifd(EXIF_IFD))
    values: dict[int, object] = {}
    for tag, first, second in (
        (TAG_ORIENTATION, main, sub),
        (TAG_FOCAL_35MM, sub, main),
        (TAG_FOCAL_LENGTH, sub, main),
    ):
        if tag in first:
            values[tag] = first[tag]
        elif tag in second:
            values[tag] = second[tag]
    return values


def _apply_orientation(pil, orientation: object):
    from PIL import Image

    transpose = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
    if isinstance(orientation, int) and orientation in transpose:
        return pil.transpose(transpose[orientation])
    return pil


def _grey(values: np.ndarray) -> np.ndarray:  # [H, W] uint8 -> [H, W, 3] uint8
    return np.stack([values, values, values], axis=-1)


def _scaled(values: np.ndarray, top: float) -> tuple[np.ndarray, bool]:  # [H, W] any -> [H, W] uint8, clipped?
    """``values`` in [0, top] as 8-bit (rounded: 16-bit v * 257 comes back as v); values outside are clipped."""
    data = values.astype(np.float64)
    clipped = bool((data < 0).any() or (data > top).any() or not np.isfinite(data).all())
    data = np.nan_to_num(data, nan=0.0, posinf=top, neginf=0.0)
    return np.rint(np.clip(data, 0.0, top) * (255.0 / top)).astype(np.uint8), clipped


def _lab_to_rgb(pil):
    """CIE L*a*b* (D50, the ICC connection space TIFF CIELab uses) -> sRGB through littlecms, without its
    8-bit lookup-table optimisation (which is off by up to 31 steps near black)."""
    from PIL import ImageCms

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB", flags=ImageCms.Flags.NOOPTIMIZE
    )
    return ImageCms.applyTransform(pil, transform)


def to_rgb(pil) -> tuple[np.ndarray, list[str]]:  # -> [H, W, 3] uint8, notes
    """The colours of any PIL mode as the 8-bit sRGB image it stands for, and a note for a dropped alpha.

    8-bit RGB and RGBA take ml-sharp's own path, unchanged (the golden tests pin it).
    """
    mode = pil.mode
    notes: list[str] = []
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in pil.info):
        notes.append(ALPHA_NOTE)
    # np.array copies: PIL's buffer view is read-only, and torch.from_numpy wants a writable array.
    if mode == "RGB":
        return np.array(pil), notes
    if mode == "RGBA":
        return np.ascontiguousarray(np.asarray(pil)[:, :, :3]), notes
    if mode == "L":
        return _grey(np.asarray(pil)), notes
    if mode in ("1", "LA", "La"):
        return _grey(np.asarray(pil.convert("LA").getchannel("L"))), notes  # La: un-premultiplied first
    if mode.startswith("I;16") or mode == "I":
        # PIL's own I;16 -> RGB conversion clips at 255 (a 16-bit photo comes out nearly white). "I" holds 16-bit
        # data in practice (Pillow before 10 opened 16-bit PNGs as "I"); its values are read on that scale too.
        grey, clipped = _scaled(np.asarray(pil), 65535.0)
        if clipped:
            notes.append(f"mode {mode} has values outside 0..65535; clipped")
        return _grey(grey), notes
    if mode == "F":
        grey, clipped = _scaled(np.asarray(pil), 1.0)  # float images hold 0..1
        if clipped:
            notes.append("mode F (32-bit float) has values outside 0..1 or not finite; clipped")
        return _grey(grey), notes
    if mode == "LAB":
        return np.array(_lab_to_rgb(pil)), notes
    if mode in ("P", "PA", "RGBa"):
        return np.ascontiguousarray(np.asarray(pil.convert("RGBA"))[:, :, :3]), notes
    return np.array(pil.convert("RGB")), notes  # CMYK, YCbCr, RGBX, HSV


def _as_float(value: object) -> float | None:
    """An EXIF number (int, IFDRational, tuple numerator/denominator) as a finite float, else None."""
    if isinstance(value, tuple) and len(value) == 2:
        value = value[0] / value[1] if value[1] else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def focal_length_35mm(exif: dict[int, object]) -> float:
    """ml-sharp's rule: 35 mm equivalent if present and >= 1, else raw FocalLength (x 8.4 below 10 mm), else 30.

    A value that does not parse as a finite number (e.g. a 0/0 rational) counts as missing; ml-sharp
    would carry the NaN into f_px.
    """
    f_35mm = _as_float(exif.get(TAG_FOCAL_35MM))
    if f_35mm is not None and f_35mm >= 1:
        return f_35mm
    f_mm = _as_float(exif.get(TAG_FOCAL_LENGTH))
    if f_mm is None:
        f_mm = DEFAULT_FOCAL_35MM
    return f_mm * CROP_FACTOR_GUESS if f_mm < 10.0 else f_mm


def checked_focal_length_35mm(exif: dict[int, object]) -> tuple[float, list[str]]:
    """``focal_length_35mm`` guarded against corrupt EXIF: (value, warnings).

    A focal tag that is not a finite number is ignored (with a warning); a result outside
    ``FOCAL_35MM_RANGE`` (0, negative, absurdly large) falls back to the 30 mm default (with a warning).
    """
    notes = []
    for tag, name in _FOCAL_TAG_NAMES.items():
        if tag in exif and _as_float(exif[tag]) is None:
            notes.append(f"EXIF {name} {str(exif[tag])[:40]!r} is not a finite number; ignored")
    f_35mm = focal_length_35mm(exif)
    low, high = FOCAL_35MM_RANGE
    if not low <= f_35mm <= high:
        notes.append(
            f"EXIF focal length gives {f_35mm:g} mm (35 mm equivalent), outside {low:g}-{high:g} mm; "
            f"using the default {DEFAULT_FOCAL_35MM:g} mm instead"
        )
        f_35mm = DEFAULT_FOCAL_35MM
    return f_35mm, notes


def focal_length_px(f_35mm: float, width: int, height: int) -> float:
    """Focal length in pixels from the 35 mm equivalent and the (diagonal of the) image size."""
    return float(f_35mm * np.sqrt(width**2.0 + height**2.0) / np.sqrt(36**2 + 24**2))


def prepare_input(
    image: LoadedImage,
    resolution: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:  # image [1, 3, R, R] in [0, 1], disparity_factor [1]
    """Model inputs: uint8 / 255, bilinear align_corners=True resize of both axes, f_px / W."""
    # Divide after the cast, in float32, like ml-sharp, then resize; the result is cast to dtype last.
    pixels = torch.from_numpy(np.require(image.rgb, np.uint8, ["C", "W"])).to(device).float().permute(2, 0, 1) / 255.0
    if pixels.shape[1:] != (resolution, resolution):
        pixels = F.interpolate(pixels[None], size=(resolution, resolution), mode="bilinear", align_corners=True)[0]
    disparity_factor = torch.tensor([image.f_px / image.width], dtype=torch.float32, device=device)
    return pixels[None].to(dtype), disparity_factor.to(dtype)


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given plus the images inside given directories (recursive, sorted); none found is an error."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise UserInputError("input not found", path=path, fix="pass existing image files or directories")
    if not found:
        shown = ", ".join(str(p) for p in paths) or "(nothing)"
        raise UserInputError(
            f"no images found in {shown}", fix=f"directories are searched for {', '.join(IMAGE_SUFFIXES)}"
        )
    return found
