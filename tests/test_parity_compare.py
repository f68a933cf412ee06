"""compare_gaussians on the tiny golden outputs made by ml-sharp's own code (raw and unprojected)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharp_export.parity.compare import FIELDS, compare_gaussians, covariances, quaternion_angle_deg
from sharp_export.registry import load_tolerances

GATED_RAW = ("means_rel_depth", "scales_log", "quat_angle_deg", "colors_abs", "opacities_abs")


@pytest.fixture(scope="module")
def raw(golden_dir) -> dict[str, np.ndarray]:
    """Raw predictor outputs (NDC x z, unnormalised quaternions), perturbed weights, float32."""
    data = np.load(golden_dir / "out_square_perturbed.npz")
    return {name: data[name] for name in FIELDS}


@pytest.fixture(scope="module")
def unprojected(golden_dir) -> dict[str, np.ndarray]:
    """Unprojected (metric camera space, SVD quaternions) outputs of the 640x480 predict path."""
    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    return {name: data[name] for name in FIELDS}


@pytest.fixture(scope="module")
def fp32():
    return load_tolerances("onnx", "fp32")


def by_metric(results):
    return {r.metric: r for r in results}


def axis_angle_quat(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    half = math.radians(degrees) / 2
    return np.array([math.cos(half), *(math.sin(half) * axis)])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # wxyz, [..., 4]
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def test_identity_passes_with_zero_error(raw, fp32):
    results = compare_gaussians(raw, raw, fp32)
    assert [r.metric for r in results] == [
        "means_abs", "means_rel_depth", "scales_log", "quat_angle_deg", "quat_norm_rel", "colors_abs", "opacities_abs",
    ]  # fmt: skip
    for r in results:
        assert r.passed and r.max == 0.0 and r.p99 == 0.0 and r.mean == 0.0 and r.n_nonfinite == 0, r
        assert r.message == ""
    gated = by_metric(results)
    for metric in GATED_RAW:
        assert gated[metric].status == "PASS"
        assert gated[metric].margin == fp32[metric].value
    assert gated["means_abs"].status == "INFO"


def test_torch_and_numpy_inputs_agree(raw, fp32):
    """Any runner's outputs: torch tensors (here fp16, as a Core ML fp16 model returns) or numpy."""
    cand_np = {k: v.astype(np.float16) for k, v in raw.items()}
    cand_torch = tuple(torch.from_numpy(cand_np[k]) for k in FIELDS)  # Gaussians3D field order
    a = compare_gaussians(raw, cand_np, fp32)
    b = compare_gaussians(tuple(torch.from_numpy(raw[k]) for k in FIELDS), cand_torch, fp32)
    assert [(r.metric, r.max, r.p99, r.passed) for r in a] == [(r.metric, r.max, r.p99, r.passed) for r in b]


def test_fp16_rounding_fails_fp32_table_but_passes_fp16(raw, fp32):
    """Rounding the outputs to fp16 (11-bit mantissa) is beyond fp32 noise but inside the fp16 table."""
    cand = {k: v.astype(np.float16) for k, v in raw.items()}
    strict = by_metric(compare_gaussians(raw, cand, fp32))
    # colours up to 0.80 in fp16: half-ulp 2.4e-4 > 1e-4 (measured max 2.4e-4).
    assert not strict["colors_abs"].passed
    assert strict["colors_abs"].max == pytest.approx(2.44e-4, rel=0.01)
    loose = compare_gaussians(raw, cand, load_tolerances("coreml", "fp16"))
    assert all(r.passed for r in loose), [r.message for r in loose if not r.passed]
    # fp16 half-ulp is 2^-12 = 2.4e-4 relative per component, and |x| reaches 5 z here: measured
    # means_rel_depth max 6.5e-4, p99 5.0e-4 (inside even the fp32 1e-3; colours are what catch fp16 outputs).
    assert by_metric(loose)["means_rel_depth"].max < 1e-3


