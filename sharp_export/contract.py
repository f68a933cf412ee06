"""The converter contract: what a target's functions receive and return.

``run_export`` (sharp_export/export.py) builds an ``ExportRequest`` into a ``ConvertContext`` and calls the
target row's ``convert``; the row's ``open_runner`` opens the result for parity, ``run`` and ``bench``; its
optional ``parity_hook`` gets a ``ParityContext``. This module is a leaf: it imports nothing of the package (the
types it names are annotations only) and not torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sharp_export.artifact import IOSpec, Manifest
    from sharp_export.reference.gaussians import Gaussians3D
    from sharp_export.runtime.base import Runner
    from sharp_export.targets import Target


@dataclass(frozen=True)
class ExportRequest:
    """Everything a user chose for one export (the CLI builds it; API users may too)."""

    target: str
    output: Path
    preset: str = "sharp"
    checkpoint: str | Path | None = None
    seed: int | None = None
    precision: str = "fp32"
    dynamic_batch: bool = False
    calib_data: Path | None = None
    device: str = "cpu"
    parity: bool = True
    force: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)  # target options by name (opset, ...)
    reproduce: str = ""  # the shell command that recreates this artifact


@dataclass
class ExampleInputs:
    image: torch.Tensor  # [B, 3, R, R] float32 in [0, 1]
    disparity_factor: torch.Tensor  # [B] float32

    @property
    def batch(self) -> int:
        return int(self.image.shape[0])


@dataclass
class ConvertContext:
    """What a target's ``convert`` gets. It writes its native files into ``workdir``."""

    model: torch.nn.Module  # eval-mode predictor, forward(image, disparity_factor) -> Gaussians3D
    example: ExampleInputs
    request: ExportRequest
    workdir: Path
    io: IOSpec  # the I/O the artifact must expose (names, shapes with "batch" when dynamic)
    metadata: dict[str, str]  # small key/values for the native format's metadata (ONNX metadata_props, ...)

    def release_model(self) -> None:
        """Drop the torch model once the target has what it needs from it (the ONNX-based targets: right after the
        fp32 ONNX is written). run_export keeps no other reference, so its ~3 GB of fp32 weights (full preset) can be
        freed before calibration and conversion (if the exporter let go of them too: converters/onnx/export.py); the
        caller then hands the memory back (progress.give_freed_memory_back: this module imports nothing of the
        project). ``model`` is None from here on."""
        self.model = None  # type: ignore[assignment]


@dataclass
class ConvertResult:
    main_file: str  # path of the native model file, relative to workdir
    details: dict[str, Any] = field(default_factory=dict)  # goes to manifest["conversion"]
    io: IOSpec | None = None  # only when the target's I/O differs from ctx.io (e.g. fp16 outputs)


@dataclass
class ProxyOutputs:
    """A stand-in for the artifact's outputs, computed in torch while the model is still loaded.

    For targets whose artifacts cannot run here (Core ML off macOS): ``run_export`` compares
    ``gaussians`` with the torch reference under the target's tolerances and records the result, labelled,
    in the manifest's parity section. ``details`` is recorded as it is. ``tolerance_profile`` names the
    profile (sharp_export/parity/tolerances.py) that gates it when the target's profile for the precision
    does not fit, e.g. Core ML --weights compression, an option rather than a precision.
    """

    label: str  # says plainly that this is a proxy and what it simulates
    gaussians: Gaussians3D  # raw outputs for the export's example input, [B, N, C]
    details: dict[str, Any] = field(default_factory=dict)
    tolerance_profile: str | None = None  # None: the target's profile for the export's precision


@dataclass
class ParityContext:
    """What the export's parity check gets: the fresh artifact, the torch reference and the resolved rows."""

    artifact_dir: Path  # the artifact being written (its temporary folder)
    manifest: Manifest  # everything but the parity section
    example: ExampleInputs
    reference: Gaussians3D  # torch outputs for ``example``, [B, N, C]
    target: Target
    tolerance_profile: str  # the rows that gate this artifact, resolved once by run_export
    device: str


# convert(ctx) -> ConvertResult: write the native files into ctx.workdir; raise ConversionError on failure.
ConvertFn = Callable[[ConvertContext], ConvertResult]
# open_runner(artifact_dir, manifest, device) -> an unopened Runner for that artifact.
OpenRunnerFn = Callable[[Path, "Manifest", str], "Runner"]
# parity_hook(ParityContext) -> summary with at least "status", or None: run the artifact through its own runner.
ParityHook = Callable[[ParityContext], "dict[str, Any] | None"]
# proxy(model, example, request) -> ProxyOutputs, or None when no proxy applies (e.g. fp32). Runs after convert, on
# the model convert read (so a target with a proxy must not release it); it may modify the model, which is dropped
# after it.
ProxyFn = Callable[["torch.nn.Module", ExampleInputs, ExportRequest], "ProxyOutputs | None"]
# validate(request) -> None: target-specific checks of option combinations; raise UserInputError.
ValidateFn = Callable[[ExportRequest], None]
