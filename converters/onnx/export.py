"""Torch side of every ONNX-based target: the dynamo export and the checks of the written file (opset, files, I/O).

The onnx, openvino and tensorrt targets all start from this ``export_onnx`` (through ``precision.py``).
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sharp_export.converters.onnx.graph import (
    INPUT_NAMES,
    MAX_DYNAMIC_BATCH,
    MODEL_FILE,
    check_graph_io,
    declared_opset,
)
from sharp_export.errors import TOOLCHAIN_OUTPUT_HINT, ConversionError
from sharp_export.progress import echo, rss_gb
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS

if TYPE_CHECKING:
    from sharp_export.artifact import IOSpec
    from sharp_export.contract import ExampleInputs

EXTERNAL_DATA_ABOVE_BYTES = 1 << 30  # "auto": external weights from 1 GB on (the full preset: 2.6 GB)


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


def _forget_rewriter_matches() -> None:
    """Make onnxscript's rewrite rules let go of the exported graph.

    The exporter's optimiser runs rewrite rules that live at module level, and each rule's matcher keeps the last
    graph it matched (onnxscript 0.7.2: ``SimplePatternMatcher._graph`` / ``_match``), and through it every weight of
    the model: after the export the whole torch model stayed resident (full preset: 3.6 GB of RSS through the
    calibration and conversion that follow, though nothing of ours used it). Resetting the matchers' state frees it.
    """
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to reset
        return
    for candidate in gc.get_objects():
        if isinstance(candidate, SimplePatternMatcher):
            with contextlib.suppress(AttributeError):
                candidate._init_match(0)  # a fresh, empty match: forgets the matched nodes
                candidate._graph = None
                candidate._tracer = None


def export_onnx(
    model: torch.nn.Module,
    example: ExampleInputs,  # image [B, 3, R, R], disparity_factor [B]
    io: IOSpec,  # the graph's I/O
    out_dir: Path,
    *,
    opset: int,
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
        hint = "the model specialised the batch dimension; " + TOOLCHAIN_OUTPUT_HINT if dynamic_batch else None
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
    _forget_rewriter_matches()
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
