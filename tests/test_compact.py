"""--format spz and compressed-ply: read back by an independent reader, within each format's quantisation.

The independent reader is PlayCanvas's splat-transform (what SuperSplat uses; it decodes SPZ with Adobe's build
of Niantic's SPZ library and reads compressed PLY itself), installed by .ci/run with `npm ci --prefix tests/js`.
It converts our files to a plain 3DGS PLY, read here with our PLY reader. Without Node.js or that install the
tests that need it skip and say so; the rest (headers, our own loaders, the command line) always run.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sharp_export.cli import cli
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta, rotation_matrices_from_quaternions
from sharp_export.reference.ply import _attributes, read_ply_elements, save_ply

pytest.importorskip("gsply", reason="the 'spz' extra (gsply) is not installed")
from sharp_export.reference import compact  # noqa: E402
from sharp_export.reference.scenes import load_scene  # noqa: E402

READERS = Path(__file__).resolve().parent / "js"
FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
VERTEX = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)]
VERTEX += [f"rot_{i}" for i in range(4)]
SH_C0 = 0.28209479177387814
# Smallest-three rotations: SPZ v3 stores 9 bits + sign per component, compressed PLY 10 bits over the same
# [-1/sqrt 2, 1/sqrt 2]: one step is sqrt(2)/1023 either way. Three stored components off by half a step and the
# fourth rebuilt from them move each principal axis by at most 2 * sqrt(3) * step radians (0.27 degrees).
ROTATION_STEP = math.sqrt(2) / 1023
AXIS_TOLERANCE_DEG = math.degrees(2 * math.sqrt(3) * ROTATION_STEP)


def splat_transform() -> str:
    found = os.environ.get("SHARP_SPLAT_TRANSFORM") or str(READERS / "node_modules" / ".bin" / "splat-transform")
    if not Path(found).is_file() or shutil.which("node") is None:
        pytest.skip("splat-transform is not installed: `npm ci --prefix tests/js` (.ci/run does it)")
    return found


def independent_read(path: Path, tmp_path: Path) -> np.ndarray:  # -> [N, 14] official vertex order
    """splat-transform converts the file to a plain PLY (SPZ: into PLY's axes, as its readers do)."""
    converted = tmp_path / f"{path.name}.as-ply.ply"
    subprocess.run([splat_transform(), "-w", str(path), str(converted)], check=True, capture_output=True, timeout=120)
    vertex = read_ply_elements(converted)["vertex"]
    return np.stack([vertex[name].astype(np.float32) for name in VERTEX], axis=1)


@pytest.fixture(scope="module")
def golden(golden_dir) -> tuple[Gaussians3D, SceneMeta]:
    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    width, height = (int(v) for v in data["image_size_wh"])
    return Gaussians3D(*(torch.from_numpy(data[k]) for k in FIELDS)), SceneMeta(float(data["f_px"]), width, height)


def axis_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # quaternions [N, 4] -> [N, 3] degrees
    """Angle between corresponding principal axes, sign-free: a Gaussian is the same under q and under q times
    a 180-degree turn about one of its own axes (what a reader's change of axes may give)."""
    ra = rotation_matrices_from_quaternions(torch.from_numpy(a).double())
    rb = rotation_matrices_from_quaternions(torch.from_numpy(b).double())
    cosines = (ra * rb).sum(dim=-2).abs().clamp(max=1.0)  # column i of each: axis i
    return np.degrees(torch.arccos(cosines).numpy())


def chunk_steps(values: np.ndarray, bits: int) -> np.ndarray:  # [N] -> [N] one quantisation step per value
    """Compressed PLY: each chunk of 256 Gaussians quantises a column over its own min..max in ``bits`` bits."""
    n = len(values)
    padded = np.pad(values.astype(np.float64), (0, (-n) % 256), mode="edge").reshape(-1, 256)
    return np.repeat((padded.max(axis=1) - padded.min(axis=1)) / (2**bits - 1), 256)[:n]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def test_spz_matches_the_original_in_an_independent_reader(golden, tmp_path):
    gaussians, meta = golden
    path = save_ply(gaussians, meta, tmp_path / "golden.spz", format="spz")
    original = _attributes(gaussians.select(0))  # OpenCV axes: splat-transform turns SPZ's axes back to PLY's
    decoded = independent_read(path, tmp_path)
    assert decoded.shape == original.shape == (73728, 14)
    error = np.abs(decoded.astype(np.float64) - original)
    assert error[:, 0:3].max() <= 2.0**-12 / 2 + 1e-6  # 24-bit fixed point, 12 fractional bits; measured 1.2e-4
    assert error[:, 3:6].max() <= 0.5 / (0.15 * 255) + 1e-5  # colour: SH DC * 0.15 * 255 + 127.5 in 8 bits
    assert error[:, 7:10].max() <= 0.5 / 16 + 1e-5  # scales: (log s + 10) * 16 in 8 bits; measured 0.03125
    assert np.abs(sigmoid(decoded[:, 6]) - sigmoid(original[:, 6])).max() <= 0.5 / 255 + 1e-6  # opacity, 8 bits
    angles = axis_angles_deg(decoded[:, 10:14], original[:, 10:14])
    assert angles.max() <= AXIS_TOLERANCE_DEG, angles.max()  # measured 0.23 degrees


def test_compressed_ply_matches_the_original_in_an_independent_reader(golden, tmp_path):
    gaussians, meta = golden
    path = save_ply(gaussians, meta, tmp_path / "golden.compressed.ply", format="compressed-ply")
    scene = _attributes(gaussians.select(0))
    original = scene[compact.morton_order(scene[:, 0:3])]  # the writer stores the Gaussians in Morton order
    decoded = independent_read(path, tmp_path)
    error = np.abs(decoded.astype(np.float64) - original)
    # Within one step of each chunk's range (8 bits: 255 steps; writers round or truncate), plus float32 slack.
    for column, bits in zip(range(10), (11, 10, 11, 0, 0, 0, 0, 11, 10, 11), strict=True):
        if bits:
            assert (error[:, column] <= chunk_steps(original[:, column], bits) * 1.02 + 1e-6).all(), column
    rgb = 0.5 + SH_C0 * original[:, 3:6]  # colours are quantised as RGB over the chunk's range
    for channel in range(3):
        step = chunk_steps(rgb[:, channel], 8)
        assert (SH_C0 * error[:, 3 + channel] <= step * 1.02 + 1e-6).all(), channel
    assert np.abs(sigmoid(decoded[:, 6]) - sigmoid(original[:, 6])).max() <= 1 / 255 + 1e-6
    angles = axis_angles_deg(decoded[:, 10:14], original[:, 10:14])
    assert angles.max() <= AXIS_TOLERANCE_DEG, angles.max()  # measured 0.23 degrees


def spz_header(path: Path) -> tuple[int, ...]:
    """(magic, version, count, sh degree, fractional bits, flags, reserved) of a gzip SPZ."""
    with gzip.open(path, "rb") as handle:
        return struct.unpack("<IIIBBBB", handle.read(16))


def test_spz_header_is_version_3_gzip(golden, tmp_path):
    gaussians, meta = golden
    path = save_ply(gaussians, meta, tmp_path / "golden.spz", format="spz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # one gzip stream: the container every SPZ reader takes
    assert spz_header(path) == (0x5053474E, 3, 73728, 0, 12, 0, 0)


def test_a_wide_scene_keeps_its_positions_with_fewer_fractional_bits(golden, tmp_path):
    gaussians, meta = golden
    wide = gaussians._replace(mean_vectors=gaussians.mean_vectors * 100)  # out to 9,847 m: beyond 2048 m
    path = save_ply(wide, meta, tmp_path / "wide.spz", format="spz")
    bits = spz_header(path)[4]
    assert bits == 9 and compact.spz_fractional_bits(_attributes(wide.select(0))[:, 0:3]) == 9
    back, _, _ = load_scene(path)
    error = (back.mean_vectors - wide.mean_vectors).abs().max().item()
    assert error <= 2.0**-bits / 2 + 1e-3, error  # nothing clipped: every position within half a step


def test_every_format_loads_back_as_the_same_scene(golden, tmp_path):
    """load_scene (what `view` uses) on each format gives the official PLY's scene, within the format's steps."""
    gaussians, meta = golden
    reference, reference_meta, _ = load_scene(save_ply(gaussians, meta, tmp_path / "a.ply"))
    assert reference_meta.width == 640 and math.isclose(reference_meta.f_px, meta.f_px, rel_tol=1e-6)
    formats = {"b.ply": "viewer", "c.splat": "splat", "d.spz": "spz", "e.compressed.ply": "compressed-ply"}
    for name, fmt in formats.items():
        scene, scene_meta, kind = load_scene(save_ply(gaussians, meta, tmp_path / name, format=fmt))
        assert scene.mean_vectors.shape == reference.mean_vectors.shape, fmt
        # Compare order-free where the format reorders (splat: by importance; compressed PLY: Morton order).
        key = lambda g: np.lexsort(g.mean_vectors[0].numpy().T.round(1))  # noqa: E731
        a, b = reference.mean_vectors[0].numpy()[key(reference)], scene.mean_vectors[0].numpy()[key(scene)]
        depth_error = np.abs(np.sort(a[:, 2]) - np.sort(b[:, 2])).max()
        assert depth_error < 0.03, (fmt, depth_error)  # compressed PLY's chunk steps; the others 1e-4 or exact
        assert abs(scene.opacities.mean() - reference.opacities.mean()) < 2e-3, fmt
        assert abs(scene.colors.mean() - reference.colors.mean()) < 3e-3, fmt
        assert kind == ("ply" if fmt == "viewer" else fmt)
        assert scene_meta == SceneMeta(512.0, 640, 480), fmt  # no camera in these files: ml-sharp's VGA default


def test_y_up_applies_to_compressed_ply_and_not_to_spz(golden, tmp_path):
    gaussians, meta = golden
    path = save_ply(gaussians, meta, tmp_path / "up.compressed.ply", format="compressed-ply", y_up=True)
    turned, _, _ = load_scene(path)
    back, _, _ = load_scene(path, y_up=True)
    assert turned.mean_vectors[0, :, 2].max() < 0 < back.mean_vectors[0, :, 2].min()  # z forward again
    with pytest.raises(Exception, match="SPZ is y-up by definition"):
        save_ply(gaussians, meta, tmp_path / "up.spz", format="spz", y_up=True)


def test_predict_writes_spz(standin, tmp_path, golden_dir):
    result = CliRunner().invoke(
        cli, ["predict", str(golden_dir / "input_640x480.png"), "-o", str(tmp_path), "--seed", "0", "--format", "spz"]
    )
    assert result.exit_code == 0, result.output
    scene, meta, kind = load_scene(tmp_path / "input_640x480.spz")
    assert kind == "spz" and scene.mean_vectors.shape == (1, 2048, 3)
    assert (scene.mean_vectors[0, :, 2] > 0).all()  # back in OpenCV axes: in front of the camera
