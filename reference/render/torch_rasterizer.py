"""Pure-PyTorch Gaussian rasterizer with gsplat 1.5.3 "classic" semantics (runs on any torch device).

What it reproduces from gsplat 1.5.3 (``rasterization(..., rasterize_mode="classic", packed=False)``):

* projection: Gaussians with camera z < near_plane or z > far_plane are dropped; the EWA Jacobian uses
  x/z and y/z clamped to the frustum widened by 30% (``lim_x_pos = (W - cx)/fx + 0.3 W/(2 fx)``,
  ``lim_x_neg = cx/fx + 0.3 W/(2 fx)``, same for y); ``eps2d`` is added to the 2D covariance diagonal;
  a non-positive determinant drops the Gaussian; so does an opacity below 1/255.
* bounding box: rectangular, half sizes ``ceil(extend * sqrt(cov2d_xx))`` and ``... cov2d_yy`` with the
  opacity-aware ``extend = min(3.33, sqrt(2 ln(255 opacity)))``; Gaussians whose box misses the image
  are dropped. With that extend every pixel outside the box has alpha < 1/255, so which screen tiles a
  Gaussian is binned into never changes the image: the tile size here is a speed knob only.
* blending per pixel (centre at +0.5), front to back in depth order (stable: equal depths keep input
  order): ``alpha = min(0.999, opacity * exp(-sigma))``; alpha < 1/255 is skipped; if the transmittance
  after this Gaussian would be <= 1e-4 the pixel stops and this Gaussian is NOT blended. Output colour
  is ``sum(c * alpha * T)`` (+ T * background) and alpha is ``1 - T``.

How: project all Gaussians at once (vectorised, no per-Gaussian Python), cull, list every (tile, Gaussian)
pair of the boxes over small screen tiles and sort the pairs by (tile, depth) with one radix-friendly
int64 key (tile id << 32 | float32 depth bits, as gsplat), then composite every tile's depth-ordered list
in chunks of ``chunk_size`` Gaussians, many tiles per batch. Within a tile the exponent is a quadratic in
tile-local pixel coordinates, so a batch of exponents is one matrix product; ``cumprod`` over the chunk
gives the transmittance, which is carried between chunks, and a tile leaves the work list once all its
pixels have stopped. Memory: O(N) for the projection, about 40 bytes per (tile, Gaussian) pair, and
about 20 bytes per pixel-Gaussian evaluation in flight (``max_pairs_per_batch``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

ALPHA_THRESHOLD = 0.003921568859368563  # gsplat: ALPHA_THRESHOLD (1.f / 255.f), as a float32 value
MAX_ALPHA = 0.999  # gsplat: alpha = min(0.999f, ...)
TRANSMITTANCE_THRESHOLD = 9.99999974737875e-05  # gsplat: stop when next_T <= 1e-4f (float32 value)
EXTEND_CAP = 3.33  # gsplat: opacity-aware box, extend = min(3.33, sqrt(2 ln(opacity / ALPHA_THRESHOLD)))
FRUSTUM_MARGIN = 0.3  # gsplat persp_proj: clamp limits widened by 0.3 * tan(fov/2)
DEPTH_ALPHA_FLOOR = 1e-8  # SHARP: depth = accumulated depth / clip(alpha, 1e-8)
TILE_SIZES = (2, 4, 8, 16)  # candidates for tile_size=None
_EMPTY_LOG_OPACITY = -1e4  # padding slots: exp(-1e4) == 0 in float32, no inf arithmetic


class RenderOutput(NamedTuple):
    """One rendered view."""

    color: torch.Tensor  # [H, W, 3] (or [H, W, C] for other channel counts)
    depth: torch.Tensor  # [H, W] expected depth: accumulated z / clip(alpha, 1e-8)
    alpha: torch.Tensor  # [H, W] accumulated opacity, 1 - transmittance


class ProjectedGaussians(NamedTuple):
    """Every input Gaussian projected to the screen; culled ones have ``visible`` False and zero radii."""

    means2d: torch.Tensor  # [N, 2] pixel coordinates
    conics: torch.Tensor  # [N, 3] inverse 2D covariance (a, b, c): sigma = a dx^2/2 + b dx dy + c dy^2/2
    depths: torch.Tensor  # [N] camera z
    radii: torch.Tensor  # [N, 2] int64 box half sizes in pixels, 0 when culled
    opacities: torch.Tensor  # [N]
    visible: torch.Tensor  # [N] bool


def rotate_by_inverse(vectors: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """``R(q)^T v`` for wxyz quaternions of any norm (gsplat normalises them): [N, 3] from [N, 3], [N, 4].

    Used to form ``J R_view R(q)`` row by row without building [N, 3, 3] matrices.
    """
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, axis = q[:, :1], -q[:, 1:]  # the inverse rotation has the negated vector part
    uv = torch.linalg.cross(axis, vectors, dim=-1)
    return vectors + 2.0 * (w * uv + torch.linalg.cross(axis, uv, dim=-1))


def project_gaussians(
    means: torch.Tensor,  # [N, 3] world
    quats: torch.Tensor,  # [N, 4] wxyz
    scales: torch.Tensor,  # [N, 3] standard deviations
    opacities: torch.Tensor,  # [N]
    viewmat: torch.Tensor,  # [4, 4] world -> camera (OpenCV)
    K: torch.Tensor,  # [3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> ProjectedGaussians:
    """gsplat's fully fused EWA projection (pinhole) and culling, vectorised over all Gaussians.

    Everything is computed for all N (no gathers: nearly every SHARP Gaussian is visible); culled
    entries are zeroed at the end.
    """
    dtype = means.dtype
    viewmat = viewmat.to(means.device, dtype)
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    p_cam = means @ rotation.T + translation  # [N, 3]
    x, y, z = p_cam.unbind(-1)

    fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    rz = 1.0 / z
    # Clamp only the Jacobian's x/z, y/z (far off-screen Gaussians would otherwise explode), as gsplat.
    tx = z * (x * rz).clamp(-(cx / fx + FRUSTUM_MARGIN * tan_fovx), (width - cx) / fx + FRUSTUM_MARGIN * tan_fovx)
    ty = z * (y * rz).clamp(-(cy / fy + FRUSTUM_MARGIN * tan_fovy), (height - cy) / fy + FRUSTUM_MARGIN * tan_fovy)

    # cov2d = (J R_view R_q S)(J R_view R_q S)^T, built from the two rows of J R_view ([N, 3] each).
    j0 = (fx * rz)[:, None] * rotation[0] - (fx * tx * rz * rz)[:, None] * rotation[2]
    j1 = (fy * rz)[:, None] * rotation[1] - (fy * ty * rz * rz)[:, None] * rotation[2]
    t0 = rotate_by_inverse(j0, quats) * scales  # [N, 3] row 0 of J R_view R_q diag(s)
    t1 = rotate_by_inverse(j1, quats) * scales
    cov_xx = (t0 * t0).sum(-1) + eps2d
    cov_xy = (t0 * t1).sum(-1)
    cov_yy = (t1 * t1).sum(-1) + eps2d
    det = cov_xx * cov_yy - cov_xy * cov_xy

    extend = torch.sqrt(2.0 * torch.log(opacities / ALPHA_THRESHOLD)).clamp(max=EXTEND_CAP)
    radius_x = torch.ceil(extend * cov_xx.clamp(min=0).sqrt())
    radius_y = torch.ceil(extend * cov_yy.clamp(min=0).sqrt())
    mean_x, mean_y = fx * x * rz + cx, fy * y * rz + cy
    visible = (
        (z >= near_plane)
        & (z <= far_plane)
        & (opacities >= ALPHA_THRESHOLD)
        & (det > 0)
        & (radius_x > 0)
        & (radius_y > 0)
        & (mean_x + radius_x > 0)
        & (mean_x - radius_x < width)
        & (mean_y + radius_y > 0)
        & (mean_y - radius_y < height)
    )
    zero = torch.zeros((), dtype=dtype, device=means.device)
    safe_det = torch.where(visible, det, 1.0)
    conics = torch.stack([cov_yy / safe_det, -cov_xy / safe_det, cov_xx / safe_det], dim=-1)
    return ProjectedGaussians(
        means2d=torch.where(visible[:, None], torch.stack([mean_x, mean_y], dim=-1), zero),
        conics=torch.where(visible[:, None], conics, zero),
        depths=torch.where(visible, z, zero),
        radii=torch.where(visible[:, None], torch.stack([radius_x, radius_y], dim=-1), zero).long(),
        opacities=opacities,
        visible=visible,
    )


def _tile_ranges(
    proj: ProjectedGaussians, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-Gaussian tile index ranges [x0, x1) x [y0, y1) covered by its box (gsplat isect_tiles rule).

    Culled Gaussians (zero radii, zeroed means) get empty ranges.
    """
    mx, my = proj.means2d.unbind(-1)
    rx, ry = proj.radii.unbind(-1)
    x0 = torch.floor((mx - rx) / tile_size).clamp(0, tiles_x).int()
    x1 = torch.ceil((mx + rx) / tile_size).clamp(0, tiles_x).int()
    y0 = torch.floor((my - ry) / tile_size).clamp(0, tiles_y).int()
    y1 = torch.ceil((my + ry) / tile_size).clamp(0, tiles_y).int()
    x1 = torch.where(proj.visible, x1, x0)
    return x0, x1, y0, y1


