"""The Gaussians that flow through the pipeline, and their post-processing.

``Gaussians3D`` has the field order of ml-sharp's NamedTuple of the same name, so tuples from any
runner (torch, ONNX Runtime, Core ML, TensorRT) line up with the reference by position.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch

GAUSSIAN_FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")


class Gaussians3D(NamedTuple):
    """A batch of 3D Gaussians.

    Straight out of the model they live in "NDC x z" space with unnormalised quaternions; after
    ``unproject_gaussians`` they are metric OpenCV camera-space Gaussians with unit quaternions.
    """

    mean_vectors: torch.Tensor  # [B, N, 3] xyz
    singular_values: torch.Tensor  # [B, N, 3] scales (standard deviations), not log
    quaternions: torch.Tensor  # [B, N, 4] wxyz
    colors: torch.Tensor  # [B, N, 3] linear RGB in (0, 1)
    opacities: torch.Tensor  # [B, N] in (0, 1)

    def to(self, *args, **kwargs) -> Gaussians3D:
        return Gaussians3D(*(t.to(*args, **kwargs) for t in self))

    def select(self, index: int) -> Gaussians3D:
        """Batch element ``index`` as a batch of one."""
        return Gaussians3D(*(t[index : index + 1] for t in self))


@dataclass(frozen=True)
class NonFinite:
    """Gaussians with a NaN or Inf in any attribute: how many, of how many, and the first attribute (in
    ``GAUSSIAN_FIELDS`` order) that has one."""

    count: int
    total: int
    first_field: str

    def describe(self) -> str:
        return f"NaN or Inf values in {self.count:,} of {self.total:,} Gaussians (first attribute: {self.first_field})"


def find_non_finite(gaussians: Gaussians3D) -> NonFinite | None:
    """The non-finite Gaussians of a batch ([B, N, ...] tensors, any dtype or device), or None when all are finite."""
    batch, count = gaussians.mean_vectors.shape[:2]
    bad_rows = torch.zeros(batch * count, dtype=torch.bool, device=gaussians.mean_vectors.device)
    first = None
    for name in GAUSSIAN_FIELDS:
        values = getattr(gaussians, name)
        rows = ~torch.isfinite(values.reshape(batch * count, -1)).all(dim=1)
        if first is None and bool(rows.any()):
            first = name
        bad_rows |= rows.to(bad_rows.device)
    if first is None:
        return None
    return NonFinite(int(bad_rows.sum()), batch * count, first)


@dataclass(frozen=True)
class SceneMeta:
    """What a scene remembers of its source image (written into the PLY's extra elements)."""

    f_px: float  # focal length in pixels of the original image
    width: int  # original image width in pixels
    height: int  # original image height in pixels


# ----------------------------------------------------------------------------------------------------
# Colour and opacity encodings used by the PLY formats.
# ----------------------------------------------------------------------------------------------------

SH_C0 = 0.28209479177387814  # sqrt(1 / (4 pi)), degree-0 spherical-harmonic basis constant
SRGB_ENCODE_THRESHOLD = 0.0031308  # linear values at or below it take the linear segment
SRGB_DECODE_THRESHOLD = 0.04045  # sRGB values at or below it take the linear segment


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB -> sRGB transfer function (ml-sharp's ``linearRGB2sRGB``)."""
    # The pow branch is evaluated on a clamped copy so negative inputs cannot produce NaN there.
    safe = torch.where(linear <= SRGB_ENCODE_THRESHOLD, SRGB_ENCODE_THRESHOLD, linear)
    return torch.where(linear <= SRGB_ENCODE_THRESHOLD, linear * 12.92, 1.055 * safe ** (1 / 2.4) - 0.055)


def srgb_to_linear(srgb: torch.Tensor) -> torch.Tensor:
    """sRGB -> linear RGB transfer function (ml-sharp's ``sRGB2linearRGB``)."""
    safe = torch.where(srgb <= SRGB_DECODE_THRESHOLD, SRGB_DECODE_THRESHOLD, srgb)
    return torch.where(srgb <= SRGB_DECODE_THRESHOLD, srgb / 12.92, ((safe + 0.055) / 1.055) ** 2.4)


def logit(p: torch.Tensor) -> torch.Tensor:
    """Inverse sigmoid written as ml-sharp's PLY writer does (log(p / (1 - p)), not torch.logit)."""
    return torch.log(p / (1.0 - p))


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] -> degree-0 SH coefficient (``f_dc``)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH coefficient (``f_dc``) -> colour."""
    return sh * SH_C0 + 0.5


# ----------------------------------------------------------------------------------------------------
# Rotations and covariances.
# ----------------------------------------------------------------------------------------------------


def rotation_matrices_from_quaternions(
    quaternions: torch.Tensor,  # [..., 4] wxyz, any norm
) -> torch.Tensor:  # [..., 3, 3]
    """Rotation matrices of the normalised quaternions."""
    q = quaternions / torch.linalg.vector_norm(quaternions, dim=-1, keepdim=True)
    rows = _rotation_components(*q.unbind(-1))
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def _rotation_components(w, x, y, z) -> tuple[torch.Tensor, ...]:
    """The 9 entries (row-major) of the rotation matrix of a unit quaternion, each shaped like ``w``."""
    xx, yy, zz, xy, xz, yz = x * x, y * y, z * z, x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    return (
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    )  # fmt: skip


def compose_covariance_matrices(
    quaternions: torch.Tensor,  # [..., 4] wxyz, any norm
    singular_values: torch.Tensor,  # [..., 3] standard deviations
) -> torch.Tensor:  # [..., 3, 3]
    """Sigma = R(q) diag(s^2) R(q)^T."""
    rotations = rotation_matrices_from_quaternions(quaternions)
    return (rotations * singular_values.square()[..., None, :]) @ rotations.transpose(-1, -2)


def quaternions_from_rotation_matrices(
    rotations: torch.Tensor,  # [..., 3, 3] proper rotations
) -> torch.Tensor:  # [..., 4] unit wxyz
    """Vectorised Shepperd conversion (the branch choice scipy's ``Rotation.from_matrix`` makes)."""
    m = rotations.flatten(-2).unbind(-1)
    return torch.stack(_quaternion_from_components(m), dim=-1)


def _quaternion_from_components(m: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Unit quaternion (w, x, y, z) of a rotation given as 9 row-major entries.

    Each of the four algebraically equal candidates is 4 q_i times q for one component i; the one with
    the largest pivot (4 q_i^2 >= 1 for the largest |q_i|) is normalised, so no candidate near zero is
    ever used.
    """
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    trace = m00 + m11 + m22
    # Candidates before normalisation; pivot on trace, m00, m11, m22 respectively.
    cand_w = (1 + trace, m21 - m12, m02 - m20, m10 - m01)
    cand_x = (m21 - m12, 1 + 2 * m00 - trace, m01 + m10, m02 + m20)
    cand_y = (m02 - m20, m01 + m10, 1 + 2 * m11 - trace, m12 + m21)
    cand_z = (m10 - m01, m02 + m20, m12 + m21, 1 + 2 * m22 - trace)
    # Ties resolve like numpy's argmax over (m00, m11, m22, trace), as in scipy.
    use_x = (m00 >= m11) & (m00 >= m22) & (m00 >= trace)
    use_y = ~use_x & (m11 >= m22) & (m11 >= trace)
    use_z = ~use_x & ~use_y & (m22 >= trace)
    out = []
    for w_c, x_c, y_c, z_c in zip(cand_w, cand_x, cand_y, cand_z, strict=True):
        out.append(torch.where(use_z, z_c, torch.where(use_y, y_c, torch.where(use_x, x_c, w_c))))
    norm = torch.sqrt(out[0] * out[0] + out[1] * out[1] + out[2] * out[2] + out[3] * out[3])
    return tuple(c / norm for c in out)


# The 3-vector helpers use addcmul (a + b * c in one pass): these loops are memory-bound, so fusing a
# multiply into the add saves a full read and write of a temporary.


def _cross(u: tuple, v: tuple) -> tuple:
    return (
        torch.addcmul(u[1] * v[2], u[2], v[1], value=-1),
        torch.addcmul(u[2] * v[0], u[0], v[2], value=-1),
        torch.addcmul(u[0] * v[1], u[1], v[0], value=-1),
    )


def _dot(u: tuple, v: tuple) -> torch.Tensor:
    return torch.addcmul(torch.addcmul(u[0] * v[0], u[1], v[1]), u[2], v[2])


def _canonical_sign(v: tuple) -> tuple:
    """Flip a vector so that its projection on (4, 2, 1) is positive: a cheap canonical eigenvector sign.

    Unlike a select of the largest entry it costs a handful of arithmetic ops; axis-aligned vectors
    come out pointing along +x, +y or +z.
    """
    sign = torch.copysign(torch.ones_like(v[0]), 4 * v[0] + 2 * v[1] + v[2])
    return tuple(c * sign for c in v)


def _symmetric_eigen_3x3(a00, a01, a02, a11, a12, a22) -> tuple[tuple, tuple]:
    """Eigen-decomposition of symmetric 3x3 matrices given as 6 flat tensors of equal shape [n].

    Returns (eigenvalues descending, as 3 tensors) and the rotation whose columns are the matching unit
    eigenvectors, as 9 row-major tensors, with det = +1.

    Closed form, after Eberly ("A Robust Eigensolver for 3x3 Symmetric Matrices"): the eigenvalue
    farthest from the other two comes from the trigonometric solution of the characteristic cubic, its
    eigenvector from the largest cross product of two rows of A - lambda I; the remaining pair from the
    2x2 problem on the orthogonal plane, solved without cancellation (when the two eigenvalues coincide
    any orthonormal pair of that plane is correct, and one is returned). Eigenvector signs are
    canonicalised (positive along (4, 2, 1) in the first two columns): for a covariance only the axes
    matter. Run it in float64: eigenvalues carry an absolute error of about eps * trace.
    """
    # Scale by the trace (>= every entry of a PSD matrix) so the cubic terms stay in range.
    # (The clamp keeps an all-zero matrix finite; a zero Gaussian then decomposes to zero scales.)
    scale = (a00 + a11 + a22).abs().clamp_min(1e-300)
    inv_scale = 1 / scale
    a00, a01, a02, a11, a12, a22 = (t * inv_scale for t in (a00, a01, a02, a11, a12, a22))
    q = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = torch.sqrt((_dot((b00, b11, b22), (b00, b11, b22)) + 2 * _dot((a01, a02, a12), (a01, a02, a12))) / 6)
    # p == 0 means A = q I: det_b is 0 too, every direction is an eigenvector and any basis below is right.
    # The clamp only keeps inv_p^3 finite (p <= 1 after scaling).
    inv_p = 1 / p.clamp_min(1e-100)
    det_b = _dot((b00, a01, a02), _cross((a01, b11, a12), (a02, a12, b22)))
    half_det = 0.5 * det_b * (inv_p * inv_p * inv_p)
    phi = torch.acos(half_det.clamp(-1, 1)) / 3
    # half_det >= 0: the largest eigenvalue (phi) is the isolated one, else the smallest (phi + 2 pi / 3).
    max_first = half_det >= 0
    l0 = q + 2 * p * torch.cos(torch.where(max_first, phi, phi + 2 * math.pi / 3))

    rows = ((a00 - l0, a01, a02), (a01, a11 - l0, a12), (a02, a12, a22 - l0))
    x01, x02, x12 = _cross(rows[0], rows[1]), _cross(rows[0], rows[2]), _cross(rows[1], rows[2])
    n01, n02, n12 = _dot(x01, x01), _dot(x02, x02), _dot(x12, x12)
    best = tuple(torch.where(n02 > n01, b, a) for a, b in zip(x01, x02, strict=True))
    n_best = torch.maximum(n01, n02)
    best = tuple(torch.where(n12 > n_best, b, a) for a, b in zip(best, x12, strict=True))
    n_best = torch.maximum(n_best, n12)
    found = n_best > 0
    inv_n = torch.where(found, torch.rsqrt(n_best), torch.zeros_like(n_best))
    zero, one = torch.zeros_like(p), torch.ones_like(p)
    e0 = (torch.where(found, best[0] * inv_n, one), best[1] * inv_n, best[2] * inv_n)

    # Orthonormal basis (u, v) of the plane orthogonal to e0.
    x_big = e0[0].abs() > e0[1].abs()
    u = (torch.where(x_big, -e0[2], zero), torch.where(x_big, zero, e0[2]), torch.where(x_big, e0[0], -e0[1]))
    inv_u = torch.rsqrt(_dot(u, u))
    u = tuple(c * inv_u for c in u)
    v = _cross(e0, u)

    def times_a(w: tuple) -> tuple:
        return (_dot((a00, a01, a02), w), _dot((a01, a11, a12), w), _dot((a02, a12, a22), w))

    # The other two eigenpairs solve the 2x2 problem on span(u, v) in closed form; this splits close
    # eigenvalues accurately (the cubic's root formula alone loses half the digits there) and gives an
    # orthonormal pair even when they coincide.
    au, av = times_a(u), times_a(v)
    t00, t01, t11 = _dot(u, au), _dot(u, av), _dot(v, av)
    half_diff = (t00 - t11) / 2
    centre, radius = (t00 + t11) / 2, torch.sqrt(half_diff * half_diff + t01 * t01)
    # Eigenvector of the larger 2x2 eigenvalue, (half_diff + radius, t01) or equivalently (t01, radius -
    # half_diff): take the one without cancellation; (1, 0) when the 2x2 block is a multiple of I.
    use_first = half_diff >= 0
    cu = torch.where(use_first, half_diff + radius, t01)
    cv = torch.where(use_first, t01, radius - half_diff)
    c_norm2 = cu * cu + cv * cv
    has_vector = c_norm2 > 0
    inv_c = torch.where(has_vector, torch.rsqrt(c_norm2), zero)
    cos_t, sin_t = torch.where(has_vector, cu * inv_c, one), cv * inv_c
    e_hi = tuple(torch.addcmul(cos_t * a, sin_t, b) for a, b in zip(u, v, strict=True))
    e_lo = tuple(torch.addcmul(cos_t * b, sin_t, a, value=-1) for a, b in zip(u, v, strict=True))
    # Descending order: the isolated l0 is the largest (max_first) or the smallest; min / max rather than
    # a select also keeps the order where round-off makes near-equal eigenvalues cross.
    l_hi, l_lo = centre + radius, centre - radius
    eigenvalues = (
        torch.maximum(l0, l_hi) * scale,
        torch.maximum(l_lo, torch.minimum(l0, l_hi)) * scale,
        torch.minimum(l0, l_lo) * scale,
    )
    # (e0, e_hi, e_lo) is right-handed (e_hi x e_lo = u x v = e0), and so is its cyclic shift.
    col_max = _canonical_sign(tuple(torch.where(max_first, a, b) for a, b in zip(e0, e_hi, strict=True)))
    col_mid = _canonical_sign(tuple(torch.where(max_first, a, b) for a, b in zip(e_hi, e_lo, strict=True)))
    col_min = _cross(col_max, col_mid)
    rotation = (
        col_max[0], col_mid[0], col_min[0],
        col_max[1], col_mid[1], col_min[1],
        col_max[2], col_mid[2], col_min[2],
    )  # fmt: skip
    return eigenvalues, rotation


# Gaussians per step. On CPU a step keeps the float64 temporaries near cache size and each torch op
# below its intra-op parallel grain (32768 elements), so ops run serially and the steps are spread over
# a thread pool instead: one barrier-free task per step rather than ~300 OpenMP regions, which stall
# badly when other processes compete for the cores. On a GPU, big steps amortise the kernel launches.
DECOMPOSE_CHUNK_CPU = 32000
DECOMPOSE_CHUNK_GPU = 1 << 20


def _compute_device(device: torch.device) -> torch.device:
    """Where the float64 decomposition runs: the tensor's device, except MPS, which has no float64."""
    return torch.device("cpu") if device.type == "mps" else device


def _decompose_into(
    covariance_components,  # callable(start, stop) -> 6 float64 tensors [n] (a00, a01, a02, a11, a12, a22)
    count: int,
    device: torch.device,  # where the components live
    quaternions_out: torch.Tensor,  # [count, 4]
    singular_values_out: torch.Tensor,  # [count, 3]
) -> None:
    def run(start: int) -> None:
        stop = min(start + chunk, count)
        eigenvalues, rotation = _symmetric_eigen_3x3(*covariance_components(start, stop))
        # Column-wise copies cast straight into the outputs (no stacked float64 intermediate).
        for index, component in enumerate(_quaternion_from_components(rotation)):
            quaternions_out[start:stop, index] = component
        for index, eigenvalue in enumerate(eigenvalues):
            # Round-off can push a zero eigenvalue slightly negative; the SVD would give 0 there.
            singular_values_out[start:stop, index] = eigenvalue.clamp_min(0).sqrt()

    if device.type != "cpu":
        chunk = DECOMPOSE_CHUNK_GPU
        for start in range(0, count, chunk):
            run(start)
        return
    chunk = DECOMPOSE_CHUNK_CPU
    starts = range(0, count, chunk)
    workers = min(torch.get_num_threads(), len(starts))
    if workers <= 1:
        for start in starts:
            run(start)
        return
    # torch releases the GIL inside each op, so Python threads give real parallelism here; every task
    # writes its own slice of the outputs.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, starts))


def decompose_covariance_matrices(
    covariances: torch.Tensor,  # [..., 3, 3] symmetric positive semi-definite
) -> tuple[torch.Tensor, torch.Tensor]:  # quaternions [..., 4] unit wxyz, singular values [..., 3] descending
    """Quaternions and scales (sqrt of the descending eigenvalues) of covariance matrices.

    Replaces ml-sharp's CPU float64 SVD + scipy: same results to float precision, vectorised, on the
    tensor's own device, in float64 there. The rotation differs from the SVD's by eigenvector signs
    (equally valid; the covariance it describes is the same).
    """
    batch_shape = covariances.shape[:-2]
    work_device = _compute_device(covariances.device)
    flat = covariances.reshape(-1, 9)
    count = flat.shape[0]
    quaternions = torch.empty(count, 4, dtype=covariances.dtype, device=work_device)
    singular_values = torch.empty(count, 3, dtype=covariances.dtype, device=work_device)

    def components(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        part = flat[start:stop].to(device=work_device, dtype=torch.float64)
        # Symmetrise: average the mirrored entries.
        return (
            part[:, 0], (part[:, 1] + part[:, 3]) / 2, (part[:, 2] + part[:, 6]) / 2,
            part[:, 4], (part[:, 5] + part[:, 7]) / 2, part[:, 8],
        )  # fmt: skip

    _decompose_into(components, count, work_device, quaternions, singular_values)
    device = covariances.device
    return quaternions.to(device).reshape(*batch_shape, 4), singular_values.to(device).reshape(*batch_shape, 3)


# ----------------------------------------------------------------------------------------------------
# Unprojection: NDC x z space -> metric OpenCV camera space.
# ----------------------------------------------------------------------------------------------------


def unprojection_matrix(meta: SceneMeta, resolution: int) -> torch.Tensor:  # [4, 4] float32, CPU
    """inv(ndc @ K_resized) exactly as ml-sharp's predict path builds it, float32 included.

    K has cx = W/2, cy = H/2 (pixel-edge convention), its rows scaled to the R x R model grid; ndc maps
    the grid's pixel coordinates to [-1, 1]. Analytically this is diag(W/(2f), H/(2f), 1), but the
    float32 product and inverse differ from that by an ulp or so, and matching ml-sharp bit for bit
    keeps the metric means identical to the official ones.
    """
    width, height = meta.width, meta.height
    intrinsics = torch.tensor(
        [[meta.f_px, 0, width / 2, 0], [0, meta.f_px, height / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        dtype=torch.float32,
    )
    intrinsics[0] *= resolution / width
    intrinsics[1] *= resolution / height
    ndc = torch.tensor(
        [[2.0 / resolution, 0, -1, 0], [0, 2.0 / resolution, -1, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        dtype=torch.float32,
    )
    return torch.linalg.inv(ndc @ intrinsics @ torch.eye(4))


def apply_transform(
    gaussians: Gaussians3D,
    transform: torch.Tensor,  # [3, 4] or [4, 4] affine map, applied as x -> A x + b
) -> Gaussians3D:
    """Affine-transform Gaussians: means map directly, covariances become A Sigma A^T (re-decomposed).

    Returns unit quaternions and descending scales; colours and opacities pass through unchanged.
    """
    means = gaussians.mean_vectors
    linear = transform[:3, :3].to(means)
    mean_vectors = means @ linear.T + transform[:3, 3].to(means)

    batch_shape = means.shape[:-1]
    quats_in = gaussians.quaternions.reshape(-1, 4)
    scales_in = gaussians.singular_values.reshape(-1, 3)
    count = quats_in.shape[0]
    work_device = _compute_device(means.device)
    a = transform[:3, :3].to(torch.float64).tolist()  # 9 Python floats: zero entries are skipped below

    def components(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        q = quats_in[start:stop].to(device=work_device, dtype=torch.float64)
        s2 = scales_in[start:stop].to(device=work_device, dtype=torch.float64).square().unbind(-1)
        q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
        r = _rotation_components(*q.unbind(-1))
        # m = A R, entry (i, j) = sum_k A[i][k] R[k][j]; A is diagonal in practice.
        m = [[_weighted_sum([(a[i][k], r[3 * k + j]) for k in range(3)]) for j in range(3)] for i in range(3)]
        # Sigma' = m diag(s^2) m^T: entry (i, j) = sum_k m[i][k] * (m[j][k] s_k^2).
        ms = [[m[j][k] * s2[k] for k in range(3)] for j in range(3)]

        def entry(i: int, j: int) -> torch.Tensor:
            return _dot(m[i], ms[j])

        return entry(0, 0), entry(0, 1), entry(0, 2), entry(1, 1), entry(1, 2), entry(2, 2)

    quaternions = torch.empty(count, 4, dtype=gaussians.quaternions.dtype, device=work_device)
    singular_values = torch.empty(count, 3, dtype=gaussians.singular_values.dtype, device=work_device)
    _decompose_into(components, count, work_device, quaternions, singular_values)
    return Gaussians3D(
        mean_vectors=mean_vectors,
        singular_values=singular_values.to(means.device).reshape(*batch_shape, 3),
        quaternions=quaternions.to(means.device).reshape(*batch_shape, 4),
        colors=gaussians.colors,
        opacities=gaussians.opacities,
    )


def _weighted_sum(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum(w * t) over the terms with a non-zero weight (one fewer full-size multiply-add per zero)."""
    kept = [(w, t) for w, t in terms if w != 0.0]
    if not kept:
        return torch.zeros_like(terms[0][1])
    total = kept[0][1] * kept[0][0]
    for w, t in kept[1:]:
        total = total + t * w
    return total


def unproject_gaussians(gaussians: Gaussians3D, meta: SceneMeta, resolution: int) -> Gaussians3D:
    """Raw model output (NDC x z on the R x R grid) -> metric OpenCV camera-space Gaussians.

    ``meta`` holds the ORIGINAL image's focal length and size. Matches ml-sharp's ``unproject_gaussians``
    with identity extrinsics (docs/architecture.md §7.2).
    """
    return apply_transform(gaussians, unprojection_matrix(meta, resolution).to(gaussians.mean_vectors.device))
