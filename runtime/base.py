"""The Runner interface: one way to run the raw predictor, whatever executes it.

``open() / infer(image, disparity_factor) -> Gaussians3D / close()``, usable as a context manager, with
``last_inference_time_s``. ``infer`` checks inputs against the artifact's I/O spec and says exactly what is
wrong instead of letting a runtime fail with an opaque shape error. Runners return torch tensors so every
downstream stage (unprojection, PLY, rendering, parity) takes the same type from any backend.

Which Runner opens an artifact is the registry's choice (``sharp_export.registry.open_runner``, through the
manifest's target row): runtime/ never imports converters/.
"""

from __future__ import annotations

import abc
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export.artifact import IOSpec
from sharp_export.errors import UserInputError
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS, Gaussians3D


def cpu_flags() -> set[str] | None:
    """The CPU's ISA flags as /proc/cpuinfo lists them ("flags" on x86, "Features" on ARM); None where it cannot be
    read (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    line = next((line for line in lines if line.startswith(("flags", "Features")) and ":" in line), None)
    return set(line.split(":", 1)[1].split()) if line else None


def x86_without_vnni() -> bool:
    """True on an x86 CPU whose flags list no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX); False
    elsewhere, and where the flags cannot be read (nothing known, nothing to warn about).

    Without them, x86 int8 kernels (ONNX Runtime's and OpenVINO's u8 x s8) add pairs of products in 16 bits, which
    can saturate with 8-bit weights (converters/onnx/quantize.py INT8_WEIGHT_BITS_NOTE); the int8 runners warn."""
    flags = cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64") or flags is None:
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & flags


INT8_WITHOUT_VNNI_WARNING = (
    "warning: this CPU has no VNNI (int8 dot-product) instructions: int8 kernels may saturate here, so {name}'s "
    "results may differ from those measured with VNNI; check them with `sharp-export parity` on this machine"
)


def omp_threads() -> int | None:
    """OMP_NUM_THREADS when set to a positive integer, else None.

    torch reads it itself; ONNX Runtime and OpenVINO do not, so their runners pass it on: one variable bounds every
    runtime's thread pool (a CPU job sharing its cores with other work sets it once).
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    raise UserInputError(f"input '{name}' must be a numpy array or torch tensor, got {type(value).__name__}")


def check_inputs(io: IOSpec, image: np.ndarray, disparity_factor: np.ndarray) -> None:
    """Raise UserInputError naming the input, the expected and the found dtype/shape."""
    for spec, value in zip(io.inputs, (image, disparity_factor), strict=True):
        if str(value.dtype) != spec.dtype:
            raise UserInputError(
                f"input '{spec.name}' has dtype {value.dtype}, the artifact expects {spec.dtype}",
                fix=f"convert with .astype(np.{spec.dtype}) / .to(torch.{spec.dtype})",
            )
        if value.ndim != len(spec.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(spec.shape, value.shape, strict=False)
        ):
            raise UserInputError(
                f"input '{spec.name}' has shape {tuple(value.shape)}, the artifact expects {tuple(spec.shape)}",
                fix="prepare images with sharp_export.reference.preprocess.prepare_input"
                if spec.name == "image"
                else None,
            )
    if image.shape[0] != disparity_factor.shape[0]:
        raise UserInputError(
            f"batch mismatch: image has {image.shape[0]} entries, disparity_factor {disparity_factor.shape[0]}"
        )
    if image.shape[0] < 1:
        raise UserInputError("empty batch: image has 0 entries")


class Runner(abc.ABC):
    """Base class: subclasses implement ``_open``, ``_infer`` (validated numpy in, Gaussians3D out), ``_close``."""

    def __init__(self, io: IOSpec, device: str = "cpu"):
        self.io = io
        self.device = device
        self.last_inference_time_s: float | None = None
        self.is_open = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def open(self) -> Runner:
        if not self.is_open:
            self._open()
            self.is_open = True
        return self

    def close(self) -> None:
        if self.is_open:
            self._close()
            self.is_open = False

    def __enter__(self) -> Runner:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- inference -------------------------------------------------------------------------------
    def infer(
        self,
        image: np.ndarray | torch.Tensor,  # [B, 3, R, R] float32 in [0, 1]
        disparity_factor: np.ndarray | torch.Tensor,  # [B] float32
    ) -> Gaussians3D:
        """Raw Gaussians (NDC x z) as torch tensors [B, N, ...] on the CPU."""
        if not self.is_open:
            raise RuntimeError(f"{type(self).__name__}.infer called before open() (use it as a context manager)")
        image_np = _as_numpy(image, "image")
        factor_np = _as_numpy(disparity_factor, "disparity_factor")
        check_inputs(self.io, image_np, factor_np)
        start = time.perf_counter()
        outputs = self._infer(np.ascontiguousarray(image_np), np.ascontiguousarray(factor_np))
        self.last_inference_time_s = time.perf_counter() - start
        return outputs

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D: ...

    def _close(self) -> None:
        return None


def outputs_to_gaussians(names: list[str], values: list[Any]) -> Gaussians3D:
    """Order runtime outputs by name into Gaussians3D (torch tensors)."""
    by_name = dict(zip(names, values, strict=True))
    missing = [f for f in GAUSSIAN_FIELDS if f not in by_name]
    if missing:
        raise UserInputError(f"the model has no output(s) {missing}; it has {names}")
    return Gaussians3D(*(torch.as_tensor(np.asarray(by_name[f])) for f in GAUSSIAN_FIELDS))
