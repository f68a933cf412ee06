"""OpenVINORunner: an OpenVINO IR artifact on the CPU, compiled with the artifact's precision hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sharp_export.artifact import IOSpec
from sharp_export.errors import MissingDependencyError
from sharp_export.progress import echo
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime.base import Runner, omp_threads, outputs_to_gaussians

INT8_LAYER_TYPES = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")  # OpenVINO CPU layer types


class OpenVINORunner(Runner):
    def __init__(
        self, model_path: Path, io: IOSpec, device: str = "cpu", precision_hint: str = "f32", int8: bool = False
    ):
        super().__init__(io, device)
        self.int8 = int8  # an int8 (FakeQuantize) IR: warn if nothing compiles to int8 kernels
        self.model_path = Path(model_path)
        self.precision_hint = precision_hint  # "f32" or "bf16" (INFERENCE_PRECISION_HINT)
        self.effective_precision: str | None = None  # what OpenVINO compiled, known once open
        self.int8_layers: int | None = None  # convolutions / matmuls compiled to int8 kernels, known once open
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
        if threads := omp_threads():  # else OpenVINO's choice
            config["INFERENCE_NUM_THREADS"] = str(threads)
        # Read without mmap and compile from the model object, then drop it: the compiled model keeps only its own
        # (repacked) weights. Compiling from the path keeps the fp32 model.bin mapped and resident. Full preset,
        # bf16 hint, Xeon with AMX: peak RSS 7.09 GB from the path, 6.11 GB this way (f32 hint: 9.18 -> 8.20 GB).
        core = ov.Core()
        core.set_property({"ENABLE_MMAP": False})
        model = core.read_model(str(self.model_path))
        compiled = core.compile_model(model, "CPU", config)
        del model
        # OpenVINO quietly compiles f32 where the CPU has no bf16 (no AVX-512 BF16 / AMX): say so, since a bf16
        # artifact's numbers (latency, error) then are not bf16's.
        effective = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        # (the property prints as "bf16" or "<Type: 'bfloat16'>" depending on the OpenVINO build)
        bf16 = "bf16" in effective or "bfloat16" in effective
        self.effective_precision = "bf16" if bf16 else "f32" if "32" in effective else effective
        if self.precision_hint == "bf16" and self.effective_precision != "bf16":
            echo(
                f"warning: this CPU has no bf16 support, so OpenVINO runs {self.model_path.name} in "
                f"{self.effective_precision}: results are fp32's, and the latency is not bf16's"
            )
        # An int8 IR shows its quantized layers in the compiled (runtime) model as u8/i8 convolutions and matmuls.
        self.int8_layers = sum(
            1
            for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_rt_info()["layerType"].astype(str) in INT8_LAYER_TYPES
            and op.get_rt_info()["runtimePrecision"].astype(str) in ("u8", "i8")
        )
        if self.int8 and not self.int8_layers:
            echo(f"warning: OpenVINO compiled no int8 layer of {self.model_path.name}: it runs as fp32 here")
        self.output_names = [output.get_any_name() for output in compiled.outputs]
        self.request = compiled.create_infer_request()

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        assert self.request is not None
        self.request.infer({"image": image, "disparity_factor": disparity_factor})
        values = [self.request.get_tensor(name).data.copy() for name in self.output_names]
        return outputs_to_gaussians(self.output_names, values)

    def _close(self) -> None:
        self.request = None
