"""TensorRTRTXRunner: a TensorRT for RTX engine run with ``execute_async_v3`` on torch-allocated CUDA memory.

The engine was built ahead of time without a GPU; TensorRT-RTX compiles its kernels for this GPU when the execution
context is created. They are kept in a runtime cache file beside the engine (``runtime.cache``), loaded when it
matches this GPU, driver and TensorRT-RTX version (TensorRT-RTX checks that and ignores a foreign cache) and saved
on close, so the second run skips the compilation.

Before anything is loaded, the GPU is compared with the compute capabilities the engine can run on (the caller
passes them from the manifest): one clear line instead of a failed deserialisation. Inference is the TensorRT
runner's (same bindings API). Written against the TensorRT-RTX 1.7 Python API; it cannot run on the project's
CPU machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.progress import echo
from sharp_export.runtime.tensorrt_runner import TensorRTRunner

RUNTIME_CACHE_FILE = "runtime.cache"
# TensorRT-RTX's EngineInvalidityDiagnostics bit flags (1.7), for the reason of a refused engine.
_INVALIDITY = {1: "TensorRT-RTX version mismatch", 2: "unsupported compute capability", 4: "CUDA driver too old",
               8: "CUDA runtime too old", 16: "not enough GPU memory", 32: "malformed engine file",
               64: "CUDA driver or runtime installed incorrectly"}  # fmt: skip


def capability_name(capability: tuple[int, int]) -> str:
    """(8, 9) -> 'sm89': the --compute-capability spelling."""
    return f"sm{capability[0]}{capability[1]}"


class TensorRTRTXRunner(TensorRTRunner):
    def __init__(
        self,
        engine_path: Path,
        manifest: Any,
        device: str,
        runnable: Sequence[str],  # compute capabilities (sm names) whose GPUs can run this engine
        rebuild: str,  # the command that rebuilds it for another GPU
    ):
        super().__init__(engine_path, manifest, device)
        self.runnable = tuple(runnable)
        self.rebuild = rebuild
        self.cache_path = Path(engine_path).parent / RUNTIME_CACHE_FILE
        self._cache = None

    def _open(self) -> None:
        try:
            import tensorrt_rtx_bindings as trt
        except ImportError:
            raise MissingDependencyError(
                "tensorrt_rtx_bindings", "tensorrt-rtx", "running a TensorRT-RTX engine"
            ) from None
        if not torch.cuda.is_available():
            raise UserInputError(
                "a TensorRT-RTX engine needs a CUDA GPU; torch sees none (no GPU, or a CPU-only torch)",
                path=self.plan_path,
            )
        here = capability_name(torch.cuda.get_device_capability())
        if here not in self.runnable:
            raise UserInputError(
                f"this GPU is {here} ({torch.cuda.get_device_name()}); the engine runs on {', '.join(self.runnable)} "
                "only (TensorRT-RTX supports RTX GPUs sm75-sm121, not sm90 H100 or Jetson)",
                path=self.plan_path,
                fix=self.rebuild
                if here in ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
                else "use the tensorrt target on this GPU",
            )
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        data = self.plan_path.read_bytes()
        validity, diagnostics = runtime.get_engine_validity(data[: runtime.engine_header_size])
        if validity == trt.EngineValidity.INVALID:
            reasons = [text for bit, text in _INVALIDITY.items() if diagnostics & bit] or ["no reason given"]
            raise UserInputError(
                f"TensorRT-RTX {trt.__version__} says the engine cannot run here: {'; '.join(reasons)}",
                path=self.plan_path,
                fix=self.rebuild,
            )
        self.engine = runtime.deserialize_cuda_engine(data)
        del data
        if self.engine is None:
            built = self.manifest.conversion.get("tensorrt_rtx", {}).get("tensorrt_rtx_version", "?")
            raise UserInputError(
                f"TensorRT-RTX {trt.__version__} could not deserialize the engine (built with {built})",
                path=self.plan_path,
                fix=self.rebuild,
            )
        config = self.engine.create_runtime_config()
        self._cache = config.create_runtime_cache()
        if self.cache_path.is_file():
            # False when the cache is from another GPU, driver or TensorRT-RTX: it is then left empty.
            loaded = self._cache.deserialize(self.cache_path.read_bytes())
            state = "loaded" if loaded else "does not match this GPU, driver or version; compiled afresh"
            echo(f"    runtime cache {self.cache_path.name}: {state}")
        config.set_runtime_cache(self._cache)
        self.context = self.engine.create_execution_context(config)
        self._runtime = runtime

    def _close(self) -> None:
        if self._cache is not None:
            self._save_cache()
        self._cache = None
        super()._close()

    def _save_cache(self) -> None:
        """Write the kernels compiled for this GPU beside the engine (atomically); a read-only artifact is fine."""
        temporary = self.cache_path.with_name(f".{RUNTIME_CACHE_FILE}.{os.getpid()}")
        try:
            temporary.write_bytes(bytes(self._cache.serialize()))
            os.replace(temporary, self.cache_path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            echo(f"warning: runtime cache not saved ({error}); the next run compiles the kernels again")
