"""The executorch target row: ``.pte`` programs for ExecuTorch, PyTorch's on-device runtime (Android, iOS, Linux).

torch.export -> (int8: PT2E with the XNNPACK quantizer, activations quantized as the program runs, so no calibration
photos) -> the XNNPACK partitioner
-> one ``.pte`` (the graph) and one ``.ptd`` (the weights) per program. ``--split stages`` writes one program per
stage (``stages.py``) so that an app can run them one after another and release each. The same XNNPACK kernels
run on Android and iOS CPUs; here their x86 build runs the programs, through ExecuTorch's Python runtime, for
parity and timing.

* **fp16 is not offered**: see ``FP16_NOTE``.
* Files beside this one: capture.py (torch.export, the rewrites that give XNNPACK the attention, the int8 region
  rules), stages.py (the stage wrappers and their chain), lower.py (PT2E, lowering, serialization). The runner is
  ``runtime/executorch_runner.py``.

This module is what the registry imports: ExecuTorch and torch are imported inside its functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sharp_export.contract import ConvertContext, ConvertResult
from sharp_export.targets import Target, TargetOption, missing_packages, package_version

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.executorch_runner import ExecuTorchRunner

EXECUTORCH_VERSION = "1.5.1"  # pinned: the .pte format and the XNNPACK lowering are tested with this one only
SPLIT_CHOICES = ("none", "stages")
FP16_NOTE = (
    "fp16 is not offered: ExecuTorch 1.5.1's XNNPACK partitioner takes fp16 convolutions and linear layers but lists "
    "only fp32 for softmax, GELU, exp, div and others (a toy conv + GELU + linear in fp16 left GELU to a portable "
    "kernel), so SHARP's attention softmax and MLP GELU would run as portable fp16 kernels; and on this x86 CPU fp16 "
    "ran slower than fp32 (docs/targets/executorch.md)"
)
SPLIT_OPTION = TargetOption(
    "split",
    str,
    "none",
    "stages: one program per stage (tiles, patch encoder per patch batch, image encoder, depth decoder, Gaussians), "
    "so an app can run and release them one after another",
    choices=SPLIT_CHOICES,
)


def check_environment() -> str | None:
    """Usable when executorch (exactly EXECUTORCH_VERSION) and torchao are installed; else the install line."""
    install = "pip install 'sharp-export[executorch]'"
    reason = missing_packages({"executorch": "executorch", "torchao": "torchao"})
    if reason is not None:
        return f"{reason}: {install}"
    version = package_version("executorch")
    if version != EXECUTORCH_VERSION:
        return f"executorch {version} is installed, this target needs executorch=={EXECUTORCH_VERSION}: {install}"
    return None


def convert(ctx: ConvertContext) -> ConvertResult:
    import executorch

    from sharp_export.converters.executorch.lower import write_programs
    from sharp_export.converters.executorch.stages import SPLITS

    request = ctx.request
    int8 = request.precision == "int8"
    split = str(request.options.get("split", "none"))
    details = write_programs(ctx.model, ctx.example, SPLITS[split], Path(ctx.workdir), int8)
    programs = details["programs"]
    details = {
        "exporter": f"torch.export -> ExecuTorch {getattr(executorch, '__version__', EXECUTORCH_VERSION)} "
        "(to_edge_transform_and_lower, XnnpackPartitioner)",
        "executorch": package_version("executorch"),
        "split": split,
        "weights": "int8 for the quantized layers, fp32 for the rest" if int8 else "fp32",
        "files": [name for p in programs for name in (p["program"], p["data"]) if name],
        **details,
    }
    return ConvertResult(main_file=programs[0]["program"], details=details)


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> ExecuTorchRunner:
    from sharp_export.runtime.executorch_runner import open_executorch_artifact

    return open_executorch_artifact(Path(artifact_dir), manifest.conversion, manifest.io, device)


EXECUTORCH_TARGET = Target(
    name="executorch",
    suffix=".pte",
    extra="executorch",
    description="ExecuTorch .pte programs with the XNNPACK delegate, for Android / iOS CPUs; fp32 / int8",
    precisions=("fp32", "int8"),
    runtime_quantized=("int8",),
    devices=("cpu",),
    options=(SPLIT_OPTION,),
    tolerance_profiles={"fp32": "fp32-executorch", "int8": "int8-executorch"},
    check_environment=check_environment,
    convert=convert,
    open_runner=open_runner,
)
