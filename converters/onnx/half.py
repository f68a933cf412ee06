"""fp16 / bf16 for the ONNX target: an explicit cast plan written with the onnx API, no extra dependency.

Network nodes compute in half precision and their weights are stored in it; kept nodes (the tail and the GroupNorm
statistics, ``InstanceNormalization``; regions from ``onnx_graph.node_regions``) stay fp32; a ``Cast`` is inserted
on every edge between the two. The graph inputs and outputs stay fp32, so the runner and the manifest's I/O spec
do not change. Why the tail stays fp32, measured on the tiny preset: see ``FP16_KEEP_NOTE``. The same plan in
bfloat16 (:func:`write_half`, opset raised to 22) serves the tensorrt and tensorrt-rtx targets' ``--precision bf16``;
a caller may keep further op types fp32 (``keep_fp32_ops``: tensorrt-rtx keeps ConvTranspose, which TensorRT-RTX
cannot build in bf16).

torch is not imported here; onnx only inside the functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.converters.onnx.graph import (
    REGION_GROUP_NORM,
    REGION_TAIL,
    node_regions,
    raise_opset,
    save_onnx,
)
from sharp_export.errors import ConversionError
from sharp_export.progress import echo, rss_gb

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0
HALF_TYPES = {"fp16": 10, "bf16": 16}  # onnx.TensorProto.FLOAT16 / BFLOAT16 (onnx is imported lazily)
BF16_MIN_OPSET = 22  # the first opset whose Conv, MatMul, ... accept tensor(bfloat16)

# Which regions stay fp32 under --precision fp16, and why (benchmarks/study_onnx_precision_tiny.py).
FP16_KEPT_REGIONS = (REGION_TAIL, REGION_GROUP_NORM)
FP16_KEEP_NOTE = (
    "tail kept fp32: depth = f/clamp(disparity, 1e-4) and the composer's reciprocals amplify fp16 rounding "
    "(tiny study: all-fp16 z rel err p99 1.9e-3 and colours 1.0e-3, tail fp32 6.3e-4 and 2.5e-5; "
    "benchmarks/results/onnx_precision_study_tiny.json); GroupNorm statistics (InstanceNormalization) kept fp32: "
    "at full size a group holds 9.4M values and fp16 squares overflow above |x - mean| ~ 256 (Core ML measurement, "
    "docs/architecture.md §10.6); cheap to keep"
)


# ---- fp16 --------------------------------------------------------------------------------------------------


@dataclass
class Fp16Report:
    kept_regions: tuple[str, ...]
    half: str = "fp16"  # or "bf16": the type network nodes compute in (field names say fp16 for both)
    nodes_fp16: int = 0
    nodes_fp32: int = 0
    kept_op_types: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    initializers_fp16: int = 0
    initializers_fp32: int = 0
    out_of_range_nodes: list[str] = field(default_factory=list)
    kept_nodes: list[str] = field(default_factory=list)
    kept_ops: dict[str, str] = field(default_factory=dict)  # op type kept fp32 everywhere -> why
    kept_op_nodes: int = 0  # nodes kept fp32 for their op type alone

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": f"explicit cast plan (onnx API): network nodes and their weights in {self.half}, kept regions "
            "fp32, a Cast on every edge between them, graph inputs and outputs fp32",
            "kept_fp32_regions": list(self.kept_regions),
            "kept_fp32_why": FP16_KEEP_NOTE,
            "nodes_fp16": self.nodes_fp16,
            "nodes_fp32": self.nodes_fp32,
            "kept_fp32_op_types": self.kept_op_types,
            "casts_inserted": self.casts_inserted,
            "initializers_fp16": self.initializers_fp16,
            "initializers_fp32": self.initializers_fp32,
            "kept_fp32_out_of_fp16_range": self.out_of_range_nodes,
            "kept_fp32_nodes": self.kept_nodes,
            "kept_fp32_ops": self.kept_ops,
            "kept_fp32_op_nodes": self.kept_op_nodes,
        }


def _schema(node: onnx.NodeProto, opset: int) -> Any:
    import onnx.defs

    if node.domain not in ("", "ai.onnx") or node.attribute and any(a.type == a.GRAPH for a in node.attribute):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None


def _formal(params: Sequence[Any], index: int) -> str | None:
    """type_str of the index-th actual argument (the last formal parameter may be variadic)."""
    if index < len(params):
        return params[index].type_str
    if params and params[-1].option.name == "Variadic":
        return params[-1].type_str
    return None


def _float_type_vars(node: onnx.NodeProto, schema: Any, dtypes: dict[str, int]) -> set[str]:
    """Type variables of the node's outputs that are bound to float32 (these become float16)."""
    import onnx

    output_vars = {_formal(schema.outputs, i) for i in range(len(node.output))}
    output_vars = {v for v in output_vars if v is not None and not v.startswith("tensor(")}
    bound: set[str] = set()
    for index, name in enumerate(node.input):
        var = _formal(schema.inputs, index)
        if name and var in output_vars and dtypes.get(name) == onnx.TensorProto.FLOAT:
            bound.add(var)
    for index, name in enumerate(node.output):
        var = _formal(schema.outputs, index)
        if name and var in output_vars and dtypes.get(name) == onnx.TensorProto.FLOAT:
            bound.add(var)
    if node.op_type == "Cast":
        to = next(a.i for a in node.attribute if a.name == "to")
        return {"T2"} if to == onnx.TensorProto.FLOAT else set()
    return bound


