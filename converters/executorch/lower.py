"""Programs -> ``.pte`` + ``.ptd``: PT2E int8 (optional), the capture rewrites, XNNPACK lowering, serialization.

One stage at a time (``stages.py``): export, lower, write, free, so that at most one stage's lowered copy of the
weights is alive beside the torch model. Each program's weights go to a ``.ptd`` beside its ``.pte`` (ExecuTorch's
named data: the XNNPACK delegate's constants are tagged with the program's name, and so are the few constants the
portable ops keep, the norms' scales), so the ``.pte`` holds only the graph and stays far below the flatbuffer's
2 GB limit.

int8 (:func:`quantize_stages`): PT2E with the XNNPACK quantizer's dynamic configuration, on the nodes
``capture.int8_quantizes`` selects (the two ViTs' patch embeddings and linear layers): weights int8 symmetric per
output channel, activations int8 with a scale computed from each tensor as the program runs. The graph says "per
tensor"; XNNPACK, which has no per-tensor dynamic mode, quantizes each token's row on its own (each image for the
patch-embedding convolution: ``backends/xnnpack/operators/node_visitor.py`` in ExecuTorch 1.5.1). The layers'
outputs stay fp32. No calibration photos: the static configuration (per-tensor activation ranges from a
HistogramObserver over calibration photos, outputs requantized to int8) failed the int8 rows on the full preset's
live-disparity weights (depth p99 0.034 against 0.015), where this one passes (0.011;
docs/full-size-precision.md, section 0).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sharp_export.contract import ExampleInputs
from sharp_export.converters.executorch.capture import (
    INT8_FLOAT_MODULES,
    INT8_OP_TARGETS,
    INT8_PATTERNS,
    INT8_QUANTIZED_MODULES,
    delegate_count,
    export_graph,
    int8_quantizes,
    not_delegated,
    rewrite,
)
from sharp_export.converters.executorch.stages import Stage, eager_functions, run_chain
from sharp_export.errors import ConversionError
from sharp_export.progress import echo, heartbeat, rss_gb

PTE_SUFFIX = ".pte"
PTD_SUFFIX = ".ptd"


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ExecuTorch logs one INFO line per weight on the root logger, which the CLI sets to INFO: hold it at WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def stage_examples(
    model: nn.Module,
    stages: tuple[Stage, ...],
    example: ExampleInputs,
) -> tuple[dict[str, tuple[torch.Tensor, ...]], int]:
    """Each stage's example inputs (the chunked stage's first patch batch) and the patch batch.

    Shapes come from the chain run on fake tensors (no full-size compute: at full size the eager chain is a
    minute and a half); the model's own inputs are the real example, the tensors between stages empty ones of their
    shape (torch.export reads only shapes and dtypes).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes: dict[str, list[tuple[int, ...]]] = {}
    chunk = 0

    def keep(stage: Stage, inputs: list[torch.Tensor]) -> None:
        nonlocal chunk
        shapes[stage.name] = [tuple(int(d) for d in t.shape) for t in inputs]
        if stage.chunked:
            chunk = int(inputs[0].shape[0])

    real = {"image": example.image, "disparity_factor": example.disparity_factor}
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = {name: torch.empty(value.shape) for name, value in real.items()}
        run_chain(stages, eager_functions(model, stages), fake["image"], fake["disparity_factor"], on_stage=keep)
    # Untouched memory: torch.empty's pages of a large tensor become resident only when written, and nothing reads
    # these. Zeros held 2.1 GB at full size (the encodings twice, for the depth decoder and the Gaussians stage)
    # through the first stages' lowering, where the fp32 export peaked.
    examples = {
        stage.name: tuple(
            real[name].contiguous() if name in real else torch.empty(shape)
            for name, shape in zip(stage.inputs, shapes[stage.name], strict=True)
        )
        for stage in stages
    }
    return examples, chunk


def observe_weights(prepared: torch.fx.GraphModule) -> int:
    """Feed each weight observer its weight; returns how many were fed.

    PT2E's observers record only what flows through them when the prepared graph runs. With dynamic activations
    nothing needs to run, so the weights are shown to their observers directly: a per-channel observer that has seen
    nothing yields one scale for the whole tensor, which convert_pt2e refuses ("Invalid size of per channel
    quantization scales").
    """
    fed = 0
    for node in prepared.graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            weight = prepared
            for part in str(source.target).split("."):
                weight = getattr(weight, part)
            getattr(prepared, str(node.target))(weight)
            fed += 1
    return fed


