"""`sharp-export view`: a scene in the browser, rendered as Gaussian splats by viser's web client.

viser (the ``view`` extra) serves its prebuilt client from its wheel and draws splats from centres,
covariances, colours and opacities (WebGL2); nothing of it is copied here. Imported inside functions only.

Axes: the scene is in OpenCV camera space (x right, y down, z forward), so the scene's up direction is -y and
the viewer's first camera is the input camera: at the origin, looking along +z, with the photo's vertical field
of view. viser sends covariances as float16; the whole world is scaled by ``world_scale`` (about the camera,
which therefore sees exactly the same picture) so that typical covariances sit in float16's normal range.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import logging
import math
import socket
from dataclasses import dataclass

import numpy as np
import torch

from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta, compose_covariance_matrices, linear_to_srgb

LOOPBACK = "127.0.0.1"
# Dark, like SHARP's own renders (black background); no share button (it would open a public tunnel).
THEME = {"control_layout": "floating", "control_width": "small", "dark_mode": True, "show_share_button": False}


@dataclass
class SplatArrays:
    """What viser's add_gaussian_splats takes, in the scaled world (see ``world_scale``)."""

    centers: np.ndarray  # [N, 3] float32
    covariances: np.ndarray  # [N, 3, 3] float32
    rgbs: np.ndarray  # [N, 3] float32, sRGB in [0, 1]
    opacities: np.ndarray  # [N, 1] float32
    world_scale: float  # scene metres -> viewer units
    near: float  # viewer units
    far: float
    look_at_depth: float  # where the orbit centre sits along +z, viewer units


def viser_module():
    try:
        import viser
    except ImportError:
        raise MissingDependencyError("viser", "view", "sharp-export view") from None
    return viser


def splat_arrays(gaussians: Gaussians3D) -> SplatArrays:  # batch of one, OpenCV camera space, linear RGB
    """Scene -> viser's arrays. The world scale maps the median largest standard deviation to 1."""
    with torch.no_grad():
        means = gaussians.mean_vectors[0].to(torch.float64)
        scales = gaussians.singular_values[0].to(torch.float64)
        largest = scales.max(dim=-1).values
        world_scale = 1.0 / max(float(largest.median()), 1e-12)
        quats = torch.nn.functional.normalize(gaussians.quaternions[0].to(torch.float64), dim=-1)
        covariances = compose_covariance_matrices(quats, scales * world_scale)
        rgbs = linear_to_srgb(gaussians.colors[0].float().clamp(0, 1))
        depths = means[:, 2][means[:, 2] > 0] * world_scale
    near = float(depths.min()) * 0.5 if depths.numel() else 0.01
    far = float(depths.max()) * 4.0 if depths.numel() else 1000.0
    return SplatArrays(
        centers=(means * world_scale).float().numpy(),
        covariances=covariances.float().numpy(),
        rgbs=rgbs.clamp(0, 1).numpy(),
        opacities=gaussians.opacities[0].float().clamp(0, 1).numpy()[:, None],
        world_scale=world_scale,
        near=near,
        far=far,
        look_at_depth=float(depths.median()) if depths.numel() else 1.0,
    )


def vertical_fov(meta: SceneMeta) -> float:
    """The input camera's vertical field of view in radians (pinhole, principal point at the centre)."""
    return 2.0 * math.atan(meta.height / (2.0 * meta.f_px))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_port_free(host: str, port: int) -> None:
    """One line naming the port when something listens there already (viser would silently take the next one)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserInputError(
                    f"port {port} on {host} is in use", fix=f"pass another --port (e.g. --port {port + 1})"
                ) from None
            raise UserInputError(f"cannot listen on {host}:{port} ({error.strerror})", fix="check --host") from None


class SceneServer:
    """A viser server showing one scene; ``stop()`` (or leaving the ``with`` block) shuts it down."""

    def __init__(self, arrays: SplatArrays, meta: SceneMeta, host: str = LOOPBACK, port: int = 8080, label: str = ""):
        viser = viser_module()
        check_port_free(host, port)
        logging.getLogger("websockets").setLevel(logging.WARNING)  # one INFO line per connection otherwise
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own URL banner; ours is one line
            self.server = viser.ViserServer(host=host, port=port, label=label or "sharp-export", verbose=False)
        self.port = int(self.server.get_port())
        if port and self.port != port:  # taken between the check and the bind: viser moved on to the next port
            self.server.stop()
            raise UserInputError(f"port {port} on {host} is in use", fix="pass another --port")
        self.host = host
        self.server.gui.configure_theme(**THEME)
        scene = self.server.scene
        scene.set_up_direction("-y")  # OpenCV: y points down
        camera = self.server.initial_camera
        camera.position = (0.0, 0.0, 0.0)
        camera.look_at = (0.0, 0.0, arrays.look_at_depth)
        camera.up = (0.0, -1.0, 0.0)
        camera.fov = vertical_fov(meta)
        camera.near = arrays.near
        camera.far = arrays.far
        scene.world_axes.visible = False
        scene.add_gaussian_splats(
            "/scene",
            centers=arrays.centers,
            covariances=arrays.covariances,
            rgbs=arrays.rgbs,
            opacities=arrays.opacities,
        )

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"

    def stop(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints "(viser) Server stopped"
            self.server.stop()

    def __enter__(self) -> SceneServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