def _tensor_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    dtypes.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    dtypes.setdefault(node.output[0], attr.t.data_type)
    return dtypes


def _to_half_tensor(tensor: onnx.TensorProto, name: str, half: str = "fp16") -> onnx.TensorProto:
    """An fp32 tensor as fp16 or bf16 (round to nearest even; ml_dtypes comes with onnx)."""
    import numpy as np
    from onnx import numpy_helper

    if half == "bf16":
        import ml_dtypes

        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(ml_dtypes.bfloat16), name)
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name)


def _max_abs(tensor: onnx.TensorProto) -> float:
    import numpy as np
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor)
    return float(np.abs(values).max()) if values.size else 0.0


def convert_fp16(
    model: onnx.ModelProto,
    keep_regions: Iterable[str] = FP16_KEPT_REGIONS,
    *,
    half: str = "fp16",
    keep_fp32_ops: Mapping[str, str] | None = None,
) -> Fp16Report:
    """Rewrite ``model`` (loaded with its weights) to the fp16 plan, in place. Returns what was done.

    ``half="bf16"`` writes the same plan in bfloat16 (the tensorrt targets); ONNX allows bfloat16 Conv only from
    opset 22, so the caller converts the model's opset first (:func:`write_half`). ``keep_fp32_ops``: op types that
    stay fp32 wherever they are (op type -> why, recorded), with their weights and a Cast on each edge.
    """
    import onnx
    from onnx import helper

    if half not in HALF_TYPES:
        raise ConversionError(f"no half-precision plan for {half!r}; known: {', '.join(HALF_TYPES)}")
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    keep = tuple(keep_regions)
    regions = node_regions(graph)
    dtypes = _tensor_dtypes(model)
    initializers = {t.name: t for t in graph.initializer}
    kept_ops = dict(keep_fp32_ops or {})
    report = Fp16Report(kept_regions=keep, half=half, kept_ops=kept_ops)
    FLOAT, HALF = onnx.TensorProto.FLOAT, HALF_TYPES[half]
    # bf16 has fp32's exponent range: no weight is out of range.
    half_max = FP16_MAX if half == "fp16" else float("inf")

    # 1. Which nodes compute in fp16, and which type variables of each change.
    plan: dict[str, set[str]] = {}
    for node in graph.node:
        if regions[node.name] in keep:
            continue
        if node.op_type in kept_ops:
            report.kept_op_nodes += 1
            continue
        schema = _schema(node, opset)
        if schema is None:
            continue
        variables = _float_type_vars(node, schema, dtypes)
        if not variables:
            continue
        # A weight outside fp16's range would become inf: that node stays fp32 (reported).
        too_big = [
            name
            for index, name in enumerate(node.input)
            if name in initializers
            and _formal(schema.inputs, index) in variables
            and dtypes[name] == FLOAT
            and _max_abs(initializers[name]) > half_max
        ]
        if too_big:
            report.out_of_range_nodes.append(node.name)
            continue
        plan[node.name] = variables

    # 2. New dtypes of every tensor a converted node produces.
    new_dtypes = dict(dtypes)
    for node in graph.node:
        if node.name not in plan:
            continue
        schema = _schema(node, opset)
        for index, name in enumerate(node.output):
            if name and _formal(schema.outputs, index) in plan[node.name]:
                new_dtypes[name] = HALF

    # 3. Rewrite: convert weights and constants, insert casts where a consumer wants the other float type.
    casts: dict[tuple[str, int], str] = {}
    converted_initializers: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    fp16_initializer_users: set[str] = set()
    fp32_initializer_users: set[str] = set()

    def cast_to(name: str, dtype: int) -> str:
        key = (name, dtype)
        if key not in casts:
            suffix = half if dtype == HALF else "fp32"
            out = f"{name}__{suffix}"
            nodes.append(helper.make_node("Cast", [name], [out], name=f"cast_{suffix}__{name}", to=dtype))
            new_dtypes[out] = dtype
            casts[key] = out
            report.casts_inserted += 1
        return casts[key]

    for node in graph.node:
        schema = _schema(node, opset) if node.name in plan else None
        variables = plan.get(node.name, set())
        for index, name in enumerate(node.input):
            if not name or new_dtypes.get(name) not in (FLOAT, HALF):
                continue
            if node.op_type == "Cast":
                continue  # Cast reads any type
            wanted = HALF if schema is not None and _formal(schema.inputs, index) in variables else dtypes.get(name)
            if wanted not in (FLOAT, HALF) or new_dtypes[name] == wanted:
                if name in initializers and new_dtypes[name] == FLOAT:
                    fp32_initializer_users.add(name)
                continue
            if name in initializers and dtypes[name] == FLOAT and wanted == HALF:
                fp16_initializer_users.add(name)
                converted_initializers.setdefault(name, f"{name}__{half}")
                node.input[index] = converted_initializers[name]
            else:
                node.input[index] = cast_to(name, wanted)
        if node.name in plan:
            report.nodes_fp16 += 1
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to":
                        attr.i = HALF
            elif node.op_type in ("Constant", "ConstantOfShape"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type == FLOAT:
                        attr.t.CopyFrom(_to_half_tensor(attr.t, attr.t.name, half))
                    elif attr.name in ("value_float", "value_floats"):
                        raise ConversionError(f"fp16 plan: Constant {node.name} with {attr.name} is not handled")
        else:
            report.nodes_fp32 += 1
            if regions[node.name] in keep:
                report.kept_op_types[node.op_type] = report.kept_op_types.get(node.op_type, 0) + 1
                report.kept_nodes.append(node.name)
        nodes.append(node)

    # Weights: an initializer used only in fp16 is replaced by its fp16 copy; one used by both keeps both.
    kept = []
    for tensor in graph.initializer:
        name = tensor.name
        if name in converted_initializers:
            kept.append(_to_half_tensor(tensor, converted_initializers[name], half))
            new_dtypes[converted_initializers[name]] = HALF
            report.initializers_fp16 += 1
            if name in fp32_initializer_users:
                kept.append(tensor)
                report.initializers_fp32 += 1
        else:
            kept.append(tensor)
            if tensor.data_type == FLOAT:
                report.initializers_fp32 += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)

    # Graph outputs stay fp32: a converted producer writes "<name>__fp16" and a Cast restores the name.
    producers = {out: node for node in nodes for out in node.output}
    for value in graph.output:
        if new_dtypes.get(value.name) == HALF:
            producer = producers[value.name]
            renamed = f"{value.name}__{half}"
            producer.output[list(producer.output).index(value.name)] = renamed
            nodes.append(helper.make_node("Cast", [renamed], [value.name], name=f"cast_fp32__{value.name}", to=FLOAT))
            new_dtypes[renamed] = HALF
            new_dtypes[value.name] = FLOAT
            report.casts_inserted += 1
    del graph.node[:]
    graph.node.extend(nodes)

    # Value infos follow the new dtypes (shape inference is not rerun: shapes did not change).
    for value in graph.value_info:
        if value.name in new_dtypes and value.type.tensor_type.elem_type in (FLOAT, HALF):
            value.type.tensor_type.elem_type = new_dtypes[value.name]
    return report


def write_half(
    fp32_path: Path,
    out_path: Path,
    external_data: bool,
    half: str = "fp16",
    keep_fp32_ops: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The fp16 (or bf16) model at ``out_path`` from the fp32 model at ``fp32_path``; returns manifest details.

    ``keep_fp32_ops``: see :func:`convert_fp16`."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    start = time.perf_counter()
    model = onnx.load(str(fp32_path), load_external_data=False)
    opset = raise_opset(model, BF16_MIN_OPSET, "bf16") if half == "bf16" else None
    load_external_data_for_model(model, str(fp32_path.parent))
    report = convert_fp16(model, half=half, keep_fp32_ops=keep_fp32_ops)
    save_onnx(model, out_path, external_data)
    del model
    seconds = time.perf_counter() - start
    echo(
        f"    {half}: {report.nodes_fp16} nodes {half}, {report.nodes_fp32} kept fp32, {report.casts_inserted} casts, "
        f"{seconds:.1f} s, RSS {rss_gb():.1f} GB"
    )
    details: dict[str, Any] = {"precision_plan": report.as_dict(), f"{half}_seconds": round(seconds, 2)}
    if opset is not None:
        details["opset_change"] = opset
    return details
