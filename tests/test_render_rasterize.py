"""The pure-PyTorch rasterizer against analytic values and an independent per-pixel brute force.

The rules under test are gsplat 1.5.3's "classic" mode (see reference/render/torch_rasterizer.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharp_export.reference.render import rasterize_torch
from sharp_export.reference.render.torch_rasterizer import project_gaussians

F = 100.0  # focal length in pixels of the analytic camera
W, H = 64, 48
CX, CY = 32.5, 24.5  # the principal point sits on the centre of pixel (32, 24)
K = torch.tensor([[F, 0.0, CX], [0.0, F, CY], [0.0, 0.0, 1.0]], dtype=torch.float64)
EYE = torch.eye(4, dtype=torch.float64)
IDENTITY_QUAT = [1.0, 0.0, 0.0, 0.0]


def render(means, scales, opacities, colors, quats=None, **kwargs):
    """Render Gaussians given as nested lists (float64, identity camera)."""
    means = torch.tensor(means, dtype=torch.float64)
    n = len(means)
    quats = torch.tensor(quats if quats is not None else [IDENTITY_QUAT] * n, dtype=torch.float64).reshape(n, 4)
    scales = torch.tensor(scales, dtype=torch.float64).reshape(n, 3)
    return rasterize_torch(
        means.reshape(n, 3),
        quats,
        scales,
        torch.tensor(opacities, dtype=torch.float64).reshape(n),
        torch.tensor(colors, dtype=torch.float64).reshape(n, 3),
        kwargs.pop("viewmat", EYE),
        kwargs.pop("K", K),
        kwargs.pop("width", W),
        kwargs.pop("height", H),
        **kwargs,
    )


def test_single_isotropic_gaussian_profile():
    # sigma_px = F * s / z = 100 * 0.2 / 5 = 4 px, centred on pixel (32, 24); eps2d = 0 as SHARP.
    opacity, color = 0.8, [0.2, 0.5, 1.0]
    out = render([[0.0, 0.0, 5.0]], [0.2, 0.2, 0.2], [opacity], [color], eps2d=0.0)
    red = out.color[24, :, 0].numpy()
    peak = opacity * 0.2
    assert red[32] == pytest.approx(peak, rel=1e-12)
    assert red[32 + 4] == pytest.approx(peak * math.exp(-0.5), rel=1e-12)  # 1 sigma
    assert red[32 - 8] == pytest.approx(peak * math.exp(-2.0), rel=1e-12)  # 2 sigma
    assert out.color[24 + 4, 32, 2] == pytest.approx(opacity * math.exp(-0.5), rel=1e-12)
    # gsplat 1.5.3 cuts where alpha < 1/255: at r = sigma * sqrt(2 ln(255 * 0.8)) = 13.05 px (3.26 sigma).
    assert red[32 + 13] == pytest.approx(peak * math.exp(-(13**2) / 32), rel=1e-12)
    assert red[32 + 14] == 0.0 and red[32 - 14] == 0.0
    assert out.alpha[24, 32] == pytest.approx(opacity, rel=1e-12)


def test_expected_depth_of_one_gaussian_is_its_z():
    out = render([[0.0, 0.0, 5.0]], [0.2, 0.2, 0.2], [1.0], [[1.0, 1.0, 1.0]], eps2d=0.0)
    covered = out.alpha > 0
    assert covered.sum() > 500
    assert torch.allclose(out.depth[covered], torch.full_like(out.depth[covered], 5.0), rtol=1e-12)
    assert (out.depth[~covered] == 0).all()


def test_alpha_is_clamped_to_0_999():
    out = render([[0.0, 0.0, 5.0]], [0.2, 0.2, 0.2], [1.0], [[1.0, 0.0, 0.0]], eps2d=0.0)
    assert out.color[24, 32, 0] == pytest.approx(0.999, rel=1e-12)
    assert out.alpha[24, 32] == pytest.approx(0.999, rel=1e-12)


def test_two_gaussians_front_to_back_whatever_the_input_order():
    front = ([0.0, 0.0, 4.0], [0.3] * 3, 0.6, [1.0, 0.0, 0.0])
    back = ([0.0, 0.0, 6.0], [0.5] * 3, 0.5, [0.0, 1.0, 0.0])
    for pair in ([front, back], [back, front]):
        means, scales, opac, cols = zip(*pair, strict=True)
        out = render(list(means), list(scales), list(opac), list(cols), eps2d=0.0)
        assert out.color[24, 32, 0] == pytest.approx(0.6, rel=1e-12)
        assert out.color[24, 32, 1] == pytest.approx(0.4 * 0.5, rel=1e-12)  # behind: T = 1 - 0.6
        assert out.alpha[24, 32] == pytest.approx(1 - 0.4 * 0.5, rel=1e-12)
        assert out.depth[24, 32] == pytest.approx((0.6 * 4 + 0.2 * 6) / 0.8, rel=1e-12)


def test_transmittance_stop_is_exclusive_and_final():
    # Opacity 0.95 four times: T = 0.05, 2.5e-3, 1.25e-4 (blended), then 6.25e-6 <= 1e-4: that Gaussian
    # is not blended and the pixel stops, so the faint fifth one (which would keep T > 1e-4) is ignored too.
    zs = [3.0, 4.0, 5.0, 6.0, 7.0]
    colors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    out = render([[0.0, 0.0, z] for z in zs], [[z * 0.05] * 3 for z in zs], [0.95] * 4 + [0.1], colors, eps2d=0.0)
    c = out.color[24, 32].numpy()
    assert c[0] == pytest.approx(0.95, rel=1e-12)
    assert c[1] == pytest.approx(0.95 * 0.05, rel=1e-12)
    assert c[2] == pytest.approx(0.95 * 0.05**2, rel=1e-12)
    assert out.alpha[24, 32] == pytest.approx(1 - 0.05**3, rel=1e-12)


def test_opacity_below_1_over_255_is_skipped():
    out = render([[0.0, 0.0, 5.0]], [0.2] * 3, [0.0039], [[1.0, 1.0, 1.0]], eps2d=0.0)  # 0.0039 < 1/255
    assert out.alpha.abs().max() == 0 and out.color.abs().max() == 0
    out = render([[0.0, 0.0, 5.0]], [0.2] * 3, [0.004], [[1.0, 1.0, 1.0]], eps2d=0.0)
    assert out.color[24, 32, 0] == pytest.approx(0.004, rel=1e-12)


def test_eps2d_dilates_the_2d_covariance_without_changing_the_peak():
    # classic mode: cov2d = sigma^2 + eps2d on the diagonal, no opacity compensation.
    out = render([[0.0, 0.0, 5.0]], [0.1] * 3, [0.7], [[1.0, 0.0, 0.0]], eps2d=0.3)
    variance = (F * 0.1 / 5.0) ** 2 + 0.3  # 4.3 px^2
    red = out.color[24, :, 0].numpy()
    assert red[32] == pytest.approx(0.7, rel=1e-12)
    for offset in (1, 2, 3):
        assert red[32 + offset] == pytest.approx(0.7 * math.exp(-0.5 * offset**2 / variance), rel=1e-12)


@pytest.mark.parametrize(
    "mean, kwargs",
    [
        ([0.0, 0.0, -5.0], {}),  # behind the camera
        ([0.0, 0.0, 0.005], {}),  # in front of the camera but before the 0.01 near plane
        ([0.0, 0.0, 20.0], {"far_plane": 10.0}),  # beyond the far plane
        ([40.0, 0.0, 5.0], {}),  # 800 px right of the image, far outside its box
    ],
)
def test_culled_gaussians_leave_the_background(mean, kwargs):
    background = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = render([mean], [0.2] * 3, [0.9], [[1.0, 1.0, 1.0]], eps2d=0.0, background=background, **kwargs)
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    assert torch.equal(out.color, background.expand(H, W, 3))


def test_empty_scene_is_background_only():
    background = torch.tensor([0.25, 0.5, 0.75])
    empty = torch.zeros(0, 3)
    out = rasterize_torch(
        empty, torch.zeros(0, 4), empty, torch.zeros(0), empty, EYE.float(), K.float(), W, H, background=background
    )
    assert out.color.shape == (H, W, 3) and out.depth.shape == (H, W) and out.alpha.shape == (H, W)
    assert torch.equal(out.color, background.expand(H, W, 3)) and (out.alpha == 0).all()


def test_jacobian_uses_frustum_clamped_position():
    # x/z = 2 is far past the limit (W - cx)/fx + 0.3 W/(2 fx) = 0.411; gsplat clamps x/z to it in J only.
    # The Gaussian is long in z so that its box still reaches the image.
    means = torch.tensor([[10.0, 0.0, 5.0]], dtype=torch.float64)
    scales = torch.tensor([[0.5, 0.5, 10.0]], dtype=torch.float64)
    proj = project_gaussians(
        means, torch.tensor([IDENTITY_QUAT], dtype=torch.float64), scales, torch.tensor([0.9], dtype=torch.float64),
        EYE, K, W, H, eps2d=0.0,
    )  # fmt: skip
    assert proj.visible[0]
    lim = (W - CX) / F + 0.3 * W / (2 * F)
    z = 5.0
    jac = np.array([[F / z, 0, -F * (lim * z) / z**2], [0, F / z, 0]])
    cov2d = jac @ np.diag([0.25, 0.25, 100.0]) @ jac.T
    expected = np.linalg.inv(cov2d)
    assert proj.conics[0].numpy() == pytest.approx([expected[0, 0], expected[0, 1], expected[1, 1]], rel=1e-10)
    assert proj.means2d[0].numpy() == pytest.approx([F * 2 + CX, CY], rel=1e-12)  # the mean is not clamped


# --------------------------------------------------------------------------------------------------
# Brute force: an independent per-pixel implementation of gsplat's rules (numpy float64, full 3x3
# covariances), compared on whole images.


def brute_force(means, quats, scales, opacities, colors, viewmat, K, width, height, eps2d):
    means, quats, scales = means.numpy(), quats.numpy(), scales.numpy()
    opacities, colors, viewmat, K = opacities.numpy(), colors.numpy(), viewmat.numpy(), K.numpy()
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    splats = []
    for i in range(len(means)):
        w, x, y, z = quats[i] / np.linalg.norm(quats[i])
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )
        cov = viewmat[:3, :3] @ rot @ np.diag(scales[i] ** 2) @ rot.T @ viewmat[:3, :3].T
        p = viewmat[:3, :3] @ means[i] + viewmat[:3, 3]
        if not (0.01 <= p[2] <= 1e10) or opacities[i] < 1 / 255:
            continue
        tx = p[2] * np.clip(
            p[0] / p[2], -(cx / fx + 0.3 * width / (2 * fx)), (width - cx) / fx + 0.3 * width / (2 * fx)
        )
        ty = p[2] * np.clip(
            p[1] / p[2], -(cy / fy + 0.3 * height / (2 * fy)), (height - cy) / fy + 0.3 * height / (2 * fy)
        )
        jac = np.array([[fx / p[2], 0, -fx * tx / p[2] ** 2], [0, fy / p[2], -fy * ty / p[2] ** 2]])
        cov2d = jac @ cov @ jac.T + eps2d * np.eye(2)
        if np.linalg.det(cov2d) <= 0:
            continue
        splats.append((p[2], i, fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy, np.linalg.inv(cov2d)))
    splats.sort(key=lambda s: (s[0], s[1]))
    px, py = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    T = np.ones((height, width))
    running = np.ones((height, width), bool)
    out = np.zeros((height, width, 3))
    for _, i, mx, my, conic in splats:
        dx, dy = mx - px, my - py
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = np.minimum(0.999, opacities[i] * np.exp(-sigma))
        use = running & (sigma >= 0) & (alpha >= 1 / 255)
        next_t = T * (1 - alpha)
        stop = use & (next_t <= 1e-4)
        running &= ~stop
        use &= ~stop
        out += np.where(use, alpha * T, 0)[..., None] * colors[i]
        T = np.where(use, next_t, T)
    return out, 1 - T, ~running  # colour, alpha, pixels that hit the transmittance stop


def random_scene(n: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * torch.tensor([1.0, 0.7, 0.4], dtype=dtype)
    means[:, 2] += 4.0
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = torch.rand(n, 3, generator=gen, dtype=dtype) * 0.2 + 0.01
    opacities = torch.rand(n, generator=gen, dtype=dtype) * 0.6 + 0.4
    colors = torch.rand(n, 3, generator=gen, dtype=dtype)
    return means, quats, scales, opacities, colors


@pytest.fixture(scope="module")
def brute_scene():
    scene = random_scene(1500, seed=3)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, 3] = torch.tensor([0.1, -0.05, 0.2])  # a non-trivial camera position
    K_scene = torch.tensor([[45.0, 0, 25.3], [0, 47.0, 17.8], [0, 0, 1]], dtype=torch.float64)
    color, alpha, stopped = brute_force(*scene, viewmat, K_scene, 51, 37, eps2d=0.3)
    return scene, viewmat, K_scene, color, alpha, stopped


@pytest.mark.parametrize("tile_size, chunk_size", [(2, 16), (4, 32), (8, 5), (16, 64)])
def test_whole_image_matches_brute_force_for_any_tiling(brute_scene, tile_size, chunk_size):
    scene, viewmat, K_scene, color, alpha, stopped = brute_scene
    assert stopped.mean() > 0.05  # enough pixels reach the transmittance stop
    out = rasterize_torch(
        *scene,
        viewmat,
        K_scene,
        51,
        37,
        eps2d=0.3,
        tile_size=tile_size,
        chunk_size=chunk_size,
        max_pairs_per_batch=1 << 15,
    )
    np.testing.assert_allclose(out.color.numpy(), color, atol=1e-12)  # float64: measured worst 6.2e-15
    np.testing.assert_allclose(out.alpha.numpy(), alpha, atol=1e-12)  # measured worst 5.8e-15


def test_float32_matches_brute_force(brute_scene):
    scene, viewmat, K_scene, color, alpha, _ = brute_scene
    out = rasterize_torch(*(t.float() for t in scene), viewmat.float(), K_scene.float(), 51, 37, eps2d=0.3)
    np.testing.assert_allclose(out.color.numpy(), color, atol=2e-5)  # float32: measured worst 1.3e-6
    np.testing.assert_allclose(out.alpha.numpy(), alpha, atol=2e-5)  # measured worst 1.7e-6


def test_float32_is_accurate_on_the_golden_scene(golden_dir):
    # The quadratic expansion in tile-local coordinates must stay accurate on a real SHARP scene in float32
    # (gsplat itself works in float32): compare with the same renderer in float64.
    from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
    from sharp_export.reference.render import Camera, make_trajectory, render_scene

    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    names = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
    gaussians = Gaussians3D(*(torch.from_numpy(data[name]) for name in names))
    meta = SceneMeta(float(data["f_px"]), 640, 480)
    camera = make_trajectory(gaussians, meta, num_frames=60, resolution=(320, 240))[30]
    ours = render_scene(gaussians, camera, backend="torch")
    camera64 = Camera(camera.viewmat.double(), camera.K.double(), camera.width, camera.height)
    exact = render_scene(gaussians.to(torch.float64), camera64, backend="torch")
    mse = float(((ours.color.double() - exact.color) ** 2).mean())
    assert 10 * math.log10(1 / mse) > 80  # measured 96.8 dB (worst pixel 1.8e-3)
    assert ours.alpha.mean() > 0.9  # the scene fills the view
