"""The ONNX target: the raw predictor through ``torch.onnx.export(dynamo=True)``, run by ONNX Runtime.

Hazards handled here (spec section 10):

* Size: fp32 SHARP weighs 2.6 GB in ONNX, over protobuf's 2 GB limit, so the full preset always uses
  external data, in ONE file beside the model (``model.onnx`` + ``model.onnx.data``); both are hashed.
* Opset: asking the dynamo exporter for opset 17 may silently return an opset-18 model (its version
  converter fails on the full model). The declared opset is read back after saving and must equal the
  request, else ConversionError naming both numbers.
* Dynamic batch: exported with an example batch of 2 (torch.export specialises a size-1 dimension) and
  ``Dim("batch")`` on both inputs; a specialisation error is reported with torch's guard text.
* No silent fallback: if the dynamo exporter fails, the export fails (the legacy TorchScript exporter
  writes a different graph with 390 loose weight files and is deprecated).
"""

from __future__ import annotations

import gc
import importlib.util
import time
from pathlib import Path
from typing import Any

import torch

from sharp_export.errors import ConversionError, UserInputError
from sharp_export.progress import echo, rss_gb
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS
from sharp_export.targets import Target, TargetOption, missing_packages, register_target

MODEL_FILE = "model.onnx"
DEFAULT_OPSET = 18  # the lowest opset torch's dynamo exporter implements natively
MIN_OPSET, MAX_OPSET = 7, 30  # plausible ONNX opsets; the exporter itself decides which it supports
MAX_DYNAMIC_BATCH = 64
INPUT_NAMES = ("image", "disparity_factor")
EXTERNAL_DATA_ABOVE_BYTES = 1 << 30  # "auto": external weights from 1 GB on (the full preset: 2.6 GB)


def check_environment() -> str | None:
    reason = missing_packages({"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"})
    if reason is None:
        return None
    return f"{reason}: pip install 'sharp-export[onnx]'"


class RawOutputs(torch.nn.Module):
    """Returns the five Gaussian attributes as a plain tuple so each gets its ONNX output name."""

    def __init__(self, predictor: torch.nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R]
        disparity_factor: torch.Tensor,  # [B]
    ) -> tuple[torch.Tensor, ...]:
        return tuple(self.predictor(image, disparity_factor))


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def use_external_data(choice: str, model: torch.nn.Module) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return weight_bytes(model) >= EXTERNAL_DATA_ABOVE_BYTES


def declared_opset(model_path: Path) -> int:
    """The default-domain opset the saved model declares (reads the graph only, not the weights)."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if len(versions) != 1:
        raise ConversionError(f"expected one default-domain opset import, found {versions}", path=model_path)
    return int(versions[0])


def _dims(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in dims)


def check_graph_io(model_path: Path, io: Any) -> None:
    """The saved graph's inputs/outputs must have the spec's names, order and static dimensions."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    for kind, found, wanted in (("input", graph.input, io.inputs), ("output", graph.output, io.outputs)):
        names = [v.name for v in found]
        if names != [t.name for t in wanted]:
            raise ConversionError(f"graph {kind}s are {names}, expected {[t.name for t in wanted]}", path=model_path)
        for value, spec in zip(found, wanted, strict=True):
            dims = _dims(value)
            ok = len(dims) == len(spec.shape) and all(
                isinstance(want, str) or want == got for want, got in zip(spec.shape, dims, strict=True)
            )
            batch_ok = not isinstance(spec.shape[0], str) or isinstance(dims[0], str)
            if not (ok and batch_ok):
                raise ConversionError(
                    f"graph {kind} '{spec.name}' has shape {dims}, expected {tuple(spec.shape)}"
                    + (" (batch was specialised to a constant)" if not batch_ok else ""),
                    path=model_path,
                )


