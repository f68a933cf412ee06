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


def check_compatibility(manifest: Any, artifact_dir: Path, trt_version: str) -> None:
    """Same TensorRT version and GPU compute capability as the build, else a rebuild command."""
    built = manifest.conversion.get("tensorrt", {})
    rebuild = (
        f"rebuild on this machine with: {manifest.reproduce}" if manifest.reproduce else "re-export on this machine"
    )
    if built.get("tensorrt_version") and built["tensorrt_version"] != trt_version:
        raise UserInputError(
            f"plan built with TensorRT {built['tensorrt_version']}, this machine has {trt_version}",
            path=artifact_dir,
            fix=rebuild,
        )
    major, minor = torch.cuda.get_device_capability()
    here = f"{major}.{minor}"
    if built.get("gpu_compute_capability") and built["gpu_compute_capability"] != here:
        raise UserInputError(
            f"plan built for compute capability {built['gpu_compute_capability']}, this GPU is {here}",
            path=artifact_dir,
            fix=rebuild,
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
        check_compatibility(self.manifest, self.plan_path.parent, trt.__version__)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
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
