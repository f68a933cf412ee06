"""Render a camera trajectory to videos (colour + turbo depth) or PNG frames, like ml-sharp's VideoWriter.

Colour frames are ``uint8(sRGB * 255)`` (truncated, as ml-sharp). Depth frames map expected depth to
the turbo colour map over [0, min(max depth of the first frame, 50 m)]. Videos are H.264 mp4 at 30 fps
through imageio-ffmpeg. Everything is written to tagged temporary names first and published at the end
(``reference/publish.py``), so an interrupted run never leaves a half-written file under the final name, and an
existing video or frame folder is replaced only with ``replace`` (``--force``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sharp_export.errors import MissingDependencyError, OutputError, SharpExportError, UserInputError, output_error
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.publish import publish_file, publish_folder, temp_folder, temp_path
from sharp_export.reference.render.cameras import VIDEO_FPS, Camera
from sharp_export.reference.render.gsplat_backend import render_scene

METRIC_DEPTH_MAX_CLAMP_METER = 50.0  # ml-sharp vis.py: depth colour range ends at min(first max, 50 m)

# Turbo colour map, polynomial approximation (Anton Mikhailov's Turbo, Google 2019; GLSL approximation
# by Ruofei Du, Apache-2.0): channel = c0 + c1 x + ... + c5 x^5 for x in [0, 1].
_TURBO_COEFFS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def turbo_colormap(values: np.ndarray) -> np.ndarray:  # values: [...] in [0, 1] (clipped)
    """Turbo RGB in [0, 1], shape [..., 3]."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x**k for k in range(6)], axis=-1)  # [..., 6]
    return np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)


def color_frame(color: torch.Tensor) -> np.ndarray:  # color: [H, W, 3] sRGB in [0, 1]
    """uint8 [H, W, 3], truncating like ml-sharp's ``(color * 255).to(uint8)``."""
    return (color.detach().float().clamp(0.0, 1.0) * 255.0).to(torch.uint8).cpu().numpy()


def depth_frame(depth: torch.Tensor, depth_max: float) -> np.ndarray:  # depth: [H, W] metres
    """uint8 [H, W, 3] turbo colouring of depth / depth_max."""
    normalised = depth.detach().double().cpu().numpy() / max(depth_max, 1e-6)
    return (turbo_colormap(normalised) * 255.0).astype(np.uint8)


class _Mp4Writer:
    """One H.264 stream written by imageio-ffmpeg to a temporary name; ``close`` then ``commit`` or ``abort``.

    imageio-ffmpeg does not check ffmpeg's exit status, so ``close`` does: a video that ffmpeg failed to
    finish (full disk, unwritable folder) is never renamed into place.
    """

    def __init__(self, target: Path, width: int, height: int):
        try:
            import imageio_ffmpeg
        except ImportError as error:
            raise MissingDependencyError("imageio-ffmpeg", "video", "Writing mp4 videos") from error
        self.target = target
        self.temp = temp_path(target, "partial")  # keeps .mp4: ffmpeg picks the container by the suffix
        # macro_block_size=2: sizes are even already; ffmpeg must not rescale the frames.
        self.generator = imageio_ffmpeg.write_frames(
            str(self.temp), (width, height), fps=VIDEO_FPS, codec="libx264", quality=5, macro_block_size=2
        )
        try:
            self.generator.send(None)  # starts ffmpeg
        except BaseException:
            self.abort()
            raise
        frame = getattr(self.generator, "gi_frame", None)  # imageio-ffmpeg keeps its Popen as the local 'p'
        self.process = frame.f_locals.get("p") if frame is not None else None

    def append(self, frame: np.ndarray) -> None:  # frame: [H, W, 3] uint8
        self.generator.send(np.ascontiguousarray(frame))

    def close(self) -> None:
        """Let ffmpeg finish; raise ``OSError`` unless it exited cleanly and left a non-empty file."""
        self.generator.close()
        code = self.process.poll() if self.process is not None else 0
        if code != 0:
            raise OSError(f"ffmpeg exited with status {code}")
        if not self.temp.is_file() or self.temp.stat().st_size == 0:
            raise OSError("ffmpeg wrote no video data")

    def commit(self, replace: bool) -> Path:
        publish_file(self.temp, self.target, replace=replace)
        return self.target

    def abort(self) -> None:
        try:
            self.generator.close()
        except Exception:  # ffmpeg is gone already; the temporary file goes regardless
            pass
        finally:
            with contextlib.suppress(OSError):
                self.temp.unlink(missing_ok=True)