def quantize_stages(
    model: nn.Module,
    stages: tuple[Stage, ...],
    examples: dict[str, tuple[torch.Tensor, ...]],
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """PT2E int8 of every stage (module docstring). Returns the converted modules and the manifest's details."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class LayersOnly(XNNPACKQuantizer):
        # The quantizer's own pattern list also annotates every add, mul and cat, and its cat annotator ignores the
        # filter: the tail's and the tile merging's concatenations came out int8, and a quantized cat of the
        # Gaussian heads made XNNPACK fail at run time (xnn_status_invalid_parameter). Only the layers are kept.
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if p.name in INT8_PATTERNS]

    quantizer = LayersOnly()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    quantizer.set_filter_function(int8_quantizes)
    functions = eager_functions(model, stages)
    converted: dict[str, nn.Module] = {}
    start = time.perf_counter()
    for stage in stages:
        prepared = prepare_pt2e(export_graph(functions[stage.name], examples[stage.name]).module(), quantizer)
        observe_weights(prepared)
        converted[stage.name] = convert_pt2e(prepared)
        del prepared
        gc.collect()
    quantize_s = time.perf_counter() - start
    quantized = {
        name: sum(1 for n in module.graph.nodes if "dequantize_per_channel" in str(n.target))
        for name, module in converted.items()
    }
    if sum(quantized.values()) == 0:  # never ship an fp32 program labelled int8
        raise ConversionError("PT2E quantized no convolution or linear layer; refusing to write an int8 artifact")
    echo(f"    int8: {sum(quantized.values())} layers quantized in {quantize_s:.1f} s, RSS {rss_gb():.1f} GB")
    details = {
        "quantizer": "PT2E (torchao prepare_pt2e/convert_pt2e) with the XNNPACK quantizer's dynamic configuration: "
        "weights int8 symmetric per output channel; activations int8, their scales computed as the program runs "
        "(per token in XNNPACK); the layers' outputs fp32",
        "activations": "dynamic",
        "calibration": None,
        "quantized_ops": [str(t) for t in INT8_OP_TARGETS],
        "quantized_modules": list(INT8_QUANTIZED_MODULES),
        "float_modules": list(INT8_FLOAT_MODULES),
        "float_rule": "only conv / linear layers inside quantized_modules (the encoder's two ViTs) are int8; the "
        "decoders, heads, tail, attention matmuls, norms and element-wise ops stay fp32",
        "quantized_layers": quantized,
        "quantize_seconds": round(quantize_s, 2),
    }
    return converted, details


def forget_lowered_graphs() -> None:
    """Let the lowered graphs go. Process-wide caches keep every lowered program alive and, through it, its
    delegate's packed weights and the torch model's own weights, up to and through the parity check:

    * ExecuTorch 1.5.1's unbounded lru_cache on ``exir.backend.utils.is_same_node`` (keyed on fx nodes);
    * torch's fake-tensor dispatch cache (keys holding the lowered modules);
    * int8: the device caches of torchao and torch.ao (``assert_and_get_unique_device``, unbounded, keyed on every
      module that prepare_pt2e / convert_pt2e saw).

    Found on the tiny preset (weak references; gc referrers of the parameters still alive when the check began: all
    5.98 MB of them for int8 before the device caches were cleared, 1.25 MB after, the last stage's, which its
    caller still holds). Called after each stage is written. Full preset: docs/benchmarks.md, "Exports: time and
    memory"."""
    from executorch.exir.backend.utils import is_same_node
    from torch._subclasses.fake_tensor import FakeTensorMode

    is_same_node.cache_clear()
    FakeTensorMode.cache_clear()
    # Private functions: a version without them has nothing to clear.
    with contextlib.suppress(ImportError, AttributeError):
        from torchao.utils import _assert_and_get_unique_device

        _assert_and_get_unique_device.cache_clear()
    with contextlib.suppress(ImportError, AttributeError):
        from torch.ao.quantization.fx.utils import assert_and_get_unique_device

        assert_and_get_unique_device.cache_clear()


def tag_weights(program: torch.export.ExportedProgram, tag: str) -> int:
    """Tag every parameter / buffer / constant input, so the delegate writes it to ``<tag>.ptd``."""
    signature = program.graph_signature
    names = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    tagged = 0
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = tag
            tagged += 1
    return tagged


# no_grad: ExecuTorch's passes (to_edge's and to_executorch's) re-run the graph on the weights, parameters that require
# grad, and the GroupNorm rewrite's batch norm refuses statistics computed from them with grad on.
@torch.no_grad()
def lower_stage(
    module: nn.Module,
    examples: tuple[torch.Tensor, ...],
    name: str,
    workdir: Path,
) -> dict[str, Any]:
    """Export, rewrite, lower to XNNPACK and write ``<name>.pte`` + ``<name>.ptd``. Returns the stage's details."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    start = time.perf_counter()
    program, rewrites = rewrite(export_graph(module, examples))
    export_s = time.perf_counter() - start
    tag_weights(program, name)
    start = time.perf_counter()
    with heartbeat(f"{name}: XNNPACK lowering"), quiet_root_logger():
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    del program
    lower_s = time.perf_counter() - start
    lowered = edge.exported_program()
    left_out, delegates = not_delegated(lowered), delegate_count(lowered)
    start = time.perf_counter()
    with heartbeat(f"{name}: serialization"), quiet_root_logger():
        # Inputs not planned: the program reads the caller's tensors where they are instead of copying them into its
        # arena. Full-size Gaussians program alone: 6.83 -> 6.51 GB peak, outputs bit-identical.
        config = ExecutorchBackendConfig(
            external_constants=lambda _node: name, memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)
        )
        executorch_program = edge.to_executorch(config)
        del edge, lowered
        with open(workdir / f"{name}{PTE_SUFFIX}", "wb") as handle:
            executorch_program.write_to_file(handle)
        executorch_program.write_tensor_data_to_file(str(workdir))
    del executorch_program
    forget_lowered_graphs()
    gc.collect()
    save_s = time.perf_counter() - start
    data = workdir / f"{name}{PTD_SUFFIX}"  # absent when the program has no constants (the tiles stage)
    files = {p.name: p.stat().st_size for p in (workdir / f"{name}{PTE_SUFFIX}", data) if p.exists()}
    extra = sorted(p.name for p in workdir.glob(f"*{PTD_SUFFIX}") if not (workdir / f"{p.stem}{PTE_SUFFIX}").exists())
    if extra:  # a constant the tag missed went to ExecuTorch's default data file
        raise ConversionError(f"ExecuTorch wrote unexpected data files {extra}; the weights must be in {name}.ptd")
    echo(f"    {name}: {delegates} XNNPACK delegates, {sum(left_out.values())} portable ops, "
         f"{files.get(data.name, 0) / 1e6:.1f} MB weights; export {export_s:.1f} s, lower {lower_s:.1f} s, "
         f"write {save_s:.1f} s, RSS {rss_gb():.1f} GB")  # fmt: skip
    return {
        "name": name,
        "program": f"{name}{PTE_SUFFIX}",
        "data": data.name if data.exists() else None,
        "bytes": files,
        "xnnpack_delegates": delegates,
        "not_delegated": left_out,
        "rewrites": rewrites,
        "export_seconds": round(export_s, 2),
        "lower_seconds": round(lower_s, 2),
        "write_seconds": round(save_s, 2),
    }


def write_programs(
    model: nn.Module,
    example: ExampleInputs,
    stages: tuple[Stage, ...],
    workdir: Path,
    int8: bool,
) -> dict[str, Any]:
    """Every stage's program into ``workdir``; returns the manifest's ``conversion`` details."""
    examples, chunk = stage_examples(model, stages, example)
    int8_details = None
    functions: dict[str, nn.Module] = eager_functions(model, stages)
    if int8:
        functions, int8_details = quantize_stages(model, stages, examples)
    programs = []
    for stage in stages:
        details = lower_stage(functions.pop(stage.name), examples.pop(stage.name), stage.name, workdir)
        details.update(inputs=list(stage.inputs), outputs=list(stage.outputs))
        if stage.chunked:
            details["patch_batch"] = chunk
        programs.append(details)
        gc.collect()
    left_out: dict[str, int] = {}
    for details in programs:
        for op, count in details["not_delegated"].items():
            left_out[op] = left_out.get(op, 0) + count
    result: dict[str, Any] = {
        "programs": programs,
        "not_delegated": dict(sorted(left_out.items(), key=lambda item: -item[1])),
        "xnnpack_delegates": sum(p["xnnpack_delegates"] for p in programs),
    }
    if chunk:
        result["patch_batch"] = chunk
    if int8_details is not None:
        result["int8"] = int8_details
    return result
