"""The export pipeline shared by every target.

build model -> example inputs -> torch reference outputs -> ``target.convert`` -> free the torch model ->
parity hook (runs the artifact through its own runner) -> manifest -> atomic move into place.

Targets only implement ``convert(ctx) -> ConvertResult``; everything that makes an artifact trustworthy
(hashes, manifest, log, parity, atomicity) lives here once.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export import __version__
from sharp_export.artifact import (
    LOG_NAME,
    IOSpec,
    Manifest,
    atomic_directory,
    capture_log,
    check_output_path,
    preprocessing_description,
    raw_io_spec,
    write_manifest,
)
from sharp_export.errors import MissingDependencyError, ParityError, SharpExportError, UserInputError
from sharp_export.progress import Stages, echo, peak_rss_gb
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.targets import Target, get_target

PARITY_NAME = "parity.json"
DYNAMIC_EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 0 or 1


class TargetUnavailableError(SharpExportError):
    """A target's toolchain is missing; the message is the target's own reason + install hint."""

    exit_code = MissingDependencyError.exit_code  # 2, like every missing optional dependency

    def __init__(self, target: Target, reason: str):
        super().__init__(f"target '{target.name}' is not usable here: {reason}")


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
    target: Target
    workdir: Path
    stages: Stages
    io: IOSpec  # the I/O the artifact must expose (names, shapes with "batch" when dynamic)
    metadata: dict[str, str]  # small key/values for the native format's metadata (ONNX metadata_props, ...)
    reference: Gaussians3D | None = None  # torch outputs for ``example`` (None with --no-parity)


@dataclass
class ConvertResult:
    main_file: str  # path of the native model file, relative to workdir
    details: dict[str, Any] = field(default_factory=dict)  # goes to manifest["conversion"]
    io: IOSpec | None = None  # only when the target's I/O differs from ctx.io (e.g. fp16 outputs)


# hook(artifact_dir, manifest, example, reference, target, device) -> summary dict with at least "status"
ParityHook = Callable[[Path, Manifest, ExampleInputs, Gaussians3D, Target, str], dict[str, Any]]


def golden_pattern(resolution: int) -> np.ndarray:
    """The golden bundle's synthetic test image (smooth colour waves + a soft disk) as uint8 [H, W, 3].

    Deterministic and file-free; the same formula made the reference goldens, so example outputs are
    comparable across machines.
    """
    coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    u, v = np.meshgrid(coords, coords)  # u along columns (x), v along rows (y)
    red = 0.5 + 0.4 * np.sin(2 * np.pi * (1.5 * u + 0.1)) * np.cos(2 * np.pi * 0.75 * v)
    green = 0.5 + 0.4 * np.sin(2 * np.pi * (1.25 * v + 0.3))
    blue = 0.5 + 0.4 * np.cos(2 * np.pi * 0.8 * (u + v))
    image = np.stack([red, green, blue], axis=-1)
    alpha = 1.0 / (1.0 + np.exp((np.sqrt((u - 0.6) ** 2 + (v - 0.55) ** 2) - 0.18) / 0.01))
    image = image * (1 - alpha[..., None]) + np.array([0.9, 0.3, 0.2]) * alpha[..., None]
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def example_inputs(resolution: int, batch: int = 1) -> ExampleInputs:
    """Example batch: the golden pattern, mirrored for odd batch entries, disparity factors 1.0, 0.9, ..."""
    base = torch.from_numpy(golden_pattern(resolution)).permute(2, 0, 1).float() / 255.0
    images = [base if i % 2 == 0 else base.flip(-1) for i in range(batch)]
    factors = torch.tensor([1.0 - 0.1 * (i % 5) for i in range(batch)], dtype=torch.float32)
    return ExampleInputs(torch.stack(images).contiguous(), factors)


def native_metadata(request: ExportRequest, source: dict[str, Any]) -> dict[str, str]:
    """The subset of the manifest copied into the native file (readable without the manifest)."""
    return {
        "sharp_export.tool_version": __version__,
        "sharp_export.preset": request.preset,
        "sharp_export.precision": request.precision,
        "sharp_export.checkpoint_sha256": source["checkpoint_sha256"] or "",
        "sharp_export.source": source["label"],
    }


def validate_request(target: Target, request: ExportRequest) -> None:
    """Reject every unsupported combination before any work. Raises UserInputError (or exit-2 errors)."""
    name = target.name
    if request.precision not in target.precisions:
        raise UserInputError(
            f"target '{name}' cannot export precision '{request.precision}'",
            fix=f"choose --precision {'|'.join(target.precisions)}",
        )
    if request.dynamic_batch and not target.supports_dynamic_batch:
        raise UserInputError(f"target '{name}' does not support --dynamic-batch", fix="export a fixed batch of 1")
    if request.calib_data is not None and not target.supports_calibration:
        raise UserInputError(f"target '{name}' takes no calibration data", fix="drop --calib-data")
    if request.precision == "int8" and request.calib_data is None:
        raise UserInputError(
            "int8 needs calibration images; there is no default or random fallback",
            fix="pass --calib-data DIR with representative photos",
        )
    if request.calib_data is not None and not Path(request.calib_data).exists():
        raise UserInputError("calibration data not found", path=request.calib_data)
    if request.device not in target.devices:
        raise UserInputError(
            f"target '{name}' runs on {', '.join(target.devices)}, not '{request.device}'",
            fix=f"pass --device {target.devices[0]}",
        )
    if request.checkpoint is not None and request.seed is not None:
        raise UserInputError("give either a checkpoint (-c) or a seed (--seed), not both")
    if request.checkpoint is None and request.seed is None:
        raise UserInputError(
            "no weights given", fix="pass -c CHECKPOINT for real weights, or --seed N for untrained test weights"
        )
    known = {o.name for o in target.options}
    unknown = sorted(set(request.options) - known)
    if unknown:
        raise UserInputError(f"target '{name}' has no option(s) {', '.join(unknown)}")
    for opt in target.options:
        value = request.options.get(opt.name, opt.default)
        if opt.choices is not None and value not in opt.choices:
            raise UserInputError(f"{opt.flag} must be one of {', '.join(opt.choices)}, got {value!r}")
    check_output_path(Path(request.output).absolute(), request.force)
    if target.validate is not None:
        target.validate(request)
    reason = target.check_environment()
    if reason is not None:
        raise TargetUnavailableError(target, reason)


def _source_info(loaded: Any) -> dict[str, Any]:
    return {
        "preset": loaded.preset,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "checkpoint_path": loaded.checkpoint_path,
        "seed": loaded.seed,
        "untrained": loaded.checkpoint_sha256 is None,
        "label": loaded.source_label,
    }


def default_parity_hook(
    artifact_dir: Path,
    manifest: Manifest,
    example: ExampleInputs,
    reference: Gaussians3D,
    target: Target,
    device: str,
) -> dict[str, Any]:
    """Run the fresh artifact through its own runner and gate it with the parity tolerance table."""
    from sharp_export.parity.compare import compare_gaussians
    from sharp_export.parity.report import ParityReport, format_table, to_json
    from sharp_export.parity.tolerances import load_tolerances

    tolerances = load_tolerances(target.name, manifest.precision)
    with target.open_runner(artifact_dir, manifest, device) as runner:
        candidate = runner.infer(example.image.numpy(), example.disparity_factor.numpy())
        seconds = runner.last_inference_time_s
    results = compare_gaussians(reference, candidate, tolerances, space="raw")
    meta = {
        "target": target.name,
        "precision": manifest.precision,
        "batch": example.batch,
        "device": device,
        "input": "golden pattern (export example input)",
        "runner_seconds": seconds,
    }
    report = ParityReport(results, [], meta)
    echo(format_table(report))
    document = to_json(report)
    (artifact_dir / PARITY_NAME).write_text(json.dumps(document, indent=2) + "\n")
    return {
        "status": "passed" if report.passed else "failed",
        "failures": document["failures"],
        "details": PARITY_NAME,
        "batch": example.batch,
    }


def _reference_outputs(model: torch.nn.Module, example: ExampleInputs) -> Gaussians3D:
    with torch.no_grad():
        out = model(example.image, example.disparity_factor)
    return Gaussians3D(*(t.detach().clone() for t in out))


def run_export(request: ExportRequest, parity_hook: ParityHook | None = None) -> Path:
    """Export one artifact. Returns its directory. Raises ParityError (after writing) when parity fails."""
    from sharp_export.env import environment_report
    from sharp_export.reference.checkpoint import build_model

    target = get_target(request.target)
    validate_request(target, request)
    hook = parity_hook or target.parity_hook or default_parity_hook
    output = Path(request.output).absolute()
    stages = Stages(total=5 if request.parity else 3)
    with capture_log() as log, atomic_directory(output, force=request.force) as workdir:
        echo(f"sharp-export {__version__}: {target.name} {request.precision} export of preset '{request.preset}'")
        with stages.stage("build model"):
            loaded = build_model(request.preset, request.checkpoint, request.seed, device="cpu", precision="fp32")
        source = _source_info(loaded)
        echo(f"    weights: {source['label']}")
        model = loaded.model.eval()
        resolution = int(model.resolution)
        batch = DYNAMIC_EXAMPLE_BATCH if request.dynamic_batch else 1
        example = example_inputs(resolution, batch)
        reference = None
        if request.parity:
            with stages.stage("reference forward (torch eager)"):
                reference = _reference_outputs(model, example)
        io = raw_io_spec(resolution, "batch" if request.dynamic_batch else 1)
        ctx = ConvertContext(
            model, example, request, target, workdir, stages, io, native_metadata(request, source), reference
        )
        with stages.stage(f"convert to {target.name}"):
            result = target.convert(ctx)
        # The torch model can weigh 3 GB; the runner that checks parity needs that memory.
        del ctx, model, loaded
        gc.collect()
        manifest = Manifest(
            source=source,
            target=target.name,
            precision=request.precision,
            options={
                "dynamic_batch": request.dynamic_batch,
                "device": request.device,
                "calib_data": str(request.calib_data) if request.calib_data else None,
                **{o.name: request.options.get(o.name, o.default) for o in target.options},
            },
            io=result.io or io,
            preprocessing=preprocessing_description(resolution),
            environment=environment_report(),
            conversion={**result.details, "stage_seconds": stages.timings},
            reproduce=request.reproduce,
            main_file=result.main_file,
        )
        if request.parity:
            assert reference is not None
            with stages.stage("parity (artifact runner vs torch)"):
                manifest.parity = hook(workdir, manifest, example, reference, target, request.device)
        else:
            manifest.parity = {"status": "skipped", "reason": "--no-parity"}
        with stages.stage("write manifest"):
            manifest.conversion["stage_seconds"] = stages.timings
            manifest.conversion["peak_rss_gb"] = round(peak_rss_gb(), 2)
            (workdir / LOG_NAME).write_text(log.getvalue())
            write_manifest(workdir, manifest)
    echo(f"artifact written: {output}")
    if manifest.parity.get("status") == "failed":
        failures = ", ".join(manifest.parity.get("failures", []))
        raise ParityError(
            f"parity failed ({failures}); the artifact was kept with parity status 'failed' in its manifest",
            path=output,
            fix=f"see {output / PARITY_NAME}",
        )
    return output
