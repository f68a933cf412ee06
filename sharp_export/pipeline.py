"""The pipeline in one place: image -> preprocess -> model (any runner) -> Gaussians -> PLY / render.

``predict``, ``run`` and ``parity`` all go through ``gaussians_for_image`` so that every runner sees the
same preprocessing and every PLY the same post-processing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sharp_export.errors import ParityError, SharpExportError, UserInputError
from sharp_export.progress import echo
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta, find_non_finite, unproject_gaussians
from sharp_export.reference.preprocess import DEFAULT_MAX_PIXELS, LoadedImage, load_image, prepare_input

# (image [1, 3, R, R] float32 in [0, 1], disparity_factor [1]) -> raw Gaussians in NDC*z space
InferFn = Callable[[torch.Tensor, torch.Tensor], Gaussians3D]


@dataclass
class Prediction:
    gaussians: Gaussians3D  # batch of one, metric OpenCV camera space, unit quaternions
    meta: SceneMeta
    seconds: dict[str, float]  # preprocess / model / postprocess


def load_photo(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """``load_image`` for every command: a 'warning:' line for each metadata fallback it took (e.g. no focal length)."""
    image = load_image(path, max_pixels)
    for note in image.warnings:
        echo(f"warning: {path}: {note}")
    return image


def non_finite_error(
    gaussians: Gaussians3D, source: str | Path, *, producer: str, artifact: bool
) -> SharpExportError | None:
    """The error for Gaussians with NaN or Inf values, or None when all are finite.

    ``source`` is the input they came from (named in the message), ``producer`` what computed them ("the model
    (checkpoint ...)", "artifact out/onnx"). From an ``artifact`` it is a parity failure (exit 3: the artifact
    does not match the reference, e.g. an fp16 overflow or a damaged file); from the reference model a bad input
    or checkpoint (exit 1). Reusable by every path that produces Gaussians (predict, run, parity, batch).
    """
    problem = find_non_finite(gaussians)
    if problem is None:
        return None
    message = f"{producer} produced {problem.describe()}; nothing was written for this input"
    if artifact:
        return ParityError(
            message, path=source, fix="the artifact fails parity on this input: check it with `sharp-export parity`"
        )
    return UserInputError(message, path=source, fix="check the checkpoint, or run the model in fp32")


def require_finite(gaussians: Gaussians3D, source: str | Path, *, producer: str, artifact: bool) -> None:
    """Raise ``non_finite_error`` when any Gaussian has a NaN or Inf value (before anything is written)."""
    error = non_finite_error(gaussians, source, producer=producer, artifact=artifact)
    if error is not None:
        raise error


def gaussians_for_image(
    path: Path,
    infer: InferFn,
    resolution: int,
    device: torch.device,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    producer: str = "the model",
    artifact: bool = False,
) -> Prediction:
    """Run one image through ``infer`` and post-process to metric camera-space Gaussians.

    Non-finite outputs, of the model or of the post-processing, raise ``non_finite_error`` (``producer`` and
    ``artifact`` say what computed them), so no caller writes a scene with NaN or Inf in it.
    """
    start = time.perf_counter()
    image = load_photo(path, max_pixels)
    return gaussians_for_loaded(image, infer, resolution, device, producer=producer, artifact=artifact, start=start)


def gaussians_for_loaded(
    image: LoadedImage,
    infer: InferFn,
    resolution: int,
    device: torch.device,
    *,
    producer: str,
    artifact: bool,
    start: float | None = None,
) -> Prediction:
    """``gaussians_for_image`` from the decoded image on: what `batch` runs on images decoded from their bytes.

    ``start`` is when loading began (``seconds["preprocess"]`` counts from it; default: now).
    """
    start = time.perf_counter() if start is None else start
    source = image.path
    tensor, disparity_factor = prepare_input(image, resolution, device=device)
    loaded = time.perf_counter()
    raw = infer(tensor, disparity_factor)
    if raw.mean_vectors.device.type == "cuda":
        torch.cuda.synchronize()
    inferred = time.perf_counter()
    require_finite(raw, source, producer=producer, artifact=artifact)
    meta = SceneMeta(f_px=image.f_px, width=image.width, height=image.height)
    gaussians = unproject_gaussians(raw, meta, resolution)
    require_finite(gaussians, source, producer=f"unprojecting the output of {producer}", artifact=artifact)
    done = time.perf_counter()
    seconds = {"preprocess": loaded - start, "model": inferred - loaded, "postprocess": done - inferred}
    return Prediction(gaussians, meta, seconds)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device that is not there is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda asked for, but torch sees no CUDA device", fix="use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("--device mps asked for, but MPS is not available", fix="use --device cpu")
    return torch.device(name)
