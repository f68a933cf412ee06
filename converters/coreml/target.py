"""The coreml target row: an mlprogram (.mlpackage) for Macs and iPhones, fp32 or fp16 for the Neural Engine.

This module is what the registry imports: it holds the row and thin functions that import the toolchain
(coremltools, torch) only when called, so `sharp-export --help` stays instant. The work is in the files
beside it: choices.py (option values and file names, shared with the converter), capture.py (torch.export +
region tags), mil_overrides.py / mil_checks.py (coremltools side), convert.py (one package or the component
split of split.py), fp16_proxy.py (the fp16 plan in torch), io.py, weights.py (--weights compression of the
package and the same compression of the torch weights for the proxy).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.contract import (
    ConvertContext,
    ConvertResult,
    ExampleInputs,
    ExportRequest,
    ParityContext,
    ProxyOutputs,
)
from sharp_export.converters.coreml.choices import (
    COMPUTE_UNIT_NAMES,
    DEPLOYMENT_TARGETS,
    SPLITS,
    WEIGHT_MODES,
)
from sharp_export.errors import UserInputError
from sharp_export.parity.tolerances import PROFILES
from sharp_export.progress import echo
from sharp_export.targets import Target, TargetOption, missing_packages

if TYPE_CHECKING:
    import torch

    from sharp_export.artifact import Manifest
    from sharp_export.runtime.coreml_runner import CoreMLRunner

REFERENCE_FILE = "reference_outputs.npz"
# Parity tolerance rows of a weight-compressed package (sharp_export/parity/tolerances.py), for fp32 and fp16
# alike: the compression error dominates the fp16 rounding. The proxy names its profile (ProxyOutputs).
WEIGHT_TOLERANCE_PROFILES = {"int8": "coreml-w8", "palettize6": "coreml-pal6", "palettize4": "coreml-pal4"}
# Written into a compressed artifact: the rows above as a `parity --tolerances` file for the check on a Mac.
TOLERANCES_FILE = "tolerances.json"


def check_environment() -> str | None:
    reason = missing_packages({"coremltools": "coremltools"})
    if reason is not None:
        return f"{reason}: pip install 'sharp-export[coreml]'"
    return None


def validate(request: ExportRequest) -> None:
    options = request.options
    if options.get("compute_units") == "cpu_and_ne" and request.precision == "fp32":
        raise UserInputError(
            "--compute-units cpu_and_ne with fp32: the Neural Engine computes only fp16, so nothing would run on it",
            fix="add --fp16 (or --precision fp16), or use --compute-units all|cpu_and_gpu|cpu_only",
        )


def proxy(model: torch.nn.Module, example: ExampleInputs, request: ExportRequest) -> ProxyOutputs | None:
    """fp16 and/or --weights: the predictor run in torch as the package computes (Core ML cannot predict off
    macOS): the converter's fp16 plan, with the package's expanded weights when they are compressed.

    Runs after the conversion and rounds / compresses ``model`` in place (run_export gives it up): one copy of the
    weights instead of two. Full preset, fp16 export with its check: 11.59 GB peak with a copy in NCHW, 9.93 GB in
    place, 7.28 GB in place, channels-last and rounded in chunks (fp16_proxy.py).
    """
    weights = request.options.get("weights", "none")
    if request.precision != "fp16" and weights == "none":
        return None  # fp32 Core ML is checked on a Mac only; there is no plan to simulate
    from sharp_export.converters.coreml.capture import DEFAULT_PINNED
    from sharp_export.converters.coreml.fp16_proxy import PROXY_LABEL, fp16_proxy_outputs

    details: dict[str, Any] = {"pinned_fp32": sorted(DEFAULT_PINNED) if request.precision == "fp16" else []}
    if request.options.get("split") == "components" and request.precision == "fp16":
        # fp16 per piece (fp16 activations between the pieces), with the uncompressed weights; before the whole
        # proxy below, which modifies the model.
        from sharp_export.converters.coreml.split import piece_proxy_errors

        details["pieces"] = piece_proxy_errors(model, example.image, example.disparity_factor)
        for name, line in details["pieces"].items():
            worst = max(line.items(), key=lambda item: item[1])
            echo(f"    fp16 PROXY piece {name}: worst relative error {worst[1]:.3g} ({worst[0]})")
    label, profile = PROXY_LABEL, None
    if weights == "none":
        gaussians = fp16_proxy_outputs(model, example.image, example.disparity_factor, DEFAULT_PINNED, consume=True)
    else:
        from sharp_export.converters.coreml.weights import WEIGHTS_PROXY_LABEL, weight_plan, weights_proxy_outputs

        plan = weight_plan(weights)
        assert plan is not None
        gaussians, report = weights_proxy_outputs(
            model, example.image, example.disparity_factor, plan, request.precision, consume=True
        )
        details["weights"] = {**plan.to_dict(), **report}
        label, profile = (
            WEIGHTS_PROXY_LABEL.format(mode=weights, precision=request.precision),
            WEIGHT_TOLERANCE_PROFILES[weights],
        )
        echo(f"    {weights} weights in torch: {report['compressed_tensors']} tensors compressed as the package's "
             f"({report['seconds']:.1f} s)")  # fmt: skip
    return ProxyOutputs(label, gaussians, details, tolerance_profile=profile)


def convert(ctx: ConvertContext) -> ConvertResult:
    from sharp_export.converters.coreml.convert import convert_model

    options = ctx.request.options
    result = convert_model(
        ctx.model,
        ctx.example.image,
        ctx.example.disparity_factor,
        ctx.workdir,
        precision=ctx.request.precision,
        deployment_target=options.get("deployment_target", "iOS17"),
        compute_units=options.get("compute_units", "all"),
        split=options.get("split", "none"),
        metadata=ctx.metadata,
        weights=options.get("weights", "none"),
    )
    profile = WEIGHT_TOLERANCE_PROFILES.get(options.get("weights", "none"))
    if profile is not None:
        _write_tolerance_file(Path(ctx.workdir) / TOLERANCES_FILE, profile)
        result.details["weights"]["tolerances_file"] = TOLERANCES_FILE
    return ConvertResult(main_file=result.files[0], details=result.details, io=result.io)


def _write_tolerance_file(path: Path, profile: str) -> None:
    """A `parity --tolerances` file holding every row of ``profile`` (value and statistic)."""
    import json

    rows = {metric: {"value": t.value, "statistic": t.statistic} for metric, t in PROFILES[profile].items()}
    path.write_text(json.dumps(rows, indent=2) + "\n")


def parity_hook(ctx: ParityContext) -> dict[str, Any] | None:
    """Stores the example input and torch outputs (``reference_outputs.npz``) so a Mac can check the very same
    numbers later; then None on macOS (run the package through its runner), else 'deferred'.
    """
    import numpy as np

    from sharp_export.reference.gaussians import GAUSSIAN_FIELDS

    example = ctx.example
    arrays = {"image": example.image.numpy(), "disparity_factor": example.disparity_factor.numpy()}
    arrays.update({name: value.numpy() for name, value in zip(GAUSSIAN_FIELDS, ctx.reference, strict=True)})
    np.savez(Path(ctx.artifact_dir) / REFERENCE_FILE, **arrays)
    if sys.platform == "darwin":
        return None
    check = "sharp-export parity ARTIFACT --golden ..."
    if ctx.manifest.options.get("weights", "none") != "none":
        check += f" --tolerances ARTIFACT/{TOLERANCES_FILE}"
    return {
        "status": "deferred",
        "reason": f"Core ML predicts only on macOS: run `{check}` on a Mac",
        "reference": REFERENCE_FILE,
    }


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> CoreMLRunner:
    from sharp_export.runtime.coreml_runner import open_coreml_artifact

    return open_coreml_artifact(artifact_dir, manifest, device)


COREML_TARGET = Target(
    name="coreml",
    suffix=".mlpackage",
    extra="coreml",
    description="Core ML mlprogram (.mlpackage) for macOS/iOS, fp16 for the Neural Engine",
    precisions=("fp32", "fp16"),
    devices=("cpu",),
    options=(
        TargetOption("deployment_target", str, "iOS17", "minimum OS the package targets", choices=DEPLOYMENT_TARGETS),
        TargetOption(
            "compute_units",
            str,
            "all",
            "Core ML compute units used when the package is run (stored in the manifest)",
            choices=COMPUTE_UNIT_NAMES,
        ),
        TargetOption(
            "split",
            str,
            "none",
            "components: three packages (patch ViT | monodepth | Gaussians), each < 1 GB",
            choices=SPLITS,
        ),
        TargetOption(
            "weights",
            str,
            "none",
            "weight compression: int8 (linear, per channel) or palettize4|palettize6 (k-means LUT)",
            choices=WEIGHT_MODES,
        ),
    ),
    check_environment=check_environment,
    convert=convert,
    open_runner=open_runner,
    validate=validate,
    tolerance_profiles={"fp32": "fp32-coreml"},
    parity_hook=parity_hook,
    proxy=proxy,
)
