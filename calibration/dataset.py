"""Calibration sets: real photos in, preprocessed model inputs out, with a hash that identifies the set.

Target-neutral: nothing here imports a converter or a toolchain, and torch is imported only inside the
functions that decode images, so a target row can call :func:`select_images` from its ``validate``
before any model is built.

* **Sources.** ``--calib-data DIR``: every image under DIR, recursively, with a suffix of
  ``reference.preprocess.IMAGE_SUFFIXES`` (any format PIL or pillow-heif reads; names starting with "." are
  skipped: macOS ``._*`` resource forks and hidden folders are not photos). ``--calib-data samples``: the
  five scikit-image photos that ship with the wheel (``sharp_export.samples``), announced on one line.
* **Preprocessing** is exactly predict's: ``load_image`` (EXIF orientation and focal length) and
  ``prepare_input(image, resolution)``, so the calibrator sees what the artifact will see.
* **Selection** is deterministic: the paths sorted by their POSIX path relative to DIR, then ``size``
  evenly spaced picks (the centre of each of ``size`` equal bins of the sorted list). Adding a file
  elsewhere in the folder can change the pick; the same folder always gives the same pick.
* **Hash.** ``sha256`` of a JSON document holding the sha256 of each selected file's bytes, in selection
  order, and the preprocessing (its function names and the input resolution). It is computed over the
  files, not over the float tensors, so it is the same on every machine and torch build (bilinear resizing
  may differ in the last bit across CPUs); a different preprocessing or resolution gives another hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.errors import UserInputError
from sharp_export.progress import echo

if TYPE_CHECKING:
    import torch

SAMPLES = "samples"  # the --calib-data keyword for the bundled scikit-image photos
# Default --calib-size. Measured on the tiny preset (golden perturbed weights), onnx int8 MinMax, evaluated on
# the five sample photos with calibration photos from a disjoint pool (benchmarks/results/
# onnx_precision_study_tiny.json, "int8_calibration_sizes"): z rel err p99 9.9e-3 with 1 photo, 5.6e-3 with 2,
# 5.7e-3 with 4, 8 and 16; 8 leaves margin for photos less alike than the pool's.
DEFAULT_CALIB_SIZE = 8
MIN_CALIB_IMAGES = 4  # below this without an explicit --calib-size: "too few images" (see DEFAULT_CALIB_SIZE)
PREPROCESSING = "sharp_export.reference.preprocess.load_image + prepare_input (bilinear, align_corners=True)"


@dataclass(frozen=True)
class CalibrationSelection:
    """Which files a calibration set uses (listing only; nothing decoded)."""

    source: str  # "samples" or the folder as given
    root: Path | None  # the folder (None for samples)
    available: int  # images found
    paths: tuple[Path, ...]  # the selected files, in selection order

    @property
    def size(self) -> int:
        return len(self.paths)

    def relative_names(self) -> list[str]:
        if self.root is None:
            return [p.name for p in self.paths]
        return [p.relative_to(self.root).as_posix() for p in self.paths]


@dataclass
class CalibrationSet:
    """Preprocessed inputs of the selected photos, ready for a calibrator."""

    selection: CalibrationSelection
    resolution: int
    images: list[torch.Tensor]  # each [1, 3, R, R] float32 in [0, 1]
    disparity_factors: list[torch.Tensor]  # each [1] float32 (f_px / W of the original photo)
    file_sha256: list[str] = field(default_factory=list)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, Any]:
        """What goes into an artifact's manifest."""
        return {
            "source": self.selection.source,
            "size": len(self),
            "available": self.selection.available,
            "images": [
                {"name": name, "sha256": digest}
                for name, digest in zip(self.selection.relative_names(), self.file_sha256, strict=True)
            ],
            "sha256": self.sha256,
            "sha256_over": "the selected files' sha256, in selection order, + preprocessing and resolution",
            "preprocessing": PREPROCESSING,
            "resolution": self.resolution,
            "selection": "paths sorted by relative POSIX path, evenly spaced picks (centre of each bin)",
        }


def is_samples(value: str | Path | None) -> bool:
    """True for the ``samples`` keyword (a folder named so must be given by another spelling, e.g. absolute)."""
    return value is not None and str(value) == SAMPLES


