"""CoreMLRunner: a Core ML artifact (.mlpackage) run by Core ML on macOS.

The program emits five rank-4 grids ([1, C*2, h, w]); the runner flattens them on the host into
Gaussians3D [1, N, C], like every other runner returns. Core ML predicts only on macOS (coremltools'
native library exists only there), so opening the runner elsewhere is a clear error, never a silent
fallback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export.artifact import IOSpec, Manifest
from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS, Gaussians3D
from sharp_export.reference.model.composer import GRID_CHANNELS, GaussianGrids, flatten_grids
from sharp_export.runtime.base import Runner

MACOS_ONLY = "Core ML runs only on macOS; check this artifact on a Mac with `sharp-export parity ARTIFACT --golden ...`"


def _require_macos(package: Path) -> None:
    if sys.platform != "darwin":
        raise UserInputError(MACOS_ONLY, path=package)


def _compute_unit(name: str) -> Any:
    import coremltools as ct

    known = [unit.name.lower() for unit in ct.ComputeUnit]  # ALL -> all, CPU_AND_NE -> cpu_and_ne, ...
    if name not in known:
        raise UserInputError(f"unknown compute units '{name}'", fix=f"use one of {', '.join(known)}")
    return getattr(ct.ComputeUnit, name.upper())


def grids_to_gaussians(grids: Iterable[Any]) -> Gaussians3D:
    """Host-side flatten of five grids (numpy or torch, [B, C*2, h, w]) into Gaussians3D [B, N, C]."""
    tensors = [torch.as_tensor(g).float() for g in grids]
    for tensor, channels in zip(tensors, GRID_CHANNELS, strict=True):
        if tensor.ndim != 4 or tensor.shape[1] != 2 * channels:
            raise ValueError(f"expected a [B, {2 * channels}, h, w] grid, got {tuple(tensor.shape)}")
    return flatten_grids(GaussianGrids(*tensors))


class CoreMLRunner(Runner):
    """Runs one package, or a chain of packages (``--split components``) feeding each other by name."""

    def __init__(self, packages: list[Path], io: IOSpec, device: str = "cpu", compute_units: str = "all"):
        super().__init__(io, device)
        self.packages = [Path(p) for p in packages]
        self.compute_units = compute_units
        self.models: list[Any] = []

    def _open(self) -> None:
        _require_macos(self.packages[0])
        try:
            import coremltools as ct
        except ImportError:
            raise MissingDependencyError("coremltools", "coreml", "running a Core ML artifact") from None
        units = _compute_unit(self.compute_units)
        self.models = [ct.models.MLModel(str(p), compute_units=units) for p in self.packages]

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        values: dict[str, Any] = {"image": image, "disparity_factor": disparity_factor}
        for package, model in zip(self.packages, self.models, strict=True):
            wanted = [i.name for i in model.get_spec().description.input]
            missing = [name for name in wanted if name not in values]
            if missing:
                raise UserInputError(f"no value for input(s) {missing} (pieces out of order?)", path=package)
            values.update(model.predict({name: values[name] for name in wanted}))
        missing = [name for name in GAUSSIAN_FIELDS if name not in values]
        if missing:
            raise UserInputError(f"the Core ML model has no output(s) {missing}", path=self.packages[-1])
        return grids_to_gaussians([values[name] for name in GAUSSIAN_FIELDS])

    def _close(self) -> None:
        self.models = []


def artifact_packages(artifact_dir: Path, manifest: Manifest) -> list[Path]:
    """The package(s) of an artifact in run order: the pieces of a split export, else the main file."""
    pieces = manifest.conversion.get("pieces") or [{"file": manifest.main_file}]
    return [Path(artifact_dir) / piece["file"] for piece in pieces]


def open_coreml_artifact(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> CoreMLRunner:
    """The coreml target's ``open_runner`` (the compute units come from the export options)."""
    units = str(manifest.options.get("compute_units", "all"))
    return CoreMLRunner(artifact_packages(artifact_dir, manifest), manifest.io, device, units)


def compute_plan_summary(package: Path, compute_units: str = "all") -> dict[str, Any]:
    """Share of the estimated work per compute device (MLComputePlan, macOS 14.4+).

    Returns ``{"neural_engine": 0.93, "gpu": ..., "cpu": ..., "unknown": ..., "ops": {...}}`` where the
    shares are the sums of each op's estimated cost weight by its preferred device.
    """
    _require_macos(package)
    import coremltools as ct
    from coremltools.models.compute_device import MLCPUComputeDevice, MLGPUComputeDevice, MLNeuralEngineComputeDevice
    from coremltools.models.compute_plan import MLComputePlan

    compiled = ct.models.MLModel(str(package), compute_units=_compute_unit(compute_units)).get_compiled_model_path()
    plan = MLComputePlan.load_from_path(compiled, compute_units=_compute_unit(compute_units))
    program = plan.model_structure.program
    if program is None:
        raise UserInputError("not an ML program", path=package)
    shares = {"neural_engine": 0.0, "gpu": 0.0, "cpu": 0.0, "unknown": 0.0}
    ops = {"neural_engine": 0, "gpu": 0, "cpu": 0, "unknown": 0}
    for operation in program.functions["main"].block.operations:
        usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
        cost = plan.get_estimated_cost_for_mlprogram_operation(operation)
        device = usage.preferred_compute_device if usage is not None else None
        if isinstance(device, MLNeuralEngineComputeDevice):
            key = "neural_engine"
        elif isinstance(device, MLGPUComputeDevice):
            key = "gpu"
        elif isinstance(device, MLCPUComputeDevice):
            key = "cpu"
        else:
            key = "unknown"
        shares[key] += cost.weight if cost is not None else 0.0
        ops[key] += 1
    return {**{k: round(v, 4) for k, v in shares.items()}, "ops": ops, "compute_units": compute_units}
