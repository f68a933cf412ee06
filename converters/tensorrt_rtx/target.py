"""The tensorrt-rtx target: a TensorRT for RTX engine, built here on the CPU, for RTX desktops and laptops.

TensorRT-ready ONNX (the step every ONNX-based target shares, with TensorRT's int8 rules, checked statically by
the tensorrt target's ``ready.py``) -> TensorRT-RTX parse + ahead-of-time build for the chosen compute
capabilities (``build.py``; no GPU needed) -> ``model.engine``. The engine is compiled for the actual GPU at its
first run; the runner keeps those kernels in ``runtime.cache`` beside the engine.

TensorRT-RTX serves RTX GPUs (SM75 to SM121, x86-64 Linux and Windows): no SM90 (H100) and no Jetson, so it
checks the tensorrt target but does not replace it. Networks are strongly typed: precision lives in the ONNX.

Parity: the engine runs only on a CUDA GPU. Exported with ``--device cuda`` on an RTX machine, the engine itself is
checked. Elsewhere (``--device cpu``, the default), the exact ONNX the engine was built from runs in ONNX Runtime
and is recorded under that label; the engine's parity is ``deferred`` until ``sharp-export parity ARTIFACT
--device cuda`` runs it. bf16 (which ONNX Runtime's CPU kernels cannot run) is checked structurally only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.contract import ConvertContext, ConvertResult, ExportRequest, ParityContext
from sharp_export.converters.onnx.graph import MODEL_FILE
from sharp_export.converters.onnx.target import (
    CALIB_RUNTIME_OPTION,
    CALIB_SIZE_OPTION,
    OPSET_OPTION,
    validate_calibration,
    validate_opset,
)
from sharp_export.converters.onnx.target import check_environment as check_onnx_environment
from sharp_export.converters.tensorrt.ready import (
    DEFAULT_MAX_BATCH,
    TensorRTRelease,
    batch_profile,
    check_tensorrt_ready,
    validate_max_batch,
)
from sharp_export.converters.tensorrt.target import ENGINE_TOLERANCE_PROFILES, MAX_BATCH_OPTION
from sharp_export.converters.tensorrt_rtx.build import (
    ALL_PRECISIONS,
    COMPUTE_CAPABILITIES,
    INSTALL_HINT,
    PORTABLE,
    RTX_DISTRIBUTION,
    RTX_MODULE,
    check_precision,
    parse_compute_capabilities,
)
from sharp_export.errors import UserInputError
from sharp_export.progress import echo
from sharp_export.targets import CALIBRATED_PRECISIONS, Target, TargetOption, missing_packages

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.base import Runner

ENGINE_FILE = "model.engine"
ONNX_SUBDIR = "onnx"  # the ONNX the engine is built from; removed after parity unless --keep-onnx
# TensorRT-RTX 1.7 cannot type a bf16 ConvTranspose (deconvolution): measured alone in a 3-node graph
# (Cast -> ConvTranspose -> Cast), at every compute capability and kernel shape tried, while bf16 Conv builds
# (benchmarks/study_tensorrt_rtx_tiny.py). The bf16 plan keeps those 18 upsampling layers fp32.
BF16_KEEP_FP32_OPS = {
    "ConvTranspose": "TensorRT-RTX 1.7 cannot build a bf16 ConvTranspose ('Could not infer output types for "
    "operation ... deconv'), alone in a 3-node graph too, at every compute capability; kept fp32 (more precise)"
}
# The static checks' row for TensorRT-RTX's parser: its real parser and builder run right after, so the opset limit
# is the TensorRT 11 one (the 1.7 parser read opsets up to 26 on a one-node graph).
RTX_PARSER = TensorRTRelease(
    name="rtx",
    label="TensorRT-RTX 1.7 (RTX GPUs)",
    max_opset=25,
    precisions=ALL_PRECISIONS,
    why_not="",
    hardware_compatible=False,
)
ONNX_PARITY_LABEL = (
    "onnx/model.onnx, the TensorRT-ready ONNX this engine was built from, run in ONNX Runtime on the CPU; the "
    "engine itself has not run (it needs a CUDA GPU): run `sharp-export parity ARTIFACT --device cuda` on an RTX GPU"
)
BF16_NOTE = (
    "ONNX Runtime's CPU kernels have no bfloat16, so the bf16 ONNX the engine was built from is checked structurally "
    "only (opset, op list, element types, casts, onnx full type check); run `sharp-export parity ARTIFACT "
    "--device cuda` on an RTX GPU for numbers"
)


def check_environment() -> str | None:
    reason = missing_packages({RTX_MODULE: RTX_DISTRIBUTION})
    if reason is not None:
        return f"{reason}: {INSTALL_HINT}"
    return check_onnx_environment()


def capabilities_of(options: Any) -> tuple[str, ...]:
    return parse_compute_capabilities(options.get("compute_capability", PORTABLE))


def validate(request: ExportRequest) -> None:
    validate_opset(request)
    validate_calibration(request, CALIBRATED_PRECISIONS)
    validate_max_batch(request)
    check_precision(request.precision, capabilities_of(request.options))


def convert(ctx: ConvertContext) -> ConvertResult:
    from sharp_export.converters.onnx.precision import export_at_precision
    from sharp_export.converters.tensorrt_rtx.build import build_engine, check_network_io

    options = ctx.request.options
    precision = ctx.request.precision
    capabilities = capabilities_of(options)
    onnx_dir = ctx.workdir / ONNX_SUBDIR
    written = export_at_precision(
        ctx,
        onnx_dir,
        external_data=True,  # one data file beside the model, which the parser resolves
        int8_rules="tensorrt",
        keep_fp32_ops=BF16_KEEP_FP32_OPS if precision == "bf16" else None,
    )
    details = written.details()
    onnx_path = onnx_dir / MODEL_FILE
    echo(f"    checking the ONNX statically for the {RTX_PARSER.label} parser")
    details["tensorrt_ready"] = check_tensorrt_ready(onnx_path, precision, RTX_PARSER)
    profile = batch_profile(ctx.io, int(options.get("max_batch", DEFAULT_MAX_BATCH)))
    echo(f"    TensorRT-RTX: parse and build for {', '.join(capabilities)} (ahead of time, no GPU needed)")
    record = build_engine(
        onnx_path,
        ctx.workdir / ENGINE_FILE,
        compute_capabilities=capabilities,
        batch_shapes=profile,
        resolution=int(ctx.io.inputs[0].shape[-1]),
    )
    check_network_io(record["network"], ctx.io)
    record["gpus"] = {name: COMPUTE_CAPABILITIES[name].gpus for name in capabilities}
    record["runtime_cache"] = "runtime.cache beside the engine: kernels compiled for the GPU at the first run"
    details["tensorrt_rtx"] = record
    echo(
        f"    engine {record['engine_bytes'] / 1e6:.1f} MB, build {record['build_seconds']:.1f} s, build process peak "
        f"RSS {record['build_peak_rss_gb']} GB"
    )
    if not ctx.request.parity and not options.get("keep_onnx", False):
        shutil.rmtree(onnx_dir)  # nothing will read it (the parity hook removes it otherwise)
    return ConvertResult(main_file=ENGINE_FILE, details=details)


def parity_hook(ctx: ParityContext) -> dict[str, Any] | None:
    """--device cuda: None (the engine runs through its runner). --device cpu: the ONNX it was built from, labelled."""
    onnx_dir = ctx.artifact_dir / ONNX_SUBDIR
    keep = bool(ctx.manifest.options.get("keep_onnx", False))
    if ctx.device == "cuda":
        if not keep:
            shutil.rmtree(onnx_dir, ignore_errors=True)
        return None
    summary: dict[str, Any] = {
        "status": "deferred",
        "engine": "not run here (needs a CUDA GPU)",
        "batch": ctx.example.batch,
    }
    if ctx.manifest.precision == "bf16":
        echo(f"    bf16: {BF16_NOTE}")
        summary.update(reason=BF16_NOTE, structural_checks="passed")
    else:
        from sharp_export.parity.runner_check import check_with_runner
        from sharp_export.runtime.onnxruntime_runner import OnnxRuntimeRunner

        echo(f"    parity of {ONNX_PARITY_LABEL}")
        int8 = ctx.manifest.precision == "int8"  # int8 kernels in ONNX Runtime (INT8_DISABLED_OPTIMIZERS)
        runner = OnnxRuntimeRunner(onnx_dir / MODEL_FILE, ctx.manifest.io, "cpu", int8=int8)
        onnx_summary = check_with_runner(ctx, runner, {"ran": ONNX_PARITY_LABEL})
        summary.update(reason=ONNX_PARITY_LABEL, onnx_parity=onnx_summary, details=onnx_summary["details"])
        if onnx_summary["status"] == "failed":  # the engine cannot be trusted when its own ONNX already fails
            summary.update(status="failed", failures=[f"{name} (onnx)" for name in onnx_summary["failures"]])
    if not keep:
        shutil.rmtree(onnx_dir)
    return summary


def runnable_capabilities(manifest: Manifest) -> tuple[str, ...]:
    """Compute capabilities (sm names) whose GPUs can run this engine: those it was built for, or for a portable
    engine every one whose row accepts its precision."""
    built = tuple(manifest.conversion.get("tensorrt_rtx", {}).get("compute_capabilities", ()))
    if built and PORTABLE not in built:
        return built
    return tuple(n for n, cc in COMPUTE_CAPABILITIES.items() if n != PORTABLE and manifest.precision in cc.precisions)


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cuda") -> Runner:
    if device != "cuda":
        raise UserInputError(
            "a TensorRT-RTX engine runs on an NVIDIA RTX GPU only", path=artifact_dir, fix="pass --device cuda"
        )
    from sharp_export.runtime.tensorrt_rtx_runner import TensorRTRTXRunner

    rebuild = f"rebuild with: {manifest.reproduce or 'sharp-export tensorrt-rtx ...'} --compute-capability <this GPU>"
    return TensorRTRTXRunner(
        Path(artifact_dir) / manifest.main_file, manifest, device, runnable_capabilities(manifest), rebuild
    )


TENSORRT_RTX_TARGET = Target(
    name="tensorrt-rtx",
    suffix=".engine",
    extra="tensorrt-rtx",
    description="TensorRT for RTX engine, built here without a GPU (RTX GPUs SM75-SM121; not H100, not Jetson)",
    precisions=ALL_PRECISIONS,
    supports_dynamic_batch=True,
    supports_calibration=True,
    devices=("cpu", "cuda"),  # cpu: export parity of the ONNX the engine was built from; the engine needs cuda
    options=(
        OPSET_OPTION,
        TargetOption(
            "compute_capability",
            str,
            PORTABLE,
            "GPUs the engine is built for: comma-separated sm75, sm80, sm86, sm89, sm120, sm121, or portable (every "
            "GPU TensorRT-RTX supports); fp8 needs sm89 or later",
        ),
        MAX_BATCH_OPTION,
        CALIB_SIZE_OPTION,
        CALIB_RUNTIME_OPTION,
        TargetOption("keep_onnx", bool, False, "keep the TensorRT-ready ONNX the engine was built from (onnx/)"),
    ),
    check_environment=check_environment,
    convert=convert,
    open_runner=open_runner,
    parity_hook=parity_hook,
    # The tensorrt target's rows: no engine has run yet, so they are provisional for engines. The export's ONNX
    # parity on the CPU is gated by the same rows.
    tolerance_profiles=ENGINE_TOLERANCE_PROFILES,
    validate=validate,
)