def _write_fault(error: OSError, path: Path) -> SharpExportError:
    """A failed video or frame write as one line naming ``path`` (the partial output is already removed)."""
    converted = output_error(error, path, outcome="no partial output was left")
    if converted is not None:
        return converted
    detail = (error.strerror or str(error)).strip().splitlines()[0][:200]
    return OutputError(
        f"cannot write ({detail}); no partial output was left",
        path=path,
        fix="check free disk space and that the folder is writable, or write --png frames",
    )


def _commit_videos(writers: list[_Mp4Writer], replace: bool) -> list[Path]:
    """Publish both videos, or neither: a colour video whose depth video lost a race is withdrawn again."""
    done: list[Path] = []
    try:
        for writer in writers:
            done.append(writer.commit(replace))
    except BaseException:
        if not replace:
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()  # published by us a moment ago
        raise
    return done


def render_trajectory(
    gaussians: Gaussians3D,
    meta: SceneMeta,
    cameras: Sequence[Camera],
    out_dir: Path,
    stem: str,
    *,
    backend: str = "auto",
    png: bool = False,
    progress: bool = True,
    eps2d: float = 0.0,
    replace: bool = False,
) -> list[Path]:
    """Render every camera and write ``<stem>.mp4`` + ``<stem>.depth.mp4`` (or PNG frames with ``png``).

    PNG mode writes ``<stem>_frames/color_0000.png`` and ``depth_0000.png``; the whole folder is
    published at the end. Existing outputs are replaced only with ``replace`` (else an ``OutputError``).
    Returns the written paths. ``meta`` is accepted for symmetry with the
    trajectory builder; the cameras already carry everything needed.
    """
    from tqdm import tqdm

    if not cameras:
        raise UserInputError("no cameras to render", fix="use at least one frame (--frames 1 or more)")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_fault(error, out_dir) from None
    width, height = cameras[0].width, cameras[0].height
    if not png and (width % 2 or height % 2):
        raise UserInputError(
            f"mp4 (H.264, yuv420p) needs even frame sizes, got {width}x{height}",
            fix="choose an even --resolution or write --png frames",
        )

    writers: list[_Mp4Writer] = []
    frame_dir = None
    try:
        if png:
            from PIL import Image

            frame_dir = temp_folder(out_dir / f"{stem}_frames")
        else:
            for name in (f"{stem}.mp4", f"{stem}.depth.mp4"):
                writers.append(_Mp4Writer(out_dir / name, width, height))
        depth_max = None
        frames = tqdm(cameras, desc=stem, unit="frame", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for index, camera in enumerate(frames):
            out = render_scene(gaussians, camera, backend=backend, eps2d=eps2d)
            if depth_max is None:
                depth_max = min(float(out.depth.max()), METRIC_DEPTH_MAX_CLAMP_METER)
            color, depth = color_frame(out.color), depth_frame(out.depth, depth_max)
            if frame_dir is not None:
                Image.fromarray(color).save(frame_dir / f"color_{index:04d}.png")
                Image.fromarray(depth).save(frame_dir / f"depth_{index:04d}.png")
            else:
                writers[0].append(color)
                writers[1].append(depth)
        for writer in writers:  # both videos complete before either is renamed into place
            writer.close()
        if frame_dir is None:
            return _commit_videos(writers, replace)
        target = out_dir / f"{stem}_frames"
        publish_folder(frame_dir, target, replace=replace)
        frame_dir = None
        return sorted(target.iterdir())
    except BaseException as error:
        for writer in writers:
            writer.abort()
        if frame_dir is not None:
            shutil.rmtree(frame_dir, ignore_errors=True)
        if isinstance(error, OSError):
            where = out_dir / (f"{stem}_frames" if png else f"{stem}.mp4")
            raise _write_fault(error, where) from None
        raise