def export_onnx(
    model: torch.nn.Module,
    example: Any,  # ExampleInputs: image [B, 3, R, R], disparity_factor [B]
    io: Any,  # IOSpec the graph must expose
    out_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    external_data: bool = True,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` (+ ``model.onnx.data``), verify opset and I/O; returns details."""
    import onnx

    path = Path(out_dir) / MODEL_FILE
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
        dynamic_shapes = {"image": {0: batch}, "disparity_factor": {0: batch}}
    wrapper = RawOutputs(model).eval()
    start = time.perf_counter()
    try:
        # torch.onnx prints its own progress to stdout; the export log captures it via capture_log().
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (example.image, example.disparity_factor),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(GAUSSIAN_FIELDS),
                dynamic_shapes=dynamic_shapes,
                external_data=external_data,
            )
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        hint = "the model specialised the batch dimension (see export.log for torch's guard)" if dynamic_batch else None
        raise ConversionError(
            f"torch.onnx.export (dynamo) failed: {type(error).__name__}: {first}", fix=hint
        ) from error
    export_s = time.perf_counter() - start
    echo(f"    torch.onnx.export (dynamo, opset {opset}) {export_s:.1f} s, RSS {rss_gb():.1f} GB")
    program.model.metadata_props.update(metadata or {})
    start = time.perf_counter()
    program.save(str(path), external_data=external_data)
    save_s = time.perf_counter() - start
    del program
    gc.collect()
    echo(f"    saved {MODEL_FILE}{' + external data' if external_data else ''} in {save_s:.1f} s")

    found = declared_opset(path)
    if found != opset:
        raise ConversionError(
            f"requested ONNX opset {opset} but the exported model declares opset {found} "
            "(the exporter's version conversion failed)",
            path=path,
            fix=f"use --opset {found}",
        )
    written = sorted(p.name for p in Path(out_dir).iterdir() if p.name.startswith("model"))
    expected = sorted([MODEL_FILE] + ([MODEL_FILE + ".data"] if external_data else []))
    if written != expected:
        raise ConversionError(f"exporter wrote {written}, expected exactly {expected}", path=out_dir)
    check_graph_io(path, io)
    start = time.perf_counter()
    try:
        onnx.checker.check_model(str(path))  # by path: works with external data and > 2 GB
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0][:300]
        raise ConversionError(f"the exported model is not valid ONNX: {first}", path=path) from error
    check_s = time.perf_counter() - start
    echo(f"    onnx.checker passed in {check_s:.1f} s")
    return {
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "opset": found,
        "external_data": external_data,
        "export_seconds": round(export_s, 2),
        "save_seconds": round(save_s, 2),
        "check_seconds": round(check_s, 2),
        "files": expected,
    }


def validate(request: Any) -> None:
    opset = int(request.options.get("opset", DEFAULT_OPSET))
    if opset < MIN_OPSET or opset > MAX_OPSET:
        raise UserInputError(f"--opset {opset} is not a valid ONNX opset", fix=f"use --opset {DEFAULT_OPSET}")
    if opset < DEFAULT_OPSET:
        # Measured with torch 2.13: below 18 the exporter down-converts after the fact. On the full model that
        # fails and the file keeps opset 18; on the tiny model it writes an invalid graph (Split with the
        # opset-18 attribute num_outputs). Neither is an opset-17 model, so refuse before any work.
        raise UserInputError(
            f"--opset {opset} is not supported: torch's dynamo exporter writes opset 18 or newer, and its "
            "down-conversion produces invalid or mislabelled models for SHARP",
            fix=f"use --opset {DEFAULT_OPSET} or newer (every current ONNX Runtime and TensorRT 10 read it)",
        )
    if request.device == "cuda" and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UserInputError(
                "--device cuda: this onnxruntime has no CUDAExecutionProvider to run the parity check on",
                fix="pip install onnxruntime-gpu, or use --device cpu",
            )
    if request.options.get("external_data") == "never" and request.preset == "sharp":
        raise UserInputError(
            "--external-data never cannot work for the full preset: 2.6 GB of weights exceed protobuf's 2 GB limit",
            fix="use --external-data auto (or always)",
        )


def convert(ctx: Any) -> Any:
    """The onnx target's convert(ConvertContext) -> ConvertResult."""
    from sharp_export.export import ConvertResult

    options = ctx.request.options
    external = use_external_data(options.get("external_data", "auto"), ctx.model)
    details = export_onnx(
        ctx.model,
        ctx.example,
        ctx.io,
        ctx.workdir,
        opset=int(options.get("opset", DEFAULT_OPSET)),
        dynamic_batch=ctx.request.dynamic_batch,
        external_data=external,
        metadata=ctx.metadata,
    )
    return ConvertResult(main_file=MODEL_FILE, details=details)


def open_runner(artifact_dir: Path, manifest: Any, device: str = "cpu") -> Any:
    from sharp_export.runtime.onnxruntime_runner import open_onnx_artifact

    return open_onnx_artifact(artifact_dir, manifest, device)


ONNX_TARGET = register_target(
    Target(
        name="onnx",
        suffix=".onnx",
        extra="onnx",
        description="ONNX (dynamo exporter) for ONNX Runtime on CPU or CUDA",
        precisions=("fp32",),
        supports_dynamic_batch=True,
        devices=("cpu", "cuda"),
        options=(
            TargetOption("opset", int, DEFAULT_OPSET, "ONNX opset; the declared opset is verified after export"),
            TargetOption(
                "external_data",
                str,
                "auto",
                "weights in model.onnx.data: auto = from 1 GB of weights on (always for the full preset)",
                choices=("auto", "always", "never"),
            ),
        ),
        check_environment=check_environment,
        convert=convert,
        open_runner=open_runner,
        validate=validate,
    )
)
