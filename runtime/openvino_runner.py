"""OpenVINORunner: an OpenVINO IR artifact on the CPU, compiled with the artifact's precision hint.

Compiling the full-preset IR takes ~7 s on a 2-core Xeon. OpenVINO can keep the compiled model (``CACHE_DIR``) and
import it next time in ~3 s (benchmarks/results/openvino_compile_cache_full.json): the runner keeps one such blob per
(artifact files, OpenVINO version, CPU, compile settings) under ``~/.cache/sharp-export/openvino/``.
``$SHARP_EXPORT_OPENVINO_CACHE`` moves it, or turns it off with ``off``. The OPENVINO_CACHE_KEEP most recently used
blobs are kept (0.72 GB for the full int8 IR of the whole-network plan, 2.5 GB for the bf16 one).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from sharp_export.artifact import IOSpec
from sharp_export.errors import MissingDependencyError
from sharp_export.progress import echo
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime import base
from sharp_export.runtime.base import Runner, omp_threads, outputs_to_gaussians

INT8_LAYER_TYPES = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")  # OpenVINO CPU layer types
OPENVINO_CACHE_ENV = "SHARP_EXPORT_OPENVINO_CACHE"  # a folder, or "off"
OPENVINO_CACHE_KEEP = 3  # compiled blobs kept; older ones are removed when a new one is written


def _cpu_signature() -> str:
    """The CPU model name and its flags (a blob compiled for one ISA must not be imported on another)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()}|{model}|{flags}"


def compiled_cache_dir(model_path: Path, artifact_key: str, config: dict[str, str]) -> Path | None:
    """The folder OpenVINO keeps this artifact's compiled model in, or None when the cache is off.

    ``artifact_key``: what identifies the artifact's content (its manifest's file hashes). The model.bin's size and
    modification time are added, so a file replaced behind the manifest's back is compiled afresh, as are another
    OpenVINO, another CPU and other compile settings.
    """
    import openvino as ov

    from sharp_export.reference.checkpoint import cache_dir

    setting = os.environ.get(OPENVINO_CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    root = Path(setting) if setting else cache_dir() / "openvino"
    weights = model_path.with_suffix(".bin")
    stat = weights.stat() if weights.exists() else None
    parts = [artifact_key, str(stat and (stat.st_size, stat.st_mtime_ns)), ov.__version__, _cpu_signature(),
             repr(sorted(config.items()))]  # fmt: skip
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    return root / key


def _prune(root: Path, keep: int, current: Path) -> None:
    """Remove all but the ``keep`` most recently used blob folders (``current`` is always kept)."""
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in folders if p != current][max(keep - 1, 0) :]:
        shutil.rmtree(old, ignore_errors=True)


class OpenVINORunner(Runner):
    def __init__(
        self,
        model_path: Path,
        io: IOSpec,
        device: str = "cpu",
        precision_hint: str = "f32",
        int8: bool = False,
        cache_key: str | None = None,
    ):
        super().__init__(io, device)
        self.cache_key = cache_key  # the artifact's identity for the compiled-model cache; None: never cached
        self.cache_state: str | None = None  # "off", "written" or "imported", known once open
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
        # Read without mmap: the compiled model keeps only its own (repacked) weights. Full preset, bf16 hint, Xeon
        # with AMX: peak RSS 7.09 GB with the fp32 model.bin mapped, 6.11 GB without (f32 hint: 9.18 -> 8.20 GB).
        core = ov.Core()
        core.set_property({"ENABLE_MMAP": False})
        cache = compiled_cache_dir(self.model_path, self.cache_key, config) if self.cache_key else None
        if cache is not None:
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as error:  # a read-only or full cache folder costs the speed-up, not the run
                echo(f"note: no OpenVINO compiled-model cache ({cache}: {error.strerror}); compiling afresh")
                cache = None
        if cache is None:
            self.cache_state = "off"
            model = core.read_model(str(self.model_path))
            compiled = core.compile_model(model, "CPU", config)
            del model
        else:
            # From the path, so that OpenVINO looks the blob up by the file instead of hashing the whole graph.
            self.cache_state = "imported" if any(cache.iterdir()) else "written"
            compiled = core.compile_model(str(self.model_path), "CPU", {**config, "CACHE_DIR": str(cache)})
            os.utime(cache)  # most recently used
            _prune(cache.parent, OPENVINO_CACHE_KEEP, cache)
            echo(f"    OpenVINO compiled model {self.cache_state} ({cache}; ${OPENVINO_CACHE_ENV}=off disables)")
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
        elif self.int8 and base.x86_without_vnni():
            echo(base.INT8_WITHOUT_VNNI_WARNING.format(name=self.model_path.name))
        self.output_names = [output.get_any_name() for output in compiled.outputs]
        self.request = compiled.create_infer_request()

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        assert self.request is not None
        self.request.infer({"image": image, "disparity_factor": disparity_factor})
        values = [self.request.get_tensor(name).data.copy() for name in self.output_names]
        return outputs_to_gaussians(self.output_names, values)

    def _close(self) -> None:
        self.request = None