def choose_tile_size(proj: ProjectedGaussians, width: int, height: int) -> int:
    """Pick the tile size with the least estimated work (per-intersection bookkeeping vs per-pixel work).

    Estimated cost = box intersections x (24 + pixels per tile): one tile-Gaussian intersection
    (generation, reach test, sort, row gather, coefficients, chunk padding) costs about as much as 24
    pixel evaluations. The constant was fitted on 2 CPU cores to the measured best tile size of a
    full-size SHARP-like scene: 4 at 512x512, 8 at 1536x1536 (and 8 for the tiny golden scene).
    """
    best, best_cost = TILE_SIZES[0], math.inf
    for tile_size in TILE_SIZES:
        x0, x1, y0, y1 = _tile_ranges(proj, tile_size, -(-width // tile_size), -(-height // tile_size))
        n_isect = float(((x1 - x0).double() * (y1 - y0)).sum())
        cost = n_isect * (24.0 + tile_size * tile_size)
        if cost < best_cost:
            best, best_cost = tile_size, cost
    return best


def _depth_keys(depths: torch.Tensor) -> torch.Tensor:  # depths: [N] positive where visible
    """int64 keys < 2^31 that order like the depths (float32 bit patterns, as gsplat's radix sort)."""
    if depths.dtype == torch.float32:
        return depths.contiguous().view(torch.int32).long()
    # Other dtypes (tests in float64): the stable rank keeps full precision.
    rank = torch.empty(len(depths), dtype=torch.long, device=depths.device)
    rank[torch.sort(depths, stable=True).indices] = torch.arange(len(depths), device=depths.device)
    return rank


def _reaches_tile(
    proj: ProjectedGaussians,
    gauss: torch.Tensor,  # [I] Gaussian index per pair
    tile: torch.Tensor,  # [I] tile id per pair
    tile_size: int,
    tiles_x: int,
) -> torch.Tensor:
    """[I] bool: can the Gaussian reach alpha >= 1/255 anywhere in the rectangle of the tile's pixel centres?

    Exact test on the continuous rectangle (so never drops a contributing pair): sigma is convex, so its
    minimum over the rectangle is 0 if the centre is inside, else on an edge facing the centre. Candidate A
    minimises along the vertical line through the centre's x clamped into the rectangle, candidate B along
    the horizontal one; each is a 1-D quadratic minimum clamped to the edge.
    """
    dtype = proj.means2d.dtype
    mean = proj.means2d.index_select(0, gauss)
    conic = proj.conics.index_select(0, gauss)
    mx, my = mean.unbind(-1)
    a, b, c = conic.unbind(-1)
    x_lo = (tile % tiles_x).to(dtype) * tile_size + 0.5
    y_lo = torch.div(tile, tiles_x, rounding_mode="floor").to(dtype) * tile_size + 0.5
    span = tile_size - 1.0
    # Candidate A: x fixed at the clamped centre, best y on that line (clamped). d = mean - pixel.
    dx = mx - torch.maximum(torch.minimum(mx, x_lo + span), x_lo)
    dy = my - torch.maximum(torch.minimum(my + b * dx / c, y_lo + span), y_lo)
    sigma_a = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    # Candidate B: y fixed at the clamped centre, best x on that line (clamped).
    dy = my - torch.maximum(torch.minimum(my, y_lo + span), y_lo)
    dx = mx - torch.maximum(torch.minimum(mx + b * dy / a, x_lo + span), x_lo)
    sigma_b = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    # alpha >= 1/255  <=>  sigma <= ln(opacity / (1/255)); a small margin absorbs rounding.
    limit = torch.log(proj.opacities.index_select(0, gauss) / ALPHA_THRESHOLD) + 1e-3
    return torch.minimum(sigma_a, sigma_b) <= limit


def _intersections(
    proj: ProjectedGaussians, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gaussian index [I] int64, tile id [I] int64), sorted by tile then depth; equal depths keep index order."""
    x0, x1, y0, y1 = _tile_ranges(proj, tile_size, tiles_x, tiles_y)
    span_x = x1 - x0
    counts = (span_x * (y1 - y0)).long()
    n_isect = int(counts.sum())
    device = counts.device
    gauss = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)  # index order
    starts = torch.cumsum(counts, 0) - counts
    per_gauss = torch.stack([starts, (y0 * tiles_x + x0).long(), span_x.long()], dim=1).index_select(0, gauss)
    local = torch.arange(n_isect, device=device) - per_gauss[:, 0]
    tile = per_gauss[:, 1] + torch.div(local, per_gauss[:, 2], rounding_mode="floor") * tiles_x
    tile += local % per_gauss[:, 2]
    del local, per_gauss
    # Boxes are loose for round splats: about half the (tile, Gaussian) pairs of SHARP scenes have no
    # pixel with alpha >= 1/255. Dropping them is exact and saves sorting and compositing them.
    reach = _reaches_tile(proj, gauss, tile, tile_size, tiles_x)
    gauss, tile = gauss[reach], tile[reach]
    key = (tile << 32) | _depth_keys(proj.depths).index_select(0, gauss)
    key, order = torch.sort(key, stable=True)
    return gauss.index_select(0, order), key >> 32


def composite_tiles(
    proj: ProjectedGaussians,
    features: torch.Tensor,  # [N, F] per-Gaussian values to blend
    width: int,
    height: int,
    *,
    tile_size: int,
    chunk_size: int = 32,
    max_pairs_per_batch: int = 1 << 22,
) -> torch.Tensor:
    """Front-to-back alpha compositing with gsplat's per-pixel rules; returns [H, W, F] blended features."""
    device, dtype = features.device, features.dtype
    n_feat = features.shape[1]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n_tiles, n_pix = tiles_x * tiles_y, tile_size * tile_size
    accum = torch.zeros(n_tiles, n_pix, n_feat, device=device, dtype=dtype)

    gauss, tile_of_isect = _intersections(proj, tile_size, tiles_x, tiles_y)
    n_isect = len(gauss)
    if n_isect > 0:
        tile_counts = torch.bincount(tile_of_isect, minlength=n_tiles)
        del tile_of_isect
        tile_starts = torch.cumsum(tile_counts, 0) - tile_counts

        # One row per Gaussian (mean, conic, log opacity, features) plus a padding row (index N) with
        # zero alpha and no features: a single row gather per batch fetches everything.
        log_opacity = torch.log(proj.opacities.clamp(min=ALPHA_THRESHOLD))[:, None]
        table = torch.cat([proj.means2d, proj.conics, log_opacity, features], dim=1).to(dtype)  # [N, 6 + F]
        pad_row = torch.zeros(1, table.shape[1], device=device, dtype=dtype)
        pad_row[0, 5] = _EMPTY_LOG_OPACITY
        table = torch.cat([table, pad_row])
        gauss = torch.cat([gauss, torch.tensor([len(features)], device=device)])
        padding_slot = n_isect  # position of the padding entry in `gauss`

        # Tile-local pixel centres relative to the tile centre (small numbers keep the expansion exact
        # enough): sigma is a quadratic in (u, v) with per (tile, Gaussian) coefficients.
        half = 0.5 * tile_size
        pix = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - half
        v_grid, u_grid = torch.meshgrid(pix, pix, indexing="ij")
        u, v = u_grid.reshape(-1), v_grid.reshape(-1)
        basis = torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=1)  # [P, 6]
        tile_ids = torch.arange(n_tiles, device=device)
        centre_x = (tile_ids % tiles_x).to(dtype) * tile_size + half
        centre_y = torch.div(tile_ids, tiles_x, rounding_mode="floor").to(dtype) * tile_size + half
        # F.threshold keeps x > t; the largest value below gsplat's float32 1/255 makes that x >= 1/255.
        below_alpha_threshold = float(
            torch.nextafter(torch.tensor(ALPHA_THRESHOLD, dtype=dtype), torch.tensor(0.0, dtype=dtype))
        )

        transmittance = torch.ones(n_tiles, n_pix, device=device, dtype=dtype)  # includes the stopping factor
        slots = torch.arange(chunk_size, device=device)
        tiles_per_batch = max(1, max_pairs_per_batch // (chunk_size * n_pix))
        max_count = int(tile_counts.max())
        for first in range(0, max_count, chunk_size):
            active = ((tile_counts > first) & (transmittance > TRANSMITTANCE_THRESHOLD).any(dim=1)).nonzero()
            for batch in active.squeeze(1).split(tiles_per_batch):
                n_batch = len(batch)
                slot = first + slots
                pos = tile_starts[batch, None] + slot
                pos = torch.where(slot < tile_counts[batch, None], pos, padding_slot)  # [A, C]
                rows = table.index_select(0, gauss.index_select(0, pos.reshape(-1)))
                rows = rows.reshape(n_batch, chunk_size, table.shape[1])
                dx = rows[..., 0] - centre_x[batch, None]  # [A, C] Gaussian centre - tile centre
                dy = rows[..., 1] - centre_y[batch, None]
                a, b, c = rows[..., 2], rows[..., 3], rows[..., 4]
                bdy, bdx = b * dy, b * dx
                # log alpha = log(opacity) - sigma(dx - u, dy - v), expanded in (u, v).
                coef = torch.stack(
                    [
                        -0.5 * a,
                        -0.5 * c,
                        -b,
                        a * dx + bdy,
                        c * dy + bdx,
                        rows[..., 5] - (0.5 * a * dx * dx + 0.5 * c * dy * dy + bdy * dx),
                    ],
                    dim=1,
                )  # [A, 6, C]
                alpha = torch.matmul(basis, coef).exp_().clamp_max_(MAX_ALPHA)  # [A, P, C]
                F.threshold_(alpha, below_alpha_threshold, 0.0)  # alpha < 1/255: skipped
                t_start = transmittance[batch]  # [A, P]
                t_after = torch.cumprod(alpha.neg_().add_(1.0), dim=2).mul_(t_start[:, :, None])
                # A Gaussian is blended iff the transmittance after it stays above 1e-4 (T only falls, so
                # this also drops everything after the stop), with weight alpha * T_before == T_before - T_after.
                weight = torch.empty_like(t_after)
                torch.sub(t_start, t_after[:, :, 0], out=weight[:, :, 0])
                torch.sub(t_after[:, :, :-1], t_after[:, :, 1:], out=weight[:, :, 1:])
                weight.mul_(F.threshold(t_after, TRANSMITTANCE_THRESHOLD, 0.0).sign_())
                accum.index_add_(0, batch, torch.bmm(weight, rows[..., 6:]))
                transmittance[batch] = t_after[:, :, -1]

    image = accum.reshape(tiles_y, tiles_x, tile_size, tile_size, n_feat).permute(0, 2, 1, 3, 4)
    return image.reshape(tiles_y * tile_size, tiles_x * tile_size, n_feat)[:height, :width]


def rasterize_torch(
    means: torch.Tensor,  # [N, 3] world
    quats: torch.Tensor,  # [N, 4] wxyz, normalised inside
    scales: torch.Tensor,  # [N, 3] standard deviations
    opacities: torch.Tensor,  # [N] in [0, 1]
    colors: torch.Tensor,  # [N, 3] blended as given (linear RGB for SHARP)
    viewmat: torch.Tensor,  # [4, 4] world -> camera, OpenCV axes
    K: torch.Tensor,  # [3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    background: torch.Tensor | None = None,  # [3] composited as color + (1 - alpha) * background
    tile_size: int | None = None,
    chunk_size: int = 32,
    max_pairs_per_batch: int = 1 << 22,
) -> RenderOutput:
    """Render one view exactly as gsplat 1.5.3 ``rasterization(render_mode="RGB+D", "classic")`` would.

    ``tile_size=None`` picks a tile size from the Gaussians' footprints; the image does not depend on it.
    ``chunk_size`` Gaussians per tile and at most ``max_pairs_per_batch`` pixel-Gaussian evaluations are
    processed at a time (about 20 bytes each).
    """
    with torch.no_grad():
        proj = project_gaussians(
            means, quats, scales, opacities, viewmat, K, width, height,
            eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        )  # fmt: skip
        ones = torch.ones_like(proj.depths)[:, None]
        features = torch.cat([colors.to(means.dtype), proj.depths[:, None], ones], dim=1)  # colour, z, 1
        if tile_size is None:
            tile_size = choose_tile_size(proj, width, height)
        blended = composite_tiles(
            proj, features, width, height,
            tile_size=tile_size, chunk_size=chunk_size, max_pairs_per_batch=max_pairs_per_batch,
        )  # fmt: skip
        n_color = colors.shape[1]
        color, depth_sum, alpha = blended[..., :n_color], blended[..., n_color], blended[..., n_color + 1]
        alpha = alpha.clamp(0.0, 1.0)
        if background is not None:
            color = color + (1.0 - alpha)[..., None] * background.to(color)
        depth = depth_sum / alpha.clamp(min=DEPTH_ALPHA_FLOOR)
    return RenderOutput(color=color.contiguous(), depth=depth.contiguous(), alpha=alpha.contiguous())