def evenly_spaced(count: int, size: int) -> list[int]:
    """``size`` indices out of ``range(count)``: the centre of each of ``size`` equal bins (size <= count)."""
    return [((2 * i + 1) * count) // (2 * size) for i in range(size)]


def list_calibration_images(folder: Path) -> list[Path]:
    """Images under ``folder`` (recursive), sorted by relative POSIX path; hidden names are skipped."""
    from sharp_export.reference.preprocess import IMAGE_SUFFIXES  # imports torch; only called at export time

    if not folder.exists():
        raise UserInputError("calibration folder not found", path=folder, fix="pass an existing folder of photos")
    if not folder.is_dir():
        raise UserInputError(
            "--calib-data takes a folder of photos, not a file", path=folder, fix="put the photos in a folder"
        )
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def select_images(source: str | Path, size: int | None = None) -> CalibrationSelection:
    """The files of a calibration set: ``source`` is a folder or ``samples``.

    ``size`` None means ``DEFAULT_CALIB_SIZE``, or every image when there are fewer (but at least
    ``MIN_CALIB_IMAGES``); an explicit ``size`` needs that many images. Raises UserInputError, naming the
    folder, for a missing or empty folder and for too few images.
    """
    if size is not None and int(size) < 1:
        raise UserInputError(f"--calib-size must be at least 1, got {size}")
    if is_samples(source):
        from sharp_export.samples import SAMPLE_NAMES, sample_image_path

        paths = sorted((sample_image_path(name) for name in SAMPLE_NAMES), key=lambda p: p.name)
        root = None
        where = f"the bundled sample photos are only {len(paths)}"
    else:
        root = Path(source)
        paths = list_calibration_images(root)
        if not paths:
            raise UserInputError(
                "calibration folder holds no images (searched recursively for "
                "image suffixes such as .jpg, .png, .heic)",
                path=root,
                fix="put photos like those you will run in it",
            )
        where = f"the folder holds only {len(paths)}"
    if size is None:
        if len(paths) < MIN_CALIB_IMAGES:
            raise UserInputError(
                f"too few calibration images: {where}, int8 calibration needs at least {MIN_CALIB_IMAGES}",
                path=root,
                fix=f"add photos (the default --calib-size is {DEFAULT_CALIB_SIZE}), or pass --calib-size "
                f"{len(paths)} to calibrate on fewer anyway",
            )
        size = min(DEFAULT_CALIB_SIZE, len(paths))
    size = int(size)
    if len(paths) < size:
        raise UserInputError(
            f"too few calibration images: --calib-size {size} asks for {size}, {where}",
            path=root,
            fix=f"add photos, or pass --calib-size {len(paths)}",
        )
    picked = tuple(paths[i] for i in evenly_spaced(len(paths), size))
    return CalibrationSelection(str(source), root, len(paths), picked)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def set_sha256(file_sha256: list[str], resolution: int) -> str:
    """The calibration set's hash (see the module docstring)."""
    document = {"files": file_sha256, "preprocessing": PREPROCESSING, "resolution": int(resolution)}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def announce(selection: CalibrationSelection) -> None:
    """One loud line saying which photos calibrate the artifact."""
    if selection.root is None:
        here = Path.cwd() / SAMPLES
        note = f" (./{SAMPLES} is a folder here: pass its absolute path to use it instead)" if here.is_dir() else ""
        echo(
            f"CALIBRATION: using the {selection.size} bundled scikit-image sample photos "
            f"({', '.join(p.stem for p in selection.paths)}), not your own photos; pass --calib-data DIR with "
            f"photos like those you will run{note}"
        )
    else:
        echo(f"    calibration: {selection.size} of {selection.available} images from {selection.root}")


def load_calibration_set(
    source: str | Path,
    resolution: int,
    size: int | None = None,
    max_pixels: int | None = None,
) -> CalibrationSet:
    """Select, announce, decode and preprocess a calibration set (predict's preprocessing).

    An unreadable image is a UserInputError naming the file (from ``load_image``), prefixed so the user
    sees it was a calibration image.
    """
    from sharp_export.pipeline import load_photo  # torch: imported when photos are decoded, not to list them
    from sharp_export.reference.preprocess import DEFAULT_MAX_PIXELS, prepare_input

    selection = select_images(source, size)
    announce(selection)
    images, factors, hashes = [], [], []
    for path in selection.paths:
        try:
            loaded = load_photo(path, max_pixels or DEFAULT_MAX_PIXELS)
        except UserInputError as error:
            raise UserInputError(
                f"calibration image: {error.message}", path=error.path or path, fix=error.fix
            ) from None
        image, factor = prepare_input(loaded, resolution)
        images.append(image.contiguous())
        factors.append(factor)
        hashes.append(_file_sha256(path))
    return CalibrationSet(selection, resolution, images, factors, hashes, set_sha256(hashes, resolution))
