"""gsplat (CUDA) backend, backend selection, and SHARP's scene renderer.

gsplat is imported lazily: this module loads on machines without CUDA or gsplat, and only
``rasterize_gsplat`` (or ``backend="gsplat"``) needs them. ``render_scene`` follows ml-sharp's
``GSplatRenderer``: blend linear RGB with ``eps2d = 0``, compose the background, convert linear -> sRGB,
depth = accumulated z / clip(alpha, 1e-8).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from sharp_export.errors import MissingDependencyError, SharpExportError, UserInputError
from sharp_export.reference.gaussians import Gaussians3D, linear_to_srgb
from sharp_export.reference.render.cameras import Camera
from sharp_export.reference.render.torch_rasterizer import DEPTH_ALPHA_FLOOR, RenderOutput, rasterize_torch

Backend = Literal["auto", "torch", "gsplat"]
GSPLAT_VERSION = "1.5.3"  # the version ml-sharp pins; the torch backend reproduces its "classic" mode


class GsplatUnavailableError(MissingDependencyError):
    """gsplat cannot run here (no CUDA device, or the package is missing)."""

    def __init__(self, reason: str):
        SharpExportError.__init__(
            self,
            f"the gsplat renderer cannot run: {reason}",
            fix=f"install gsplat=={GSPLAT_VERSION} on a machine with CUDA, or use --renderer torch",
        )


def gsplat_available() -> bool:
    """True when a CUDA device is visible and the gsplat package is installed (not imported here)."""
    return torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None


def import_gsplat():
    """The gsplat module, or GsplatUnavailableError saying why it cannot run here."""
    if not torch.cuda.is_available():
        raise GsplatUnavailableError("gsplat renders on CUDA only and torch sees no CUDA device")
    try:
        import gsplat
    except ImportError as error:
        raise GsplatUnavailableError(f"the Python package 'gsplat' is not importable ({error})") from error
    return gsplat


def rasterize_gsplat(
    means: torch.Tensor,  # [N, 3] world
    quats: torch.Tensor,  # [N, 4] wxyz (gsplat normalises)
    scales: torch.Tensor,  # [N, 3] standard deviations
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N, 3] blended as given
    viewmat: torch.Tensor,  # [4, 4] world -> camera, OpenCV axes
    K: torch.Tensor,  # [3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    background: torch.Tensor | None = None,  # [3]
    **_ignored_tiling: object,  # tile/chunk controls of the torch backend; gsplat tiles by itself
) -> RenderOutput:
    """gsplat 1.5.3 ``rasterization(render_mode="RGB+D", rasterize_mode="classic")`` on CUDA.

    Outputs come back on the device of ``means``.
    """
    gsplat = import_gsplat()
    device = torch.device("cuda")
    out_device = means.device

    def cuda(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=torch.float32).contiguous()

    with torch.no_grad():
        rendered, alphas, _ = gsplat.rendering.rasterization(
            means=cuda(means),
            quats=cuda(quats),
            scales=cuda(scales),
            opacities=cuda(opacities),
            colors=cuda(colors),
            viewmats=cuda(viewmat)[None],
            Ks=cuda(K)[None],
            width=width,
            height=height,
            near_plane=near_plane,
            far_plane=far_plane,
            eps2d=eps2d,
            render_mode="RGB+D",
            rasterize_mode="classic",
            packed=False,
            absgrad=False,
        )
        n_color = colors.shape[1]
        color, depth_sum, alpha = rendered[0, ..., :n_color], rendered[0, ..., n_color], alphas[0, ..., 0]
        if background is not None:
            color = color + (1.0 - alpha)[..., None] * cuda(background)
        depth = depth_sum / alpha.clamp(min=DEPTH_ALPHA_FLOOR)
    return RenderOutput(color=color.to(out_device), depth=depth.to(out_device), alpha=alpha.to(out_device))


def resolve_backend(backend: str) -> str:
    """'auto' -> 'gsplat' when CUDA and gsplat are usable, else 'torch'; an explicit 'gsplat' must be usable."""
    if backend == "auto":
        return "gsplat" if gsplat_available() else "torch"
    if backend == "gsplat":
        import_gsplat()
    elif backend != "torch":
        raise UserInputError(f"unknown renderer '{backend}'", fix="use auto, torch or gsplat")
    return backend


def rasterize(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] wxyz
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N, 3]
    viewmat: torch.Tensor,  # [4, 4]
    K: torch.Tensor,  # [3, 3]
    width: int,
    height: int,
    *,
    backend: Backend = "auto",
    **options,
) -> RenderOutput:
    """Dispatch to ``rasterize_gsplat`` or ``rasterize_torch`` (same signature and semantics)."""
    function = rasterize_gsplat if resolve_backend(backend) == "gsplat" else rasterize_torch
    return function(means, quats, scales, opacities, colors, viewmat, K, width, height, **options)


def render_scene(
    gaussians: Gaussians3D,  # batch of one, metric OpenCV camera space, linear RGB colours
    camera: Camera,
    *,
    backend: Backend = "auto",
    eps2d: float = 0.0,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> RenderOutput:
    """Render one frame as SHARP's renderer does; colour is sRGB in [0, 1], depth is expected depth."""
    if gaussians.mean_vectors.shape[0] != 1:
        raise ValueError(f"render_scene takes a batch of one scene, got {gaussians.mean_vectors.shape[0]}")
    g = gaussians.select(0)
    out = rasterize(
        g.mean_vectors[0], g.quaternions[0], g.singular_values[0], g.opacities[0], g.colors[0],
        camera.viewmat, camera.K, camera.width, camera.height,
        backend=backend, eps2d=eps2d,
        background=torch.tensor(background, dtype=g.colors.dtype, device=g.colors.device),
    )  # fmt: skip
    return RenderOutput(color=linear_to_srgb(out.color).clamp(0.0, 1.0), depth=out.depth, alpha=out.alpha)
