"""OpenVINORunner: an OpenVINO IR artifact on the CPU, compiled with the artifact's precision hint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sharp_export.artifact import IOSpec
from sharp_export.errors import MissingDependencyError
from sharp_export.progress import echo
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime.base import Runner, outputs_to_gaussians


def thread_count() -> int:
    """OMP_NUM_THREADS when set (OpenVINO does not read it itself), else 0 = OpenVINO's choice."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


class OpenVINORunner(Runner):
    def __init__(self, model_path: Path, io: IOSpec, device: str = "cpu", precision_hint: str = "f32"):
        super().__init__(io, device)
        self.model_path = Path(model_path)
        self.precision_hint = precision_hint  # "f32" or "bf16" (INFERENCE_PRECISION_HINT)
        self.effective_precision: str | None = None  # what OpenVINO compiled, known once open
        self.request = None
        self.output_names: list[str] = []

    def _open(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("openvino", "openvino", "running an OpenVINO artifact") from None
        config = {
            "INFERENCE_PRECISION_HINT": self.precision_hint,
            "NUM_STREAMS": "1",  # one image at a time: every core on one request (latency, not throughput)
        }
        if threads := thread_count():
            config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = ov.Core().compile_model(str(self.model_path), "CPU", config)
        # OpenVINO quietly compiles f32 where the CPU has no bf16 (no AVX-512 BF16 / AMX): say so, since a bf16
        # artifact's numbers (latency, error) then are not bf16's.
        effective = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.effective_precision = "bf16" if "bf16" in effective else "f32" if "32" in effective else effective
        if self.precision_hint == "bf16" and self.effective_precision != "bf16":
            echo(
                f"warning: this CPU has no bf16 support, so OpenVINO runs {self.model_path.name} in "
                f"{self.effective_precision}: results are fp32's, and the latency is not bf16's"
            )
        self.output_names = [output.get_any_name() for output in compiled.outputs]
        self.request = compiled.create_infer_request()

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        assert self.request is not None
        self.request.infer({"image": image, "disparity_factor": disparity_factor})
        values = [self.request.get_tensor(name).data.copy() for name in self.output_names]
        return outputs_to_gaussians(self.output_names, values)

    def _close(self) -> None:
        self.request = None
