"""Render-space parity with the project's torch renderer on the tiny golden scene (640x480 predict path)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharp_export.parity import compare_gaussians
from sharp_export.parity.compare import FIELDS
from sharp_export.parity.views import DEFAULT_POSES, compare_renders, pose_index, render_views
from sharp_export.registry import load_tolerances

render = pytest.importorskip("sharp_export.reference.render")
POSES = ("first", "middle")
SIZE = (160, 120)  # quarter of the 640x480 source: 73,728 Gaussians, ~1-3 s per view on 2 cores


@pytest.fixture(scope="module")
def scene(golden_dir):
    from sharp_export.reference.gaussians import Gaussians3D, SceneMeta

    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    gaussians = Gaussians3D(*(torch.from_numpy(data[name]) for name in FIELDS))
    return gaussians, SceneMeta(float(data["f_px"]), 640, 480)


@pytest.fixture(scope="module")
def reference_views(scene):
    gaussians, meta = scene
    return render_views(gaussians, meta, poses=POSES, resolution=SIZE)


def _views(results):
    return {(r.view, r.metric): r for r in results}


def test_identical_scene_passes(scene, reference_views):
    gaussians, meta = scene
    assert [name for name, _ in reference_views] == list(POSES)
    color = reference_views[0][1].color
    assert color.shape == (SIZE[1], SIZE[0], 3) and 0.3 < float(color.mean()) < 0.7  # measured 0.49
    again = render_views(gaussians, meta, poses=POSES, resolution=SIZE, trajectory_from=gaussians)
    results = compare_renders(reference_views, again, None, load_tolerances("onnx", "fp32"), lpips_unavailable="n/a")
    table = _views(results)
    for pose in POSES:
        assert table[(pose, "psnr_db")].value == math.inf and table[(pose, "psnr_db")].status == "PASS"
        assert table[(pose, "ssim")].value == pytest.approx(1.0, abs=1e-12)
        assert table[(pose, "depth_rel")].value == 0.0 and table[(pose, "lpips")].status == "UNAVAILABLE"


def test_colour_error_fails_psnr_and_names_view(scene, reference_views):
    gaussians, meta = scene
    brighter = gaussians._replace(colors=(gaussians.colors * 1.05).clamp(0, 1))
    cand = render_views(brighter, meta, poses=POSES, resolution=SIZE, trajectory_from=gaussians)
    table = _views(compare_renders(reference_views, cand, None, load_tolerances("onnx", "fp32"), "n/a"))
    for pose in POSES:
        psnr = table[(pose, "psnr_db")]
        assert psnr.status == "FAIL" and 35 < psnr.value < 42  # measured 38.2 / 38.3 dB
        assert f"view {pose} psnr_db" in psnr.message and psnr.margin == pytest.approx(psnr.value - 45)
        assert table[(pose, "depth_rel")].value == 0.0  # colours do not move depth


def test_fp16_outputs_invisible_in_renders_but_caught_per_attribute(scene, reference_views):
    """Why both gates: fp16 rounding of every output renders at 64 dB, yet colours leave the fp32 budget."""
    gaussians, meta = scene
    rounded = type(gaussians)(*(t.half().float() for t in gaussians))
    cand = render_views(rounded, meta, poses=POSES, resolution=SIZE, trajectory_from=gaussians)
    fp32 = load_tolerances("onnx", "fp32")
    table = _views(compare_renders(reference_views, cand, None, fp32, "n/a"))
    for pose in POSES:
        assert table[(pose, "psnr_db")].value > 55  # measured 64.1 / 65.0 dB
        assert table[(pose, "ssim")].status == "PASS"
    attributes = {r.metric: r for r in compare_gaussians(gaussians, rounded, fp32, space="unprojected")}
    assert not attributes["colors_abs"].passed  # fp16 half-ulp at 0.8: 2.4e-4 > 1e-4


def test_rotate_forward_is_periodic(scene):
    """make_trajectory's last camera is its first: DEFAULT_POSES uses three_quarter instead of last."""
    gaussians, meta = scene
    cameras = render.make_trajectory(gaussians, meta, kind="rotate_forward", num_frames=60)
    torch.testing.assert_close(cameras[pose_index("last", 60)].viewmat, cameras[0].viewmat, atol=1e-6, rtol=0)
    quarter = cameras[pose_index("quarter", 60)].viewmat
    assert float((quarter - cameras[0].viewmat).abs().max()) > 1e-2
    assert "last" not in DEFAULT_POSES
