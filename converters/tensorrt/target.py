"""The TensorRT target row: TensorRT-ready ONNX (``ready.py``) -> parse -> build -> serialize (``build.py``).

Precision lives in the ONNX (fp16/bf16 casts, int8 / fp8 Q/DQ) and the network is built strongly typed, the only mode
of TensorRT 11 and an opt-in of TensorRT 10, so TensorRT builds exactly the precision asked and no builder
precision flag is ever set.

``--no-build`` stops after the ONNX: the artifact holds ``model.onnx`` + ``model.onnx.data``, the manifest with
the static checks and the ``trtexec`` line that builds the plan on the target machine (a Jetson, a server). Where
TensorRT for RTX is installed, the ONNX is also parsed and built with it for the nearest RTX compute capability as a
check (``converters/tensorrt_rtx/build.py`` ``rtx_check``; recorded as a TensorRT-RTX build, never as a plan). Its
parity is checked with ONNX Runtime (fp32, fp16, int8, and fp8 as fake quantization), or structurally only for
bf16 (ONNX Runtime's CPU kernels have no bf16). With a build, the plan file is written untouched (no header in
front of it), so ``trtexec --loadEngine`` and any TensorRT runtime read it directly; everything about it lives
in manifest.json.

TensorRT cannot be installed on the project's CPU machines: the builder (``build.py``) is written against the
documented Python API and is not run there; everything before it is. This row is what the registry imports: the
ONNX code, TensorRT and torch are imported inside its functions only, so `sharp-export --help` stays instant.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.contract import ConvertContext, ConvertResult, ExportRequest, ParityContext
from sharp_export.converters.onnx.graph import DEFAULT_OPSET, MODEL_FILE
from sharp_export.converters.onnx.modelopt import INSTALL_HINT as MODELOPT_INSTALL_HINT
from sharp_export.converters.onnx.modelopt import MODELOPT_PRECISIONS, QUANTIZERS, check_modelopt
from sharp_export.converters.onnx.target import (
    CALIB_RUNTIME_OPTION,
    CALIB_SIZE_OPTION,
    OPSET_OPTION,
    require_ort_cuda,
    validate_calibration,
    validate_opset,
)
from sharp_export.converters.onnx.target import check_environment as check_onnx_environment
from sharp_export.converters.tensorrt.ready import (
    DEFAULT_MAX_BATCH,
    DEFAULT_RELEASE,
    TENSORRT_RELEASES,
    batch_profile,
    check_tensorrt_ready,
    trtexec_command,
    validate_max_batch,
)
from sharp_export.errors import UserInputError
from sharp_export.progress import echo
from sharp_export.targets import CALIBRATED_PRECISIONS, Target, TargetOption, missing_packages

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.base import Runner

PLAN_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
ONNX_SUBDIR = "onnx"  # where the ONNX sits inside a built artifact (removed unless --keep-onnx)
INSTALL_HINT = "pip install 'sharp-export[tensorrt]' on a machine with NVIDIA's libraries"
OPTIMIZATION_LEVELS = range(0, 6)  # TensorRT's builder optimisation levels; 3 is its default
BF16_PARITY_NOTE = (
    "ONNX Runtime's CPU kernels have no bfloat16 (it refuses the first bf16 Mul), so the bf16 ONNX is checked "
    "structurally here (opset, op list, element types, casts, onnx full type check); its numbers can only be "
    "measured on TensorRT: run `sharp-export parity` on the built plan"
)


# Shared with the tensorrt-rtx target (same optimisation profile).
MAX_BATCH_OPTION = TargetOption(
    "max_batch", int, DEFAULT_MAX_BATCH, "largest batch of the --dynamic-batch profile (min 1, opt 1)"
)


def rtx_check_capability(release: str, precision: str) -> tuple[str, str]:
    """The TensorRT-RTX compute capability closest to the --trt-compat target (TensorRT-RTX has no SM90, no Jetson)."""
    if release == "10.3":
        return "sm86", "Ampere, closest to Jetson Orin's SM87"
    if precision == "fp8":
        return "sm89", "the first FP8 compute capability; H100 is SM90, which TensorRT-RTX lacks"
    return "sm80", "A100-class data-centre Ampere"


def check_environment() -> str | None:
    """For building and running plans. (--no-build needs only onnx: see check_export_environment.)"""
    reason = missing_packages({"tensorrt": "tensorrt"})
    if reason is not None:
        return f"tensorrt not importable: {INSTALL_HINT} (or export --no-build: the ONNX and the trtexec line)"
    return check_onnx_environment()


def builds_plan(options: Any) -> bool:
    return bool(options.get("build", True))


def check_export_environment(request: ExportRequest) -> str | None:
    reason = check_environment() if builds_plan(request.options) else check_onnx_environment()
    if reason is None and request.options.get("quantizer", "ort") == "modelopt":
        return check_modelopt()
    return reason


def is_plan_artifact(manifest: Manifest) -> bool:
    return manifest.main_file.endswith(".plan")


def check_runner_environment(manifest: Manifest) -> str | None:
    return check_environment() if is_plan_artifact(manifest) else check_onnx_environment()


def validate(request: ExportRequest) -> None:
    options = request.options
    validate_opset(request)
    validate_calibration(request, CALIBRATED_PRECISIONS)
    release = TENSORRT_RELEASES[options.get("trt_compat", DEFAULT_RELEASE)]
    if request.precision not in release.precisions:
        raise UserInputError(
            f"--precision {request.precision} is not available for --trt-compat {release.name}: {release.why_not}"
        )
    if int(options.get("opset", DEFAULT_OPSET)) > release.max_opset:
        raise UserInputError(
            f"--opset {options['opset']} is above {release.max_opset}, the highest the {release.label} parser reads",
            fix=f"use --opset {DEFAULT_OPSET}",
        )
    if options.get("quantizer", "ort") == "modelopt" and request.precision not in MODELOPT_PRECISIONS:
        raise UserInputError(
            f"--quantizer modelopt applies to --precision {' or '.join(MODELOPT_PRECISIONS)}, not {request.precision}",
            fix="drop --quantizer",
        )
    if options.get("quantizer", "ort") == "modelopt" and (options.get("calib_runtime") or "auto") != "auto":
        raise UserInputError(
            "--calib-runtime chooses who runs the default quantizer's calibration pass; ModelOpt runs its own",
            fix="drop --calib-runtime, or --quantizer modelopt",
        )
    if float(options.get("workspace_gb", 8.0)) <= 0:
        raise UserInputError("--workspace-gb must be positive")
    if int(options.get("optimization_level", 3)) not in OPTIMIZATION_LEVELS:
        raise UserInputError("--optimization-level must be 0..5 (TensorRT's builder optimisation levels; 3 default)")
    validate_max_batch(request)
    if options.get("hardware_compatible") and not release.hardware_compatible:
        raise UserInputError(
            f"--hardware-compatible is not available for {release.label}: hardware-compatible engines are for "
            "discrete Ampere+ GPUs, not Jetson",
            fix="drop --hardware-compatible",
        )
    if builds_plan(options):
        if request.device != "cuda":
            raise UserInputError(
                f"--device {request.device}: a TensorRT plan runs on CUDA GPUs; --device cpu checks the ONNX in "
                "ONNX Runtime and needs --no-build",
                fix="pass --device cuda, or --no-build",
            )
    elif request.device == "cuda":
        require_ort_cuda(
            "--no-build --device cuda: parity of the ONNX runs in ONNX Runtime",
            "pass --device cpu (the default with --no-build), or pip install onnxruntime-gpu",
        )


def default_device(options: Any) -> str:
    """A build needs a GPU; --no-build checks the ONNX in ONNX Runtime on the CPU by default."""
    return "cuda" if builds_plan(options) else "cpu"


def convert(ctx: ConvertContext) -> ConvertResult:
    options = ctx.request.options
    precision = ctx.request.precision
    build = builds_plan(options)
    release = options.get("trt_compat", DEFAULT_RELEASE)
    from sharp_export.converters.onnx.precision import export_at_precision

    # The ONNX sits at the artifact's root with --no-build (it is the artifact), in onnx/ beside a plan.
    onnx_dir = ctx.workdir / ONNX_SUBDIR if build else ctx.workdir
    # External data: one data file beside the model, which TensorRT's parser resolves.
    written = export_at_precision(
        ctx, onnx_dir, external_data=True, int8_rules="tensorrt", quantizer=options.get("quantizer", "ort")
    )
    details = written.details()
    onnx_path = onnx_dir / MODEL_FILE
    echo(f"    checking the ONNX against the {TENSORRT_RELEASES[release].label} parser")
    details["tensorrt_ready"] = check_tensorrt_ready(onnx_path, precision, release)
    max_batch = int(options.get("max_batch", DEFAULT_MAX_BATCH))
    profile = batch_profile(ctx.io, max_batch)
    if profile is None:
        details["optimization_profile"] = None
    else:
        details["optimization_profile"] = dict(zip(("min", "opt", "max"), profile, strict=True))
    cache_option = options.get("timing_cache")
    command = trtexec_command(
        MODEL_FILE,
        PLAN_FILE,
        ctx.io,
        workspace_gb=float(options.get("workspace_gb", 8.0)),
        optimization_level=int(options.get("optimization_level", 3)),
        timing_cache=cache_option or TIMING_CACHE_FILE,
        version_compatible=bool(options.get("version_compatible", False)),
        hardware_compatible=bool(options.get("hardware_compatible", False)),
        max_batch=max_batch,
    )
    details["trtexec"] = command
    details["trtexec_note"] = "run in the artifact directory on the target machine (the plan is specific to it)"
    if not build:
        if options.get("rtx_check", True):
            from sharp_export.converters.tensorrt_rtx.build import rtx_check

            capability, why = rtx_check_capability(release, precision)
            details["tensorrt_rtx_check"] = rtx_check(
                onnx_path,
                ctx.io,
                capability=capability,
                why=why,
                batch_shapes=profile,
                resolution=int(ctx.io.inputs[0].shape[-1]),
            )
        else:
            details["tensorrt_rtx_check"] = {"status": "not run", "reason": "--no-rtx-check"}
        echo(f"    --no-build: build the plan on the target machine with:\n      {command}")
        details["engine"] = None
        return ConvertResult(main_file=MODEL_FILE, details=details)
    from sharp_export.converters.tensorrt.build import build_engine

    timing_cache = Path(cache_option) if cache_option else ctx.workdir / TIMING_CACHE_FILE
    details["tensorrt"] = build_engine(
        onnx_path,
        ctx.workdir / PLAN_FILE,
        workspace_gb=float(options.get("workspace_gb", 8.0)),
        timing_cache=timing_cache,
        batch_shapes=profile,
        resolution=int(ctx.io.inputs[0].shape[-1]),
        optimization_level=int(options.get("optimization_level", 3)),
        version_compatible=bool(options.get("version_compatible", False)),
        hardware_compatible=bool(options.get("hardware_compatible", False)),
    )
    if not options.get("keep_onnx", False):
        shutil.rmtree(onnx_dir)
    return ConvertResult(main_file=PLAN_FILE, details=details)


def parity_hook(ctx: ParityContext) -> dict[str, Any] | None:
    """None (run the artifact: the plan in TensorRT, the ONNX in ONNX Runtime), except a bf16 ONNX."""
    if is_plan_artifact(ctx.manifest) or ctx.manifest.precision != "bf16":
        return None
    checks = ctx.manifest.conversion.get("tensorrt_ready", {})
    echo(f"    bf16 ONNX: structural checks passed ({checks.get('casts', '?')} casts); {BF16_PARITY_NOTE}")
    return {"status": "deferred", "reason": BF16_PARITY_NOTE, "structural_checks": "passed", "batch": ctx.example.batch}


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cuda") -> Runner:
    """The plan in TensorRT (CUDA), or a --no-build ONNX in ONNX Runtime (any device it has)."""
    if not is_plan_artifact(manifest):
        if manifest.precision == "bf16":
            raise UserInputError(
                "this is a bf16 TensorRT-ready ONNX without a plan; ONNX Runtime cannot run bf16 on the CPU",
                path=artifact_dir,
                fix=f"build the plan on a GPU: {manifest.conversion.get('trtexec', 'sharp-export tensorrt ...')}",
            )
        from sharp_export.runtime.onnxruntime_runner import open_onnx_artifact

        return open_onnx_artifact(artifact_dir, manifest, device)
    if device != "cuda":
        raise UserInputError("a TensorRT plan runs on CUDA GPUs only", path=artifact_dir, fix="pass --device cuda")
    from sharp_export.runtime.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(Path(artifact_dir) / manifest.main_file, manifest, device)


# Engines: TF32 fp32; fp16 / bf16 rows are the generic provisional ones (no TensorRT engine has run: no GPU here);
# int8's and fp8's rows are measured on the TensorRT-ready ONNX in ONNX Runtime. The --no-build ONNX is gated by
# the same rows when it runs in ONNX Runtime. tensorrt-rtx uses the same rows.
ENGINE_TOLERANCE_PROFILES = {
    "fp32": "fp32-tf32",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8-tensorrt",
    "fp8": "fp8-tensorrt",
}

TENSORRT_TARGET = Target(
    name="tensorrt",
    suffix=".plan",
    extra="tensorrt",
    description="TensorRT engine (NVIDIA GPUs; the plan is specific to the GPU and TensorRT version)",
    precisions=("fp32", "fp16", "bf16", "int8", "fp8"),
    supports_dynamic_batch=True,
    supports_calibration=True,
    devices=("cuda", "cpu"),  # cpu: the --no-build ONNX in ONNX Runtime
    options=(
        OPSET_OPTION,
        TargetOption(
            "build",
            bool,
            True,
            "build the plan here (needs TensorRT and a GPU); --no-build writes the TensorRT-ready ONNX, the "
            "manifest and the trtexec line for the target machine, and checks the ONNX in ONNX Runtime "
            "(default --device cpu)",
        ),
        TargetOption(
            "trt_compat",
            str,
            DEFAULT_RELEASE,
            "TensorRT release the ONNX must parse on: 11 (servers) or 10.3 (JetPack 6, Jetson Orin)",
            choices=tuple(TENSORRT_RELEASES),
        ),
        TargetOption("workspace_gb", float, 8.0, "builder workspace memory pool limit in GB"),
        TargetOption("timing_cache", str, "", "timing cache file to reuse and update (default: inside the artifact)"),
        TargetOption("optimization_level", int, 3, "builder optimisation level 0..5 (higher: slower build)"),
        TargetOption(
            "version_compatible", bool, False, "plan runs on later TensorRT versions too (lean runtime inside)"
        ),
        TargetOption("hardware_compatible", bool, False, "plan runs on any Ampere+ discrete GPU (may be slower)"),
        MAX_BATCH_OPTION,
        CALIB_SIZE_OPTION,
        CALIB_RUNTIME_OPTION,
        TargetOption(
            "quantizer",
            str,
            "ort",
            "who places the int8 / fp8 Q/DQ: ort (ONNX Runtime's quantizer with TensorRT's rules) or modelopt "
            f"(NVIDIA ModelOpt ONNX PTQ, {MODELOPT_INSTALL_HINT})",
            choices=QUANTIZERS,
        ),
        TargetOption("keep_onnx", bool, False, "keep the TensorRT-ready ONNX in the built artifact (onnx/)"),
        TargetOption(
            "rtx_check",
            bool,
            True,
            "with --no-build, where TensorRT-RTX is installed: parse and build the ONNX with it for the closest RTX "
            "compute capability as a check (recorded as a TensorRT-RTX build; the engine is discarded)",
        ),
    ),
    check_environment=check_environment,
    check_export_environment=check_export_environment,
    check_runner_environment=check_runner_environment,
    default_device=default_device,
    convert=convert,
    open_runner=open_runner,
    parity_hook=parity_hook,
    tolerance_profiles=ENGINE_TOLERANCE_PROFILES,
    validate=validate,
)
