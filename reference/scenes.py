"""Read any scene file sharp-export writes: official or viewer PLY, .splat, .spz, PlayCanvas compressed PLY.

Every reader returns linear-RGB Gaussians (batch of one) in OpenCV axes (x right, y down, z forward) and the
SceneMeta the file carries. Formats without a camera (.splat, .spz, compressed PLY) get ml-sharp's VGA default,
as ply.load_ply gives a PLY without an intrinsic element. SPZ stores y up, z back: it is rotated back here.
"""

from __future__ import annotations

from pathlib import Path

from sharp_export.errors import UserInputError
from sharp_export.reference import compact
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.ply import gaussians_from_attributes, load_ply, load_splat, rotate_x_180

SCENE_SUFFIXES = (".ply", ".splat", ".spz")  # .compressed.ply ends in .ply
DEFAULT_META = SceneMeta(f_px=512.0, width=640, height=480)  # ml-sharp's default without an intrinsic element


def is_compressed_ply(path: Path) -> bool:
    """PlayCanvas's compressed PLY: a PLY whose header declares a 'chunk' element."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return head.startswith(b"ply\n") and b"\nelement chunk " in head.split(b"end_header")[0]


def check_scene_file(path: Path) -> None:
    """A readable scene path: an existing file of a type load_scene reads (before any work)."""
    if path.is_dir():
        raise UserInputError("is a folder, not a scene file", path=path, fix="pass a .ply, .splat or .spz file")
    if not path.is_file():
        raise UserInputError("scene file not found", path=path, fix="pass an existing .ply, .splat or .spz file")
    suffix = path.suffix.lower()
    if suffix not in SCENE_SUFFIXES:
        raise UserInputError(
            f"unknown scene file type '{suffix}'", path=path, fix=f"pass a {', '.join(SCENE_SUFFIXES)} file"
        )


def load_scene(path: str | Path, y_up: bool = False) -> tuple[Gaussians3D, SceneMeta, str]:
    """(Gaussians, meta, format name) of a scene file; ``y_up``: the file was written with --y-up (undo it)."""
    path = Path(path)
    check_scene_file(path)
    suffix = path.suffix.lower()
    if suffix == ".spz":
        gaussians, meta, kind = rotate_x_180(gaussians_from_attributes(compact.read_attributes(path))), None, "spz"
    elif suffix == ".splat":
        gaussians, meta, kind = load_splat(path), None, "splat"
    elif is_compressed_ply(path):
        gaussians, meta, kind = gaussians_from_attributes(compact.read_attributes(path)), None, "compressed-ply"
    else:
        gaussians, meta = load_ply(path)
        kind = "ply"
    if y_up:
        if kind == "spz":
            raise UserInputError(
                "--y-up applies to PLY, .splat and compressed PLY files; SPZ's axes are fixed by the format", path=path
            )
        gaussians = rotate_x_180(gaussians)  # its own inverse
    return gaussians, meta or DEFAULT_META, kind
