"""OnnxRuntimeRunner: an ONNX artifact in ONNX Runtime (CPU, or CUDA when available and asked for)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sharp_export.artifact import IOSpec, Manifest
from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.progress import echo
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime import base
from sharp_export.runtime.base import Runner, omp_threads, outputs_to_gaussians

# ONNX Runtime graph optimizations an int8 artifact opens without. MatMulAddFusion turns each linear layer (MatMul +
# Add) into a Gemm behind a Reshape before the QDQ fusions run, so the int8 weights were dequantized to fp32 at
# every run and the layer ran in fp32; without it the QDQ pass makes them MatMulIntegerToFloat (u8 x s8 kernels).
# Full preset's int8 graph, golden pattern, 2-core Xeon with AMX: 100-106 s a run with it, 47-48 s without, the
# same 8.7 GB peak, outputs within depth 3e-6 (benchmarks/results/onnx_int8_fusion_full.json).
# ``disabled_optimizers`` is an InferenceSession keyword ONNX Runtime leaves undocumented;
# tests/test_onnx_precision.py checks that the fusion still happens.
INT8_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


class OnnxRuntimeRunner(Runner):
    def __init__(
        self,
        model_path: Path,
        io: IOSpec,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        cpu_memory_arena: bool = False,
        int8: bool = False,
    ):
        super().__init__(io, device)
        self.int8 = int8  # an int8 artifact: warn on CPUs without VNNI (base.x86_without_vnni)
        self.model_path = Path(model_path)
        # Default: OMP_NUM_THREADS when set, else every core (ORT's own default can pick fewer on shared machines).
        self.intra_op_threads = intra_op_threads or omp_threads() or os.cpu_count() or 1
        # Off by default: on the full model (activations up to 1.2 GB each) ORT's CPU arena keeps freed blocks
        # and raised peak RSS from 6.6 GB (arena off) to 10.8 GB (arena on), above torch eager's 8.5 GB.
        self.cpu_memory_arena = cpu_memory_arena
        self.session = None
        self.output_names: list[str] = []

    def providers(self) -> list[str]:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise UserInputError(
                    f"device 'cuda' asked for, but this onnxruntime has only {', '.join(available)}",
                    fix="pip install onnxruntime-gpu (instead of onnxruntime), or use --device cpu",
                )
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _open(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise MissingDependencyError("onnxruntime", "onnx", "running an ONNX artifact") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.enable_cpu_mem_arena = self.cpu_memory_arena
        # Priority-based node order: ONNX Runtime runs the graph in an order that frees activations sooner. Full
        # preset, golden pattern, one run each in a fresh process, 2-core AMD EPYC (onnxruntime_order_full.json):
        # int8 peak 7.21 -> 5.02 GB (75.0 -> 73.8 s a run); fp32 6.66 -> 6.73 GB, fp16 7.34 -> 7.25 GB, same speed.
        options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
        providers = self.providers()
        try:
            # External data (model.onnx.data) is resolved relative to the model file's directory.
            self.session = onnxruntime.InferenceSession(
                str(self.model_path),
                options,
                providers=providers,
                disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS) if self.int8 else None,
            )
        except Exception as error:  # ORT's own types (InvalidProtobuf, Fail, ...): a damaged or foreign file
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise UserInputError(
                f"ONNX Runtime cannot load this model ({type(error).__name__}: {first})",
                path=self.model_path,
                fix="check the files with `sharp-export run --verify ...`, or export the artifact again",
            ) from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.int8 and self.session.get_providers()[0] == "CPUExecutionProvider" and base.x86_without_vnni():
            echo(base.INT8_WITHOUT_VNNI_WARNING.format(name=self.model_path.name))

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        assert self.session is not None
        feeds = {"image": image, "disparity_factor": disparity_factor}
        values = self.session.run(self.output_names, feeds)
        return outputs_to_gaussians(self.output_names, values)

    def _close(self) -> None:
        self.session = None


def open_onnx_artifact(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> OnnxRuntimeRunner:
    """The onnx target's ``open_runner``."""
    return OnnxRuntimeRunner(
        Path(artifact_dir) / manifest.main_file, manifest.io, device, int8=manifest.precision == "int8"
    )
