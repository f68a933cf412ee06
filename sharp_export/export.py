"""The export pipeline shared by every target.

build model -> example inputs -> torch reference outputs -> ``target.convert`` -> free the torch model ->
parity hook (runs the artifact through its own runner) -> manifest -> atomic move into place.

Targets only implement the contract of sharp_export/contract.py (``convert(ctx) -> ConvertResult``, an
``open_runner``, optionally a torch ``proxy``); everything that makes an artifact trustworthy (hashes,
manifest, log, parity, atomicity) lives here once. ``run_export`` resolves the target row and its tolerance
profile once and hands them to every step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sharp_export import __version__
from sharp_export.artifact import (
    LOG_NAME,
    PARITY_NAME,
    Manifest,
    atomic_directory,
    check_output_path,
    preprocessing_description,
    raw_io_spec,
    write_manifest,
)
from sharp_export.calibration.dataset import is_samples
from sharp_export.capture import capture_log
from sharp_export.contract import (
    ConvertContext,
    ExampleInputs,
    ExportRequest,
    ParityContext,
    ParityHook,
    ProxyOutputs,
)
from sharp_export.env import environment_report
from sharp_export.errors import ParityError, TargetUnavailableError, UserInputError
from sharp_export.parity.compare import compare_gaussians
from sharp_export.parity.runner_check import check_with_runner
from sharp_export.parity.tolerances import profile_tolerances
from sharp_export.pipeline import require_finite
from sharp_export.progress import Stages, echo, give_freed_memory_back, peak_rss_gb, rss_gb
from sharp_export.reference import checkpoint  # checkpoint.build_model: the one place weights are built
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.registry import get_target
from sharp_export.samples import example_inputs
from sharp_export.targets import Target

DYNAMIC_EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 0 or 1


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
        why = (
            f" (its {'/'.join(target.runtime_quantized)} quantizes activations as it runs)"
            if target.runtime_quantized
            else ""
        )
        raise UserInputError(f"target '{name}' takes no calibration data{why}", fix="drop --calib-data")
    if target.needs_calibration(request.precision) and request.calib_data is None:
        raise UserInputError(
            f"{request.precision} needs calibration images; there is no random fallback",
            fix="pass --calib-data DIR with photos like those you will run, or --calib-data samples for the "
            "bundled scikit-image sample photos",
        )
    if request.calib_data is not None and not is_samples(request.calib_data) and not Path(request.calib_data).exists():
        raise UserInputError(
            "calibration data not found", path=request.calib_data, fix="pass a folder of photos, or 'samples'"
        )
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
        unset = value is None and opt.default is None  # an option whose default is "not given" (e.g. --calib-runtime)
        if opt.choices is not None and value not in opt.choices and not unset:
            raise UserInputError(f"{opt.flag} must be one of {', '.join(opt.choices)}, got {value!r}")
    check_output_path(Path(request.output).absolute(), request.force)
    if target.validate is not None:
        target.validate(request)
    reason = target.export_environment(request)
    if reason is not None:
        raise TargetUnavailableError(target.name, reason)


def _source_info(loaded: Any) -> dict[str, Any]:
    return {
        "preset": loaded.preset,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "checkpoint_path": loaded.checkpoint_path,
        "seed": loaded.seed,
        "untrained": loaded.checkpoint_sha256 is None,
        "label": loaded.source_label,
    }


def default_parity_hook(ctx: ParityContext) -> dict[str, Any]:
    """Run the fresh artifact through its own runner and gate it with its tolerance profile."""
    return check_with_runner(ctx, ctx.target.open_runner(ctx.artifact_dir, ctx.manifest, ctx.device))


def _reference_outputs(model: torch.nn.Module, example: ExampleInputs) -> Gaussians3D:
    """The fp32 torch outputs on the example. On the CPU in channels-last, as TorchRunner: the full preset peaks
    at 6.4 GB instead of 8.5 GB (oneDNN's blocked copies of NCHW convolutions, benchmarks/results/
    cpu_paths_full_amx.json); the model goes back to NCHW after, since the exporters trace it."""
    channels_last = example.image.device.type == "cpu"
    with torch.no_grad():
        if channels_last:
            model.to(memory_format=torch.channels_last)
        try:
            image = example.image.contiguous(memory_format=torch.channels_last) if channels_last else example.image
            out = model(image, example.disparity_factor)
        finally:
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
    reference = Gaussians3D(*(t.detach().clone() for t in out))
    require_finite(reference, "the golden test pattern", producer="the model", artifact=False)
    return reference


def gate_proxy(profile: str, outputs: ProxyOutputs, reference: Gaussians3D) -> dict[str, Any]:
    """A target's torch proxy against the reference, gated by ``profile`` (the export's), or by the profile the
    proxy names (``ProxyOutputs.tolerance_profile``; recorded as ``tolerance_profile``).
    """
    profile = outputs.tolerance_profile or profile
    results = compare_gaussians(reference, outputs.gaussians, profile_tolerances(profile), space="raw")
    keys = ("max", "p99", "mean", "tolerance", "statistic", "passed")
    metrics = {r.metric: {key: getattr(r, key) for key in keys} for r in results}
    parts = [f"{name} max {m['max']:.3g} p99 {m['p99']:.3g}" for name, m in metrics.items()]
    echo(f"    {outputs.label.split(':')[0]} vs torch: " + "; ".join(parts))
    passed = all(r.passed for r in results)
    return {"label": outputs.label, "passed": passed, "tolerance_profile": profile, "metrics": metrics,
            **outputs.details}  # fmt: skip


def apply_proxy(summary: dict[str, Any], proxy: dict[str, Any] | None) -> dict[str, Any]:
    """Attach the proxy result to a parity summary; a deferred check whose proxy already fails is a failure.

    (A device will not do better than its own precision plan simulated in torch.)
    """
    summary = {**summary, "proxy": proxy}
    if proxy is not None and not proxy["passed"] and summary.get("status") == "deferred":
        summary["status"] = "failed"
        summary["failures"] = [f"{name} (proxy)" for name, m in proxy["metrics"].items() if not m["passed"]]
    return summary


def run_export(
    request: ExportRequest, parity_hook: ParityHook | None = None, show_toolchain_output: bool = False
) -> Path:
    """Export one artifact. Returns its directory. Raises ParityError (after writing) when parity fails.

    The toolchains' own output goes to the artifact's export.log only, unless ``show_toolchain_output`` (``-v``).
    """
    target = get_target(request.target)
    validate_request(target, request)
    options = {o.name: request.options.get(o.name, o.default) for o in target.options}
    profile = target.tolerance_profile(request.precision, options)  # the rows that gate the proxy and the artifact
    hook = parity_hook or target.parity_hook or default_parity_hook
    output = Path(request.output).absolute()
    with_proxy = request.parity and target.proxy is not None
    stages = Stages(total=3 + (2 if request.parity else 0) + (1 if with_proxy else 0))
    with capture_log(show_toolchain_output) as log, atomic_directory(output, force=request.force) as workdir:
        echo(f"sharp-export {__version__}: {target.name} {request.precision} export of preset '{request.preset}'")
        with stages.stage("build model"):
            loaded = checkpoint.build_model(
                request.preset, request.checkpoint, request.seed, device="cpu", precision="fp32"
            )
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
        ctx = ConvertContext(model, example, request, workdir, io, native_metadata(request, source))
        # From here the context holds the only reference to the torch model (3 GB at full size): a target may drop
        # it mid-conversion (ctx.release_model), and the runner that checks parity gets that memory back after.
        del model, loaded
        with stages.stage(f"convert to {target.name}"):
            result = target.convert(ctx)
        kept: torch.nn.Module | None = ctx.model  # None when the target released it
        del ctx
        proxy = None
        if with_proxy:
            # After the conversion, so that the proxy may use the model itself (Core ML rounds its weights in place)
            # instead of a second copy of the weights beside the one the converter reads.
            assert reference is not None and target.proxy is not None
            if kept is None:
                raise RuntimeError(f"target {target.name} released the model, but its proxy needs it")
            give_freed_memory_back()
            with stages.stage(f"torch proxy of the {target.name} {request.precision} artifact"):
                outputs = target.proxy(kept, example, request)  # may modify the model: it is dropped next
                kept = None
                proxy = None if outputs is None else gate_proxy(profile, outputs, reference)
        kept = None
        give_freed_memory_back()
        echo(f"    freed memory handed back before the check: RSS {rss_gb():.1f} GB")
        manifest = Manifest(
            source=source,
            target=target.name,
            precision=request.precision,
            options={
                "dynamic_batch": request.dynamic_batch,
                "device": request.device,
                "calib_data": str(request.calib_data) if request.calib_data else None,
                **options,
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
                check = ParityContext(workdir, manifest, example, reference, target, profile, request.device)
                summary = hook(check)
                if summary is None:  # the target's hook says: the artifact runs here, use its runner
                    summary = default_parity_hook(check)
            manifest.parity = apply_proxy(summary, proxy) if with_proxy else summary
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