@pytest.mark.parametrize(
    ("field", "metric", "expected_max"),
    [
        ("mean_vectors", "means_rel_depth", 2e-3),
        ("singular_values", "scales_log", 3e-3),
        ("quaternions", "quat_angle_deg", 1.0),
        ("colors", "colors_abs", 5e-4),
        ("opacities", "opacities_abs", 1e-3),
    ],
)
def test_small_perturbation_fails_and_names_attribute(raw, fp32, field, metric, expected_max):
    cand = {k: v.astype(np.float64) for k, v in raw.items()}
    i = 1234
    if field == "mean_vectors":
        cand[field][0, i] *= 1 + expected_max  # |d| / z = 2e-3 * |m| / z
        expected_max *= np.linalg.norm(raw[field][0, i].astype(np.float64)) / abs(float(raw[field][0, i, 2]))
    elif field == "singular_values":
        cand[field][0, i, 1] *= math.exp(expected_max)
    elif field == "quaternions":
        cand[field][0, i] = quat_mul(cand[field][0, i], axis_angle_quat([1, 2, 3], expected_max))
    elif field == "colors":
        cand[field][0, i, 2] += expected_max
    else:
        cand[field][0, i] += expected_max
    results = by_metric(compare_gaussians(raw, cand, fp32))
    bad = results[metric]
    assert not bad.passed and bad.status == "FAIL"
    # float32 reference vs float64 perturbation: measured relative difference < 1e-6 (angle 2e-6).
    assert bad.max == pytest.approx(expected_max, rel=1e-5)
    assert bad.required == bad.max
    assert bad.margin == pytest.approx(fp32[metric].value - expected_max, rel=1e-4)
    assert f"{field} {metric}" in bad.message
    assert f"margin {bad.margin:.3g}" in bad.message
    others = [r for m, r in results.items() if m != metric and not r.passed]
    assert others == []


def test_quaternion_sign_flip_passes(raw, fp32):
    cand = dict(raw)
    cand["quaternions"] = -raw["quaternions"]
    assert all(r.passed for r in compare_gaussians(raw, cand, fp32))
    flip = np.where(np.arange(raw["quaternions"].shape[1]) % 2 == 0, -1.0, 1.0)[None, :, None]
    cand["quaternions"] = raw["quaternions"] * flip * 3.0  # and any positive scale: the norm is not gated
    results = by_metric(compare_gaussians(raw, cand, fp32))
    assert results["quat_angle_deg"].passed and results["quat_angle_deg"].max < 1e-9  # measured 4.3e-14 deg
    assert results["quat_norm_rel"].status == "INFO" and results["quat_norm_rel"].max == pytest.approx(2.0)


def test_quaternion_angle_analytic():
    q = np.stack([axis_angle_quat([0, 0, 1], 0.0)] * 4)
    r = np.stack([axis_angle_quat([0, 0, 1], d) for d in (1e-4, 1.0, 90.0, 180.0)])
    # atan2 form keeps precision near 0: measured error 0 (2 acos(|<a,b>|) is off by 4.6e-9 deg at 1e-4 deg).
    np.testing.assert_allclose(quaternion_angle_deg(q, r), [1e-4, 1.0, 90.0, 180.0], rtol=1e-9)
    np.testing.assert_allclose(quaternion_angle_deg(q * 5, -r * 0.1), [1e-4, 1.0, 90.0, 180.0], rtol=1e-9)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_candidate_fails(raw, fp32, field, bad):
    cand = {k: v.copy() for k, v in raw.items()}
    cand[field].reshape(-1)[7] = bad
    results = compare_gaussians(raw, cand, fp32)
    failed = [r for r in results if not r.passed]
    assert failed and all(r.attribute == field for r in failed)
    gated = [r for r in failed if r.tolerance is not None]
    assert len(gated) == 1
    assert gated[0].n_nonfinite == 1
    assert "1 NaN/Inf values in the candidate" in gated[0].message
    assert math.isnan(gated[0].margin) and gated[0].required == math.inf


def test_nan_in_reference_is_a_reference_problem(raw, fp32):
    ref = {k: v.copy() for k, v in raw.items()}
    ref["colors"][0, 3, 1] = np.nan
    (bad,) = [r for r in compare_gaussians(ref, raw, fp32) if not r.passed]
    assert bad.attribute == "colors" and bad.n_nonfinite == 0
    assert "reference problem" in bad.message


def test_shape_mismatch_fails_clearly(raw, fp32):
    cand = dict(raw)
    cand["opacities"] = raw["opacities"][:, :-1]
    (bad,) = [r for r in compare_gaussians(raw, cand, fp32) if not r.passed]
    assert bad.attribute == "opacities"
    assert "shape mismatch: reference (1, 73728) vs candidate (1, 73727)" in bad.message
    assert math.isnan(bad.max)


