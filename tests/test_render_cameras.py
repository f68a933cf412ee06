"""SHARP's render cameras: resolution rule, intrinsics, depth quantiles and the four trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.render import make_trajectory, render_resolution, scene_camera_intrinsics
from sharp_export.reference.render.cameras import depth_quantiles


@pytest.fixture(scope="module")
def golden_scene(golden_dir):
    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    names = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
    gaussians = Gaussians3D(*(torch.from_numpy(data[name]) for name in names))
    return gaussians, SceneMeta(f_px=float(data["f_px"]), width=640, height=480)


@pytest.mark.parametrize(
    "size, expected",
    [
        ((640, 480), (640, 480, 1.0)),
        ((641, 481), (642, 482, 1.0)),  # odd sides round up to even
        ((4000, 3000), (4000, 3000, 1.0)),  # 3000 is not above the limit
        ((4032, 3024), (2016, 1512, 0.5)),  # height above 3000: both halved
        ((4035, 3025), (2018, 1512, 0.5)),  # halved with integer division, then made even
        ((3024, 4032), (1512, 2016, 0.5)),  # portrait
        ((5000, 2000), (5000, 2000, 1.0)),  # only the height counts, as in ml-sharp
    ],
)
def test_render_resolution(size, expected):
    assert render_resolution(SceneMeta(f_px=1000.0, width=size[0], height=size[1])) == expected


def test_intrinsics_scale_the_source_camera_with_its_principal_point():
    meta = SceneMeta(f_px=3000.0, width=4033, height=3025)
    width, height, _ = render_resolution(meta)  # 2016 x 1512
    K = scene_camera_intrinsics(meta, width, height).double()
    sx, sy = width / 4033, height / 3025
    expected = [[3000 * sx, 0, 2016 * sx], [0, 3000 * sy, 1512 * sy], [0, 0, 1]]  # cx = (W - 1)/2 at source size
    np.testing.assert_allclose(K.numpy(), expected, rtol=1e-6)  # float32 storage: measured worst 2.9e-8
    K_same = scene_camera_intrinsics(SceneMeta(f_px=500.0, width=640, height=480), 640, 480)
    assert K_same.tolist() == [[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]]


def test_depth_quantiles_equal_torch_quantile():
    z = torch.rand(100_003, generator=torch.Generator().manual_seed(0)) * 40 - 5  # some behind the camera
    ours = depth_quantiles(z, (0.001, 0.1, 0.999))
    assert ours == torch.quantile(z[z > 0], torch.tensor([0.001, 0.1, 0.999])).tolist()  # bit for bit


def camera_centre(viewmat: torch.Tensor) -> np.ndarray:
    rotation, translation = viewmat[:3, :3].double(), viewmat[:3, 3].double()
    return (-rotation.T @ translation).numpy()


def test_rotate_forward_matches_the_official_formulas(golden_scene):
    gaussians, meta = golden_scene
    cameras = make_trajectory(gaussians, meta, "rotate_forward", num_frames=60)
    assert len(cameras) == 60
    assert all((c.width, c.height) == (640, 480) for c in cameras)
    assert torch.equal(cameras[0].viewmat, torch.eye(4))  # first pose: the input camera
    assert torch.allclose(cameras[-1].viewmat, torch.eye(4), atol=1e-6)  # t = 1 closes the loop

    z = gaussians.mean_vectors[0, :, 2].double().numpy()
    min_depth, focus = np.quantile(z[z > 0], [0.001, 0.1])
    diag = np.hypot(640 / meta.f_px, 480 / meta.f_px)
    lateral, medial = 0.08 * diag * min_depth, 0.15 * min_depth
    for i in (7, 15, 30, 44):
        t = i / 59
        expected = [lateral * np.sin(2 * np.pi * t), 0.0, medial * (1 - np.cos(2 * np.pi * t)) / 2]
        np.testing.assert_allclose(
            camera_centre(cameras[i].viewmat), expected, atol=1e-5
        )  # float32 eye positions: measured worst 5.4e-7
    # Every camera looks at (0, 0, max(2, q10)): the target projects to the optical axis.
    target = torch.tensor([0.0, 0.0, max(2.0, focus), 1.0])
    for camera in cameras[1:]:
        x, y, depth, _ = (camera.viewmat.double() @ target.double()).tolist()
        assert abs(x) < 1e-5 and abs(y) < 1e-5 and depth > 0  # measured worst 1.4e-7
    # Mirror symmetry: frame i and frame 59 - i sit at opposite x, same y and z.
    for i in (5, 20):
        a, b = camera_centre(cameras[i].viewmat), camera_centre(cameras[59 - i].viewmat)
        np.testing.assert_allclose(a * [-1, 1, 1], b, atol=1e-6)  # measured worst 4.8e-16


def test_other_trajectories(golden_scene):
    gaussians, meta = golden_scene
    swipe = [camera_centre(c.viewmat) for c in make_trajectory(gaussians, meta, "swipe", num_frames=11)]
    assert len(swipe) == 11
    np.testing.assert_allclose(swipe[0], -swipe[-1], atol=1e-6)  # from -max to +max laterally
    np.testing.assert_allclose(swipe[5], [0, 0, 0], atol=1e-7)
    assert swipe[0][0] < 0 and all(abs(c[1]) < 1e-7 and abs(c[2]) < 1e-7 for c in swipe)

    shake = [camera_centre(c.viewmat) for c in make_trajectory(gaussians, meta, "shake", num_frames=21)]
    assert len(shake) == 21  # 10 horizontal, then 11 vertical
    assert all(abs(c[1]) < 1e-7 for c in shake[:10]) and all(abs(c[0]) < 1e-7 for c in shake[10:])
    assert max(abs(c[1]) for c in shake[10:]) == pytest.approx(max(abs(c[0]) for c in swipe), rel=0.05)

    rotate = [camera_centre(c.viewmat) for c in make_trajectory(gaussians, meta, "rotate", num_frames=9)]
    radius = np.hypot(rotate[0][0], rotate[0][1])
    assert rotate[0][0] == pytest.approx(0, abs=1e-7) and radius > 0  # starts straight above/below
    for c in rotate:
        assert np.hypot(c[0], c[1]) == pytest.approx(radius, rel=1e-5)  # a circle in the x-y plane


def test_resolution_override_scales_intrinsics(golden_scene):
    gaussians, meta = golden_scene
    camera = make_trajectory(gaussians, meta, num_frames=2, resolution=(320, 240))[0]
    assert (camera.width, camera.height) == (320, 240)
    np.testing.assert_allclose(camera.K[0].numpy(), [meta.f_px / 2, 0, 319.5 / 2], rtol=1e-6)  # float32
