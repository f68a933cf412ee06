"""The TensorRT engine builder: parse the TensorRT-ready ONNX -> build (strongly typed) -> serialize the plan.

Written against TensorRT's documented Python API. TensorRT cannot be installed on the project's CPU machines, so
this module has never run there; everything before it (the ONNX, its static checks) has. ``tensorrt`` and torch
are imported inside :func:`build_engine` only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sharp_export.errors import ConversionError
from sharp_export.progress import echo, rss_gb


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    workspace_gb: float,
    timing_cache: Path | None,
    batch_shapes: tuple[int, int, int] | None,  # (min, opt, max) batch for a dynamic-batch model
    resolution: int,
    optimization_level: int = 3,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
) -> dict[str, Any]:
    """Parse -> build (strongly typed) -> serialize with the TensorRT Python API; writes the raw plan bytes."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: tensor types come from the ONNX's casts and Q/DQ. TensorRT 11 has no other mode (and may
    # drop the flag); on TensorRT 10 without it, the builder could pick other precisions than the ONNX's.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None and trt_major(trt.__version__) < 11:
        raise ConversionError(
            f"TensorRT {trt.__version__} cannot build strongly typed networks",
            fix="use TensorRT 10.0 or newer",
        )
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves model.onnx.data relative to the model's directory.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT's ONNX parser failed: {errors}", path=onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = optimization_level
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
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
        "strongly_typed": flag is not None or trt_major(trt.__version__) >= 11,
        "builder_optimization_level": optimization_level,
        "version_compatible": version_compatible,
        "hardware_compatibility": "ampere_plus" if hardware_compatible else None,
    }
