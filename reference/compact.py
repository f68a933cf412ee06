"""Compact splat files: Niantic's SPZ (version 3, gzip) and PlayCanvas's compressed PLY, encoded by gsply.

gsply (the ``spz`` extra) is imported inside these functions only, so the reference model never needs it. Both
formats quantise; what they keep (docs/commands.md "Compact formats" has the measured errors):

* SPZ v3 (the gzip container every current reader takes; v4 is zstd): positions as signed 24-bit fixed point
  with ``fractional_bits`` (chosen here per scene: 12, i.e. 1/4096 m, unless the scene is too wide for 24 bits),
  log scales as (log s + 10) * 16 in 8 bits (so log s is clipped to [-10, 5.94]), opacity and the SH DC colour
  (times 0.15 * 255, plus 127.5) in 8 bits each, rotations as the smallest three components in 9 bits plus a
  sign. SPZ's axes are x right, y up, z back; ply.save_ply rotates the OpenCV scene before calling ``writer``.
* Compressed PLY: chunks of 256 Gaussians with per-chunk min/max; position 11/10/11 bits, log scale 11/10/11
  bits, colour and opacity 8 bits each, rotation smallest-three 2/10/10/10 bits, all within the chunk's range.

Attributes cross this module as the official PLY's vertex table: [N, 14] float32, columns x y z, f_dc_0..2 (sRGB
SH DC), opacity (logit), scale_0..2 (natural log), rot_0..3 (unit wxyz), in the axes the file stores.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sharp_export.errors import MissingDependencyError, UserInputError

COMPACT_FORMATS = ("spz", "compressed-ply")
SPZ_VERSION = 3
SPZ_FRACTIONAL_BITS = 12  # Niantic's default: 1/4096 m (0.24 mm) position steps
SPZ_POSITION_BITS = 24  # signed
SPZ_LOG_SCALE_RANGE = (-10.0, 255 / 16 - 10.0)  # what 8 bits of (log s + 10) * 16 can hold
_log = logging.getLogger(__name__)


def gsply_module():
    """gsply, or the one-line error that names the extra to install."""
    try:
        import gsply
    except ImportError:
        raise MissingDependencyError("gsply", "spz", "writing and reading SPZ and compressed PLY files") from None
    return gsply


def _gsdata(attributes: np.ndarray):  # attributes [N, 14] float32, official vertex order
    gsply = gsply_module()
    columns = np.ascontiguousarray(attributes, dtype=np.float32)
    return gsply.GSData.from_arrays(
        means=np.ascontiguousarray(columns[:, 0:3]),
        scales=np.ascontiguousarray(columns[:, 7:10]),
        quats=np.ascontiguousarray(columns[:, 10:14]),
        opacities=np.ascontiguousarray(columns[:, 6]),
        sh0=np.ascontiguousarray(columns[:, 3:6]),
        format="ply",  # log scales, logit opacities, SH DC: said explicitly, never guessed from the values
    )


def spz_fractional_bits(positions: np.ndarray) -> int:  # positions [N, 3]
    """The finest position step whose 24-bit range holds every position (12 bits unless the scene is wider
    than 2048 m); a scene too wide even for 1 fractional bit is refused rather than clipped."""
    largest = float(np.abs(positions).max()) if positions.size else 0.0
    limit = 2 ** (SPZ_POSITION_BITS - 1) - 1
    for bits in range(SPZ_FRACTIONAL_BITS, 0, -1):
        if round(largest * 2**bits) <= limit:
            return bits
    raise UserInputError(
        f"the scene reaches {largest:.3g} m from the camera, beyond what SPZ's 24-bit positions can hold",
        fix="write --format official or viewer",
    )


def _warn_clipped_scales(log_scales: np.ndarray) -> None:  # log_scales [N, 3]
    low, high = SPZ_LOG_SCALE_RANGE
    below, above = int((log_scales < low).sum()), int((log_scales > high).sum())
    if below or above:
        _log.warning(
            f"warning: SPZ clips {below} scale values below e^{low:g} m and {above} above e^{high:g} m "
            "(8-bit log scales); the official PLY keeps them exactly"
        )


def writer(format: str, attributes: np.ndarray) -> Callable[[Path], None]:  # attributes [N, 14] float32
    """A function writing ``attributes`` in ``format`` (one of COMPACT_FORMATS) to the path it is given."""
    if format not in COMPACT_FORMATS:
        raise ValueError(f"not a compact format: {format}")
    gsply = gsply_module()
    if not np.isfinite(attributes).all():
        raise UserInputError(f"the scene has NaN or Inf values; {format} cannot store them")
    data = _gsdata(attributes)
    if format == "spz":
        bits = spz_fractional_bits(attributes[:, 0:3])
        _warn_clipped_scales(attributes[:, 7:10])

        def write_spz(path: Path) -> None:
            gsply.write_spz(path, data, version=SPZ_VERSION, fractional_bits=bits)

        return write_spz

    # Chunks of 256 consecutive Gaussians share one quantisation box: in SHARP's pixel order a chunk can span the
    # whole depth range, so the Gaussians are put in Morton (z-curve) order first, as PlayCanvas's own writer does.
    ordered = _gsdata(attributes[morton_order(attributes[:, 0:3])])

    def write_compressed(path: Path) -> None:
        encoded = gsply.compress_to_bytes(ordered)  # not plywrite: it imports gsply.torch (seconds) to type-check
        with open(path, "wb") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())

    return write_compressed


def morton_order(positions: np.ndarray, bits: int = 10) -> np.ndarray:  # positions [N, 3] -> [N] int64
    """Indices sorting ``positions`` along a z-order curve of ``bits`` bits per axis over their bounding box."""
    low, high = positions.min(axis=0), positions.max(axis=0)
    cells = (positions - low) / np.maximum(high - low, 1e-12) * (2**bits - 1)
    cells = np.clip(np.round(cells), 0, 2**bits - 1).astype(np.uint64)
    codes = np.zeros(len(positions), dtype=np.uint64)
    for bit in range(bits):
        for axis in range(3):
            codes |= ((cells[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(codes, kind="stable")


def read_attributes(path: str | Path) -> np.ndarray:  # -> [N, 14] float32, official vertex order
    """An SPZ or compressed PLY file read back by gsply, in the axes the file stores (SPZ: y up, z back)."""
    path = Path(path)
    gsply = gsply_module()
    if not path.is_file():
        raise UserInputError("scene file not found", path=path)
    try:
        data = gsply.read_spz(path) if path.suffix == ".spz" else gsply.plyread(path)
    except (ValueError, OSError, EOFError, IndexError) as error:  # gzip/struct/reader errors
        kind = "SPZ" if path.suffix == ".spz" else "compressed PLY"
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserInputError(f"not a readable {kind} file ({text})", path=path, fix="write it again") from None
    if data is None:
        raise UserInputError("not a readable compressed PLY file", path=path, fix="write it again")
    if data.is_scales_linear or data.is_opacities_linear:  # both formats store log scales and logit opacities
        data = data.normalize(inplace=False)
    quats = np.asarray(data.quats, dtype=np.float32)
    columns = [data.means, data.sh0, np.asarray(data.opacities).reshape(-1, 1), data.scales, quats]
    return np.concatenate([np.asarray(c, dtype=np.float32).reshape(len(quats), -1) for c in columns], axis=1)


def spz_position_step(attributes: np.ndarray) -> float:  # attributes [N, 14]
    """The position quantisation step SPZ uses for these attributes, in metres."""
    return math.ldexp(1.0, -spz_fractional_bits(attributes[:, 0:3]))