def test_nonpositive_scale_fails(raw, fp32):
    cand = {k: v.copy() for k, v in raw.items()}
    cand["singular_values"][0, 5, 0] = 0.0
    (bad,) = [r for r in compare_gaussians(raw, cand, fp32) if not r.passed]
    assert bad.metric == "scales_log" and "1 non-positive scales in the candidate" in bad.message


def test_statistics_only_without_tolerances(raw):
    cand = {k: v.astype(np.float16) for k, v in raw.items()}
    results = compare_gaussians(raw, cand, None)
    assert all(r.status == "INFO" and r.tolerance is None for r in results)
    assert by_metric(results)["colors_abs"].max > 0


def test_unprojected_identity_and_covariance_gate(unprojected, fp32):
    results = by_metric(compare_gaussians(unprojected, unprojected, fp32, space="unprojected"))
    assert set(results) == {"means_abs", "means_rel_depth", "scales_log", "quat_angle_deg", "covariance_rel",
                            "colors_abs", "opacities_abs"}  # fmt: skip
    assert all(r.passed and r.max == 0 for r in results.values())
    assert results["quat_angle_deg"].status == "INFO" and results["covariance_rel"].status == "PASS"


def test_unprojected_degenerate_rotation_is_not_a_failure(unprojected, fp32):
    """Gaussians with two equal scales: rotating about the third axis changes the quaternion, not the Gaussian.

    ml-sharp's SVD returns such rotations arbitrarily (seed-0 square inputs with f = W/2 make every
    Gaussian isotropic in x and y), so the unprojected gate is the covariance, not the angle.
    """
    ref = {k: v.astype(np.float64) for k, v in unprojected.items()}
    ref["singular_values"][..., 1] = ref["singular_values"][..., 0]  # make scales (a, a, c)
    cand = {k: v.copy() for k, v in ref.items()}
    spin = axis_angle_quat([0, 0, 1], 37.0)  # about the local z axis, which carries scale c
    cand["quaternions"] = quat_mul(ref["quaternions"], spin)
    unproj = by_metric(compare_gaussians(ref, cand, fp32, space="unprojected"))
    assert unproj["quat_angle_deg"].status == "INFO"
    assert unproj["quat_angle_deg"].max == pytest.approx(37.0, rel=1e-9)
    # Same covariance up to float64 rounding: measured max 2.1e-15.
    assert unproj["covariance_rel"].passed and unproj["covariance_rel"].max < 1e-12
    raw_view = by_metric(compare_gaussians(ref, cand, fp32, space="raw"))
    assert not raw_view["quat_angle_deg"].passed  # the raw gate would (rightly, for raw outputs) fail


def test_unprojected_real_rotation_fails_covariance(unprojected, fp32):
    ref = {k: v.astype(np.float64) for k, v in unprojected.items()}
    cand = {k: v.copy() for k, v in ref.items()}
    cand["quaternions"][0, 10] = quat_mul(ref["quaternions"][0, 10], axis_angle_quat([1, 0, 0], 2.0))
    results = by_metric(compare_gaussians(ref, cand, fp32, space="unprojected"))
    assert not results["covariance_rel"].passed
    assert "covariance covariance_rel" in results["covariance_rel"].message


def test_covariances_match_explicit_formula():
    q = axis_angle_quat([1, 1, 0], 30.0)[None]
    s = np.array([[0.3, 0.2, 0.1]])
    w, x, y, z = q[0] / np.linalg.norm(q[0])
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    np.testing.assert_allclose(covariances(s, q)[0], rot @ np.diag(s[0] ** 2) @ rot.T, atol=1e-15)


def test_npz_and_missing_fields(golden_dir, raw, fp32):
    from sharp_export.errors import UserInputError

    npz = np.load(golden_dir / "out_square_perturbed.npz")  # extra arrays (monodepth_disparity, ...) are ignored
    assert all(r.passed for r in compare_gaussians(npz, raw, fp32))
    with pytest.raises(UserInputError, match="lack colors"):
        compare_gaussians(raw, {k: v for k, v in raw.items() if k != "colors"}, fp32)
    with pytest.raises(UserInputError, match="5 fields"):
        compare_gaussians(raw, tuple(raw.values())[:4], fp32)
