"""The TensorRT target (thin): TensorRT-ready ONNX from the onnx target's code -> parse -> build -> serialize.

The plan file is written untouched (no header in front of it), so ``trtexec --loadEngine`` and any TensorRT
runtime read it directly; everything about it lives in manifest.json. Precision: TensorRT < 11 takes the
FP16 builder flag; TensorRT 11 removed it (precision must then be baked into the ONNX), so fp16 on 11+ is
refused instead of silently building fp32.

TensorRT cannot be installed on the project's CPU machines: this module is written against the
documented Python API and only its environment check and its ONNX stage are tested there.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.contract import ConvertContext, ConvertResult, ExportRequest
from sharp_export.converters.onnx import DEFAULT_OPSET, MAX_DYNAMIC_BATCH, MODEL_FILE, OPSET_OPTION, validate_opset
from sharp_export.errors import ConversionError, UserInputError
from sharp_export.progress import echo, rss_gb
from sharp_export.targets import Target, TargetOption, missing_packages, package_version, register_target

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.tensorrt_runner import TensorRTRunner

PLAN_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
ONNX_SUBDIR = "onnx"  # scratch folder inside the artifact for the intermediate ONNX (removed unless kept)
INSTALL_HINT = "pip install 'sharp-export[tensorrt]' on a machine with NVIDIA's libraries"


def check_environment() -> str | None:
    reason = missing_packages({"tensorrt": "tensorrt"})
    if reason is not None:
        return f"tensorrt not importable: {INSTALL_HINT}"
    reason = missing_packages({"onnx": "onnx", "onnxscript": "onnxscript"})
    if reason is not None:
        return f"{reason}: {INSTALL_HINT}"
    return None


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def build_tensorrt_ready_onnx(
    model: Any, example: Any, io: Any, out_dir: Path, *, opset: int, dynamic_batch: bool, metadata: dict[str, str]
) -> dict[str, Any]:
    """The ONNX TensorRT parses: same graph as the onnx target, external data always (one file beside it)."""
    from sharp_export.converters.onnx_export import export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    return export_onnx(
        model, example, io, out_dir, opset=opset, dynamic_batch=dynamic_batch, external_data=True, metadata=metadata
    )


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: str,
    workspace_gb: float,
    timing_cache: Path | None,
    batch_shapes: tuple[int, int, int] | None,  # (min, opt, max) batch for a dynamic-batch model
    resolution: int,
) -> dict[str, Any]:
    """Parse -> build -> serialize with the TensorRT Python API; writes the raw plan bytes."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves model.onnx.data relative to the model's directory.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT's ONNX parser failed: {errors}", path=onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        if trt_major(trt.__version__) >= 11:
            raise ConversionError(
                f"TensorRT {trt.__version__} has no FP16 builder flag; fp16 must be baked into the ONNX",
                fix="export --precision fp32, or use TensorRT 10 for fp16",
            )
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if batch_shapes is not None:
        low, opt, high = batch_shapes
        profile = builder.create_optimization_profile()
        image = [(b, 3, resolution, resolution) for b in (low, opt, high)]
        profile.set_shape("image", *image)
        profile.set_shape("disparity_factor", (low,), (opt,), (high,))
        config.add_optimization_profile(profile)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if plan is None:
        raise ConversionError("TensorRT engine build failed (see the TensorRT log lines above)", path=onnx_path)
    plan_path.write_bytes(bytes(plan))
    echo(f"    TensorRT build {build_s:.1f} s, RSS {rss_gb():.1f} GB")
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    import torch

    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return {
        "tensorrt_version": trt.__version__,
        "gpu_compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "gpu_name": torch.cuda.get_device_name() if capability else None,
        "build_seconds": round(build_s, 2),
        "workspace_gb": workspace_gb,
        "batch_profile": list(batch_shapes) if batch_shapes else None,
    }


def validate(request: ExportRequest) -> None:
    validate_opset(request)
    if float(request.options.get("workspace_gb", 8.0)) <= 0:
        raise UserInputError("--workspace-gb must be positive")


def convert(ctx: ConvertContext) -> ConvertResult:
    options = ctx.request.options
    onnx_dir = ctx.workdir / ONNX_SUBDIR
    details = build_tensorrt_ready_onnx(
        ctx.model,
        ctx.example,
        ctx.io,
        onnx_dir,
        opset=int(options.get("opset", DEFAULT_OPSET)),
        dynamic_batch=ctx.request.dynamic_batch,
        metadata=ctx.metadata,
    )
    cache_option = options.get("timing_cache")
    timing_cache = Path(cache_option) if cache_option else ctx.workdir / TIMING_CACHE_FILE
    batch = (1, 1, MAX_DYNAMIC_BATCH) if ctx.request.dynamic_batch else None
    resolution = int(ctx.io.inputs[0].shape[-1])
    details["tensorrt"] = build_engine(
        onnx_dir / MODEL_FILE,
        ctx.workdir / PLAN_FILE,
        precision=ctx.request.precision,
        workspace_gb=float(options.get("workspace_gb", 8.0)),
        timing_cache=timing_cache,
        batch_shapes=batch,
        resolution=resolution,
    )
    if not options.get("keep_onnx", False):
        shutil.rmtree(onnx_dir)
    return ConvertResult(main_file=PLAN_FILE, details=details)


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cuda") -> TensorRTRunner:
    from sharp_export.runtime.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(Path(artifact_dir) / manifest.main_file, manifest, device)


TENSORRT_TARGET = register_target(
    Target(
        name="tensorrt",
        suffix=".plan",
        extra="tensorrt",
        description="TensorRT engine (NVIDIA GPUs; the plan is specific to the GPU and TensorRT version)",
        precisions=("fp32", "fp16"),
        supports_dynamic_batch=True,
        devices=("cuda",),
        options=(
            OPSET_OPTION,
            TargetOption("workspace_gb", float, 8.0, "builder workspace memory pool limit in GB"),
            TargetOption(
                "timing_cache", str, "", "timing cache file to reuse and update (default: inside the artifact)"
            ),
            TargetOption("keep_onnx", bool, False, "keep the intermediate ONNX in the artifact (onnx/)"),
        ),
        check_environment=check_environment,
        convert=convert,
        open_runner=open_runner,
        tolerance_profiles={"fp32": "fp32-tf32"},
        validate=validate,
    )
)


def installed_version() -> str | None:
    return package_version("tensorrt")
