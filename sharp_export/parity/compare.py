"""Compare a candidate's Gaussians (any runner) with the reference, attribute by attribute.

One code path for every runner: inputs may be torch tensors or numpy arrays in any dtype; everything is
converted to float64 numpy first, so fp16 outputs and fp32 references compare on equal terms.

Metrics (each reported as max, p99 and mean over all Gaussians, plus the minimum tolerance that would
have passed, as Polygraphy does):

==================  =================  =========================================================
attribute           metric             definition
==================  =================  =========================================================
mean_vectors        means_abs          |m_c - m_r| (Euclidean, per Gaussian), information only
mean_vectors        means_rel_depth    |m_c - m_r| / max(|z_r|, 1e-6): error in units of depth
singular_values     scales_log         |log s_c - log s_r| per component (a relative error)
quaternions         quat_angle_deg     rotation angle between q_r/|q_r| and q_c/|q_c|, q ~ -q
quaternions         quat_norm_rel      ||q_c| - |q_r|| / |q_r| (raw outputs), information only
covariance          covariance_rel     |S_c - S_r|_F / |S_r|_F, S = R diag(s^2) R^T (unprojected)
colors              colors_abs         |c_c - c_r| per component
opacities           opacities_abs      |o_c - o_r|
==================  =================  =========================================================

Raw vs unprojected (``space``):

* ``"raw"``: the predictor's NDC x z outputs. z is already the depth; quaternions are unnormalised
  (q = (1,0,0,0) + delta). The angle normalises. The norm itself is reported but not gated: the renderer,
  the PLY writer and the unprojection all normalise, so a norm error changes no product; an angle error
  does. A norm near 0 makes the angle ill-conditioned; on the tiny golden (perturbed) |q| >= 1.32.
* ``"unprojected"``: metric camera-space Gaussians whose quaternions and sorted scales come from an SVD.
  For (near-)isotropic Gaussians the SVD rotation is not unique (seed-0 square images with f = W/2 make
  every Gaussian isotropic in x, y), so a tiny input change can rotate the quaternion arbitrarily while
  the Gaussian is unchanged. There the angle is information only and the gate is ``covariance_rel``,
  which compares what the quaternion and scales describe. Sorted singular values are stable under
  perturbation (Weyl), so ``scales_log`` stays gated.

Non-finite values: any NaN/Inf in a candidate attribute fails it; NaN/Inf in the reference fails it with
a message that blames the reference. A shape mismatch fails with both shapes in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sharp_export.errors import UserInputError
from sharp_export.parity.tolerances import Tolerance
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS

FIELDS = GAUSSIAN_FIELDS  # the five raw attributes, in Gaussians3D order
_LAST_DIM = {"mean_vectors": 3, "singular_values": 3, "quaternions": 4, "colors": 3, "opacities": None}
DEPTH_EPS = 1e-6  # z below this (never in SHARP: z >= 1/(1e4 + 1e-3)) would make relative errors explode
Space = Literal["raw", "unprojected"]


@dataclass
class AttributeResult:
    """One metric of one Gaussian attribute."""

    attribute: str  # Gaussian field ("mean_vectors", ...) or "covariance"
    metric: str  # key into the tolerance table (or an information-only metric)
    max: float
    p99: float
    mean: float
    tolerance: float | None  # None: information only, never fails on its value
    statistic: str  # gated statistic: "max" or "p99"
    passed: bool
    margin: float  # tolerance - observed; negative when failing; nan when not gated
    n_nonfinite: int  # NaN/Inf values in the candidate attribute
    message: str  # empty on a clean pass; otherwise what went wrong, naming the attribute
    required: float = math.nan  # smallest tolerance that would have passed (= the observed statistic)
    note: str = ""  # provenance of the tolerance (from the table)

    @property
    def status(self) -> str:
        if not self.passed:
            return "FAIL"
        return "INFO" if self.tolerance is None else "PASS"

    @property
    def ratio(self) -> float:
        """Observed / tolerance: the share of the budget used (> 1 fails)."""
        if self.tolerance is None or not self.tolerance > 0:
            return math.nan
        return self.required / self.tolerance


def _numpy64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_arrays(g: object) -> dict[str, np.ndarray]:
    """Gaussians3D (or any 5-tuple in its field order, or a mapping/npz with its field names) -> float64."""
    if isinstance(g, Mapping) or hasattr(g, "files"):  # dict or np.load(...) NpzFile
        keys = set(g.files) if hasattr(g, "files") else set(g)
        missing = [name for name in FIELDS if name not in keys]
        if missing:
            raise UserInputError(f"Gaussian outputs lack {', '.join(missing)}; found {', '.join(sorted(keys))}")
        return {name: _numpy64(g[name]) for name in FIELDS}
    values = tuple(g)  # type: ignore[arg-type]
    if len(values) != len(FIELDS):
        raise UserInputError(f"expected Gaussians with the {len(FIELDS)} fields {', '.join(FIELDS)}, got {len(values)}")
    return {name: _numpy64(v) for name, v in zip(FIELDS, values, strict=True)}


def _stats(values: np.ndarray) -> tuple[float, float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    return float(finite.max()), float(np.percentile(finite, 99)), float(finite.mean())


def _judge(
    attribute: str,
    metric: str,
    values: np.ndarray,  # per-element metric values (any shape)
    tol: Tolerance | None,  # None: information only
    n_nonfinite: int,
    problems: list[str],  # NaN/Inf, invalid values or a shape mismatch: each one fails the metric
) -> AttributeResult:
    vmax, vp99, vmean = _stats(values)
    statistic = tol.statistic if tol is not None else "max"
    observed = vp99 if statistic == "p99" else vmax
    messages = list(problems)
    # With NaN/Inf or invalid values no tolerance passes, and the finite part's headroom would read as
    # good news: margin stays nan and the required tolerance is inf.
    required = math.inf if problems else observed
    margin = math.nan
    if tol is not None and not problems:
        margin = tol.value - observed
        if math.isnan(observed):
            messages.append("no finite values to compare")
        elif observed > tol.value:
            messages.append(
                f"{statistic} {observed:.3g} > tolerance {tol.value:.3g} "
                f"(margin {margin:.3g}; would pass at {observed:.3g})"
            )
    return AttributeResult(
        attribute=attribute,
        metric=metric,
        max=vmax,
        p99=vp99,
        mean=vmean,
        tolerance=tol.value if tol is not None else None,
        statistic=statistic,
        passed=not messages,
        margin=margin,
        n_nonfinite=n_nonfinite,
        message=f"{attribute} {metric}: " + "; ".join(messages) if messages else "",
        required=required,
        note=tol.note if tol is not None else "",
    )


@dataclass
class _PairCheck:
    """What is wrong with one attribute pair before any metric is computed."""

    fatal: str | None  # shape mismatch or nothing to compare: no statistics at all
    problems: list[str]  # NaN/Inf and invalid values: statistics still computed on the rest
    n_nonfinite: int  # NaN/Inf in the candidate


def _check_pair(name: str, ref: np.ndarray, cand: np.ndarray) -> _PairCheck:
    if ref.shape != cand.shape:
        return _PairCheck(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}", [], 0)
    want = _LAST_DIM[name]
    if want is not None and (ref.ndim < 2 or ref.shape[-1] != want):
        return _PairCheck(f"expected shape [..., N, {want}], got {ref.shape}", [], 0)
    if ref.size == 0:
        return _PairCheck("no Gaussians to compare", [], 0)
    problems = []
    n_bad_cand = int((~np.isfinite(cand)).sum())
    n_bad_ref = int((~np.isfinite(ref)).sum())
    if n_bad_cand:
        problems.append(f"{n_bad_cand} NaN/Inf values in the candidate")
    if n_bad_ref:
        problems.append(f"reference problem: {n_bad_ref} NaN/Inf values in the reference output")
    return _PairCheck(None, problems, n_bad_cand)


def _flatten(name: str, values: np.ndarray, check: _PairCheck) -> np.ndarray:
    """[..., N, C] -> [M, C] (opacities [..., N] -> [M]); empty when the shapes are unusable."""
    width = _LAST_DIM[name]
    if check.fatal is not None:
        return np.zeros((0, width) if width else (0,))
    return values.reshape(-1, width) if width else values.reshape(-1)


def _unit_quats(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(q, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return q / norm[:, None], norm


def quaternion_angle_deg(
    q_ref: np.ndarray,  # [M, 4] wxyz, any norm
    q_cand: np.ndarray,  # [M, 4]
) -> np.ndarray:  # [M] degrees in [0, 180]
    """Rotation angle between two quaternions, sign-canonicalised (q and -q are the same rotation).

    2 acos(|<a, b>|) loses precision near 0; the equivalent 4 atan2(|a - b|, |a + b|) with b's sign
    aligned to a does not.
    """
    a, _ = _unit_quats(q_ref)
    b, _ = _unit_quats(q_cand)
    sign = np.where(np.sum(a * b, axis=-1) < 0, -1.0, 1.0)[:, None]
    b = b * sign
    return np.degrees(4.0 * np.arctan2(np.linalg.norm(a - b, axis=-1), np.linalg.norm(a + b, axis=-1)))


def _rotation_matrices(q: np.ndarray) -> np.ndarray:  # [M, 4] wxyz -> [M, 3, 3]
    u, _ = _unit_quats(q)
    w, x, y, z = u[:, 0], u[:, 1], u[:, 2], u[:, 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def covariances(
    scales: np.ndarray,  # [M, 3] standard deviations
    quats: np.ndarray,  # [M, 4] wxyz, any norm
) -> np.ndarray:  # [M, 3, 3]
    rot = _rotation_matrices(quats)
    return (rot * (scales**2)[:, None, :]) @ np.swapaxes(rot, -1, -2)


def compare_gaussians(
    reference: object,  # Gaussians3D (fields [B, N, ...]) or mapping with its field names
    candidate: object,  # same layout, from any runner
    tolerances: Mapping[str, Tolerance] | None,
    space: Space = "raw",
) -> list[AttributeResult]:
    """Per-attribute parity of two sets of Gaussians. ``tolerances=None`` only reports statistics."""
    if space not in ("raw", "unprojected"):
        raise ValueError(f"space must be 'raw' or 'unprojected', got {space!r}")
    tols = dict(tolerances or {})
    ref, cand = gaussian_arrays(reference), gaussian_arrays(candidate)
    checks = {name: _check_pair(name, ref[name], cand[name]) for name in FIELDS}
    flat_ref = {n: _flatten(n, ref[n], checks[n]) for n in FIELDS}
    flat_cand = {n: _flatten(n, cand[n], checks[n]) for n in FIELDS}
    results: list[AttributeResult] = []

    def add(attribute: str, metric: str, compute, check: _PairCheck, gated: bool = True) -> None:
        problems = [check.fatal] if check.fatal else check.problems
        values = np.array([])
        if check.fatal is None:
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                values = compute()
        tol = tols.get(metric) if gated else None
        results.append(_judge(attribute, metric, values, tol, check.n_nonfinite, problems))

    # Means: absolute and depth-relative error per Gaussian.
    m_ref, m_cand = flat_ref["mean_vectors"], flat_cand["mean_vectors"]
    mean_check = checks["mean_vectors"]
    add("mean_vectors", "means_abs", lambda: np.linalg.norm(m_cand - m_ref, axis=-1), mean_check, gated=False)
    add(
        "mean_vectors",
        "means_rel_depth",
        lambda: np.linalg.norm(m_cand - m_ref, axis=-1) / np.maximum(np.abs(m_ref[:, 2]), DEPTH_EPS),
        mean_check,
    )

    # Scales: log-space error; a non-positive scale has no log and fails.
    s_ref, s_cand = flat_ref["singular_values"], flat_cand["singular_values"]
    check = checks["singular_values"]
    if check.fatal is None:
        if (n := int((s_cand <= 0).sum())) > 0:
            check.problems.append(f"{n} non-positive scales in the candidate")
        if (n := int((s_ref <= 0).sum())) > 0:
            check.problems.append(f"reference problem: {n} non-positive scales in the reference output")
    add("singular_values", "scales_log", lambda: np.abs(np.log(s_cand) - np.log(s_ref)), check)

    # Quaternions: the angle is gated on raw outputs; unprojected ones gate the covariance instead.
    q_ref, q_cand = flat_ref["quaternions"], flat_cand["quaternions"]
    check = checks["quaternions"]
    add("quaternions", "quat_angle_deg", lambda: quaternion_angle_deg(q_ref, q_cand), check, space == "raw")
    if space == "raw":
        add(
            "quaternions",
            "quat_norm_rel",
            lambda: np.abs(np.linalg.norm(q_cand, axis=-1) / np.linalg.norm(q_ref, axis=-1) - 1.0),
            check,
            False,
        )
    else:
        s_check = checks["singular_values"]
        both = _PairCheck(
            s_check.fatal or check.fatal,
            s_check.problems + check.problems,
            s_check.n_nonfinite + check.n_nonfinite,
        )

        def covariance_rel() -> np.ndarray:
            cov_ref = covariances(s_ref, q_ref)
            diff = covariances(s_cand, q_cand) - cov_ref
            return np.linalg.norm(diff, axis=(-2, -1)) / np.linalg.norm(cov_ref, axis=(-2, -1))

        add("covariance", "covariance_rel", covariance_rel, both)

    add("colors", "colors_abs", lambda: np.abs(flat_cand["colors"] - flat_ref["colors"]), checks["colors"])
    add(
        "opacities",
        "opacities_abs",
        lambda: np.abs(flat_cand["opacities"] - flat_ref["opacities"]),
        checks["opacities"],
    )
    return results


def failing(results: Sequence[AttributeResult]) -> list[AttributeResult]:
    return [r for r in results if not r.passed]
