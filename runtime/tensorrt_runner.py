"""TensorRTRunner: a serialized plan run with ``execute_async_v3`` on torch-allocated CUDA memory.

Before deserializing, the manifest's TensorRT version and GPU compute capability are compared with this
machine: a plan built elsewhere does not load (or misbehaves), and the error says how to rebuild it.
Written against the documented TensorRT 10 Python API; it cannot run on the project's CPU machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS, Gaussians3D
from sharp_export.runtime.base import Runner


def _version_tuple(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0): major.minor.patch decide plan compatibility, the build number does not."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_compatibility(manifest: Any, artifact_dir: Path, trt_version: str, capability: tuple[int, int]) -> None:
    """Refuse, with the rebuild command, a plan this TensorRT or this GPU cannot load.

    A plan loads only under the TensorRT version that built it, unless built ``--version-compatible`` (then any
    later version), and only on GPUs of the compute capability it was built for, unless built
    ``--hardware-compatible`` (then any Ampere or newer GPU, compute capability >= 8.0).
    """
    built = manifest.conversion.get("tensorrt", {})
    rebuild = f"rebuild on this machine with: {manifest.reproduce or 'sharp-export tensorrt ...'}"
    if manifest.conversion.get("trtexec"):
        rebuild += f" (or, in the artifact directory: {manifest.conversion['trtexec']})"
    built_version = built.get("tensorrt_version")
    if built_version:
        same = _version_tuple(built_version) == _version_tuple(trt_version)
        later = _version_tuple(trt_version) > _version_tuple(built_version)
        if not same and not (built.get("version_compatible") and later):
            allowed = "it or a later one (version-compatible plan)" if built.get("version_compatible") else "it"
            raise UserInputError(
                f"plan built with TensorRT {built_version}, this machine has {trt_version}; the plan loads with "
                f"{allowed} only",
                path=artifact_dir,
                fix=rebuild,
            )
    here = f"{capability[0]}.{capability[1]}"
    built_capability = built.get("gpu_compute_capability")
    if built_capability and built_capability != here:
        if built.get("hardware_compatibility") == "ampere_plus":
            if capability[0] < 8:
                raise UserInputError(
                    f"plan built hardware-compatible for Ampere+ GPUs (compute capability >= 8.0), this GPU is {here}",
                    path=artifact_dir,
                    fix=rebuild,
                )
        else:
            raise UserInputError(
                f"plan built for compute capability {built_capability}, this GPU is {here}",
                path=artifact_dir,
                fix=rebuild + "; or build with --hardware-compatible for any Ampere+ GPU",
            )


class TensorRTRunner(Runner):
    def __init__(self, plan_path: Path, manifest: Any, device: str = "cuda"):
        super().__init__(manifest.io, device)
        self.plan_path = Path(plan_path)
        self.manifest = manifest
        self.engine = None
        self.context = None

    def _open(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise MissingDependencyError("tensorrt", "tensorrt", "running a TensorRT plan") from None
        if not torch.cuda.is_available():
            raise UserInputError("a TensorRT plan needs a CUDA GPU; torch sees none", path=self.plan_path)
        check_compatibility(self.manifest, self.plan_path.parent, trt.__version__, torch.cuda.get_device_capability())
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        if self.manifest.conversion.get("tensorrt", {}).get("version_compatible"):
            # A version-compatible plan carries its own lean runtime, which TensorRT runs only when told the plan
            # is trusted: it is, it is this artifact's own (its sha256 is in the manifest).
            runtime.engine_host_code_allowed = True
        self.engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise UserInputError("TensorRT could not deserialize the plan", path=self.plan_path)
        self.context = self.engine.create_execution_context()
        self._runtime = runtime

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        trt = self._trt
        engine, context = self.engine, self.context
        device = torch.device(self.device)
        inputs = {
            "image": torch.from_numpy(image).to(device),  # [B, 3, R, R]
            "disparity_factor": torch.from_numpy(disparity_factor).to(device),  # [B]
        }
        outputs: dict[str, torch.Tensor] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                tensor = inputs[name].contiguous()
                inputs[name] = tensor
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
                outputs[name] = torch.empty(shape, dtype=dtype, device=device)
                context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 returned False")
        stream.synchronize()
        return Gaussians3D(*(outputs[f].float().cpu() for f in GAUSSIAN_FIELDS))

    def _close(self) -> None:
        self.context = None
        self.engine = None
