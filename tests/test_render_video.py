"""Trajectory videos / PNG frames, the turbo colour map, render_scene's sRGB output and the `render` CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.render import (
    gsplat_available,
    linear_to_srgb,
    make_trajectory,
    rasterize_torch,
    render_scene,
    render_trajectory,
    turbo_colormap,
)
from sharp_export.reference.render.video import color_frame


def small_scene(n: int = 400, width: int = 64, height: int = 48) -> tuple[Gaussians3D, SceneMeta]:
    gen = torch.Generator().manual_seed(7)
    f_px = 60.0
    z = 2.0 + 3.0 * torch.rand(n, generator=gen)
    x_ndc, y_ndc = torch.rand(n, generator=gen) * 2 - 1, torch.rand(n, generator=gen) * 2 - 1
    means = torch.stack([z * x_ndc * width / (2 * f_px), z * y_ndc * height / (2 * f_px), z], dim=-1)
    gaussians = Gaussians3D(
        mean_vectors=means[None],
        singular_values=(0.02 + 0.05 * torch.rand(n, 3, generator=gen))[None],
        quaternions=torch.randn(1, n, 4, generator=gen),
        colors=torch.rand(1, n, 3, generator=gen),
        opacities=0.3 + 0.7 * torch.rand(1, n, generator=gen),
    )
    return gaussians, SceneMeta(f_px=f_px, width=width, height=height)


def test_turbo_colormap_endpoints_and_range():
    # The polynomial's value at 0 is its constant terms, at 1 the sum of its coefficients (blue is -0.0255,
    # clipped): dark blue -> dark red. Exact arithmetic on the published coefficients, hence 1e-12.
    np.testing.assert_allclose(turbo_colormap(np.array(0.0)), [0.13572138, 0.09140261, 0.10667330], atol=1e-12)
    np.testing.assert_allclose(turbo_colormap(np.array(1.0)), [0.56585921, 0.05038886, 0.0], atol=1e-12)
    values = turbo_colormap(np.linspace(-1, 2, 301))
    assert values.shape == (301, 3) and values.min() >= 0 and values.max() <= 1
    assert np.argmax(turbo_colormap(np.array(0.5))) == 1  # green in the middle


def test_linear_to_srgb_matches_the_standard_curve():
    x = torch.tensor([0.0, 0.002, 0.0031308, 0.01, 0.2, 0.5, 1.0], dtype=torch.float64)
    expected = [0.0, 0.02584, 0.04045, 0.09985, 0.48453, 0.73536, 1.0]
    np.testing.assert_allclose(linear_to_srgb(x).numpy(), expected, atol=1e-5)  # 5-digit table values


def test_render_scene_is_srgb_of_the_linear_blend():
    gaussians, meta = small_scene()
    camera = make_trajectory(gaussians, meta, num_frames=3)[1]
    out = render_scene(gaussians, camera, backend="torch")
    g = gaussians.select(0)
    linear = rasterize_torch(
        g.mean_vectors[0], g.quaternions[0], g.singular_values[0], g.opacities[0], g.colors[0],
        camera.viewmat, camera.K, camera.width, camera.height, eps2d=0.0,
    )  # fmt: skip
    assert torch.equal(out.color, linear_to_srgb(linear.color).clamp(0, 1))
    assert torch.equal(out.alpha, linear.alpha) and torch.equal(out.depth, linear.depth)
    assert out.color.shape == (48, 64, 3) and out.alpha.max() > 0.9


def test_png_frames_are_the_truncated_renders(tmp_path):
    gaussians, meta = small_scene()
    cameras = make_trajectory(gaussians, meta, num_frames=3)
    written = render_trajectory(gaussians, meta, cameras, tmp_path, "scene", backend="torch", png=True, progress=False)
    assert sorted(p.name for p in written) == sorted(f"{k}_{i:04d}.png" for i in range(3) for k in ("color", "depth"))
    expected = color_frame(render_scene(gaussians, cameras[2], backend="torch").color)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "scene_frames" / "color_0002.png")), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_frames"]  # no temporary folder left


def test_mp4_videos(tmp_path):
    import imageio.v3 as iio

    gaussians, meta = small_scene()
    cameras = make_trajectory(gaussians, meta, num_frames=4)
    written = render_trajectory(gaussians, meta, cameras, tmp_path, "scene", backend="torch", progress=False)
    assert [p.name for p in written] == ["scene.mp4", "scene.depth.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.depth.mp4", "scene.mp4"]  # no partial files
    frames = iio.imread(tmp_path / "scene.mp4")
    assert frames.shape == (4, 48, 64, 3)
    expected = color_frame(render_scene(gaussians, cameras[0], backend="torch").color).astype(float)
    # H.264 (yuv420, 64x48, busy random scene) is lossy: compare channel means and correlation.
    decoded = frames[0].astype(float)
    assert np.abs(decoded.mean((0, 1)) - expected.mean((0, 1))).max() < 4  # measured worst 1.6 (of 255)
    assert np.corrcoef(decoded.ravel(), expected.ravel())[0, 1] > 0.85  # measured 0.96


def test_odd_size_mp4_is_refused(tmp_path):
    gaussians, meta = small_scene()
    cameras = make_trajectory(gaussians, meta, num_frames=2, resolution=(63, 48))
    with pytest.raises(UserInputError, match="even"):
        render_trajectory(gaussians, meta, cameras, tmp_path, "scene", backend="torch", progress=False)


# ---- CLI ------------------------------------------------------------------------------------------


def run_cli(args):
    from sharp_export.commands.render import command

    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=True)


def test_cli_renders_the_golden_ply(official_ply, tmp_path):
    ply = official_ply("perturbed")  # ml-sharp's PLY, rebuilt byte for byte (sha256-checked) by conftest
    result = run_cli([ply, "-o", tmp_path, "--frames", "2", "--renderer", "torch", "--resolution", "80x60", "--png"])
    assert result.exit_code == 0, result.output
    frame = np.asarray(Image.open(tmp_path / "out_640x480_perturbed_frames" / "color_0000.png"))
    assert frame.shape == (60, 80, 3) and frame.mean() > 30  # the scene covers the view


def test_cli_errors(official_ply, tmp_path):
    # The command's error boundary turns each into one line and its exit code (no traceback).
    result = run_cli([tmp_path / "missing.ply", "-o", tmp_path])
    assert result.exit_code == UserInputError.exit_code and "not found" in result.output
    ply = official_ply("perturbed")
    result = run_cli([ply, "-o", tmp_path, "--resolution", "wide"])
    assert result.exit_code == UserInputError.exit_code and "WIDTHxHEIGHT" in result.output
    if not gsplat_available():
        result = run_cli([ply, "-o", tmp_path, "--renderer", "gsplat"])
        assert result.exit_code == MissingDependencyError.exit_code == 2
        assert "gsplat==1.5.3" in result.output and "--renderer torch" in result.output
    assert "Traceback" not in result.output
