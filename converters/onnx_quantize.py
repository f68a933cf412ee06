"""Reduced precision for the ONNX target: an fp16 cast plan and static int8 (QDQ) quantization.

Both start from the fp32 graph that ``onnx_export.export_onnx`` wrote and rewrite it in place of it. Both keep
the **tail** in fp32: the ops after the monodepth network and around the Gaussian decoder that have no
weights (disparity -> depth division and clamps, the initializer's global depth minimum and reciprocals, the
composer's softplus / log / exp / sigmoid / pow and the flatten). They are found by the module path the dynamo
exporter writes into every node's ``namespace`` metadata: a node traced inside ``monodepth_model``,
``feature_model`` or ``prediction_head`` is network, a node traced in the predictor itself is tail (the same
split as ``reference/model/predictor.py``'s ``PrecisionPlan`` and the Core ML regions in
``converters/coreml/capture.py``). Why the tail stays fp32, measured on the tiny preset: see ``FP16_KEEP_NOTE``.

* **fp16** (:func:`convert_fp16`): an explicit cast plan written with the onnx API, no extra dependency.
  Network nodes compute in fp16 and their weights are stored in fp16; kept nodes (the tail and the GroupNorm
  statistics, ``InstanceNormalization``) stay fp32; a ``Cast`` is inserted on every edge between the two.
  The graph inputs and outputs stay fp32, so the runner and the manifest's I/O spec do not change. The same plan
  in bfloat16 (:func:`write_half`, opset raised to 22) serves the tensorrt target's ``--precision bf16``.
* **int8** (:func:`quantize_int8`): ``onnxruntime.quantization.quantize_static`` in QDQ format, weights int8
  symmetric per output channel, activations uint8 calibrated on real photos through a
  ``CalibrationDataReader``; the tail is passed as ``nodes_to_exclude``.

torch is not imported here; onnx and onnxruntime only inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.errors import ConversionError, MissingDependencyError
from sharp_export.progress import echo, rss_gb

if TYPE_CHECKING:
    import onnx

    from sharp_export.calibration.dataset import CalibrationSet

REGION_TAIL = "tail"
REGION_GROUP_NORM = "group_norm"  # GroupNorm lowers to Reshape + InstanceNormalization + Reshape + Mul + Add
REGION_NETWORK = "network"
_NETWORK_MODULES = ("monodepth_model", "feature_model", "prediction_head")
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
    "README Core ML section); cheap to keep"
)

# int8: the op types quantized (weights int8 per channel, activations uint8) and the calibration method.
INT8_OP_TYPES = ("Conv", "MatMul")
# Network modules kept fp32 under int8 besides the tail (module paths as in the state_dict), and why.
INT8_EXCLUDED_MODULES = ("monodepth_model.monodepth_predictor.head",)
INT8_EXCLUDED_NOTE = (
    "the tail: no weights, and quantizing it (possible only with op types beyond Conv/MatMul) broke depth "
    "(tiny study, all ORT op types: z rel err p99 1.65 vs 6.4e-3 with the tail excluded); the disparity head "
    "(monodepth head: conv, deconv, conv, conv to the 2-channel disparity): quantized, it raised the z rel err p99 "
    "from 5.7e-3 to 3.0e-2 (tiny study, benchmarks/results/onnx_precision_study_tiny.json). The head keeps fp32 "
    "weights and compute, but its input is the decoder's last conv output, which ORT's QDQ quantizer rounds to uint8"
)
# TensorRT's symmetric int8 activations cost accuracy on SHARP's mostly-positive activations; the Gaussian heads
# (the decoder's geometry / texture heads and the prediction head: 12 of the tiny preset's 81 quantized convs) stay
# fp32. Tiny golden pattern, ONNX Runtime CPU (benchmarks/results/tensorrt_int8_study_tiny.json): on a Xeon with
# VNNI / AMX, scales_log p99 0.069 -> 0.040 and quaternion angle 5.4 -> 3.2 deg; on an AVX2-only AMD EPYC, whose
# int8 kernels saturate, 0.128 -> 0.048 and 5.9 -> 3.5 deg (Percentile calibration was worse there: 0.23).
TENSORRT_INT8_EXCLUDED_MODULES = INT8_EXCLUDED_MODULES + (
    "feature_model.geometry_head",
    "feature_model.texture_head",
    "prediction_head",
)
# ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F) sum pairs of products in int16
# and saturate; 7-bit weights (reduce_range) avoid it. Measured on an AMD EPYC with AVX2 only, tiny golden pattern,
# 4 sample photos: full range scales_log p99 0.167, colours 5.2e-3; reduce_range 0.057 and 1.3e-3. The artifact
# may run on any CPU, so it is always built that way (on VNNI CPUs it costs the weights one bit).
ORT_REDUCE_RANGE_NOTE = (
    "weights quantized to 7 bits (reduce_range): ONNX Runtime's u8s8 kernels saturate on x86 CPUs without VNNI "
    "(measured on AVX2: scales_log p99 0.167 -> 0.057, colours 5.2e-3 -> 1.3e-3)"
)
INT8_RULES = ("onnxruntime", "tensorrt")  # whose Q/DQ conventions the int8 graph follows (reduce_precision)
# quantize_int8's settings per rule set: ONNX Runtime's (uint8 asymmetric activations, int32 biases, 7-bit weights,
# see ORT_REDUCE_RANGE_NOTE) and TensorRT's (int8 symmetric activations, fp32 biases, the Gaussian heads fp32).
ONNXRUNTIME_INT8_OPTIONS: dict[str, Any] = {
    "activations": "uint8",
    "excluded_modules": INT8_EXCLUDED_MODULES,
    "reduce_range": True,
}
TENSORRT_INT8_OPTIONS: dict[str, Any] = {
    "activations": "int8",
    "extra_options": {"QuantizeBias": False},
    "excluded_modules": TENSORRT_INT8_EXCLUDED_MODULES,
}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"


# ---- regions ---------------------------------------------------------------------------------------------


def _namespace(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "namespace":
            return prop.value
    return None


def _module_paths(namespace: str) -> list[str]:
    """Module paths of a node's namespace, outermost first (the last segment is the op itself)."""
    # ": pkg.RawOutputs/predictor: pkg.RGBGaussianPredictor/predictor.monodepth_model: pkg.Monodepth.../op: aten.x"
    return [segment.split(":")[0].strip() for segment in namespace.split("/")[:-1]]


def _region_from_namespace(namespace: str) -> str:
    paths = _module_paths(namespace)
    if any(part in _NETWORK_MODULES for path in paths for part in path.split(".")):
        return REGION_NETWORK
    return REGION_TAIL


def node_regions(graph: onnx.GraphProto) -> dict[str, str]:
    """Region of every node, by name: tail, group_norm or network.

    Nodes without namespace metadata (made by the exporter's optimiser, e.g. the Split of a fused QKV) take the
    region of the node that produces their first input, network when none does.
    """
    producer: dict[str, str] = {}
    regions: dict[str, str] = {}
    seen_namespace = False
    for node in graph.node:
        namespace = _namespace(node)
        if namespace is not None:
            seen_namespace = True
            region = _region_from_namespace(namespace)
        else:
            region = next((regions[producer[i]] for i in node.input if i in producer), REGION_NETWORK)
        if node.op_type == "InstanceNormalization" and region == REGION_NETWORK:
            region = REGION_GROUP_NORM
        regions[node.name] = region
        for output in node.output:
            producer[output] = node.name
    if not seen_namespace:
        raise ConversionError(
            "the ONNX graph carries no 'namespace' metadata, so the fp32 tail cannot be located",
            fix="export with torch.onnx.export(dynamo=True), as the onnx target does",
        )
    tail_ops = {node.op_type for node in graph.node if regions[node.name] == REGION_TAIL}
    if not {"ReduceMin", "Softplus"} <= tail_ops:
        raise ConversionError(
            f"the tail found in the ONNX graph lacks the global depth minimum or the composer's softplus "
            f"(tail op types: {sorted(tail_ops)}); refusing to guess which nodes must stay fp32"
        )
    return regions


def region_counts(regions: dict[str, str]) -> dict[str, int]:
    return dict(Counter(regions.values()))


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
    model: onnx.ModelProto, keep_regions: Iterable[str] = FP16_KEPT_REGIONS, *, half: str = "fp16"
) -> Fp16Report:
    """Rewrite ``model`` (loaded with its weights) to the fp16 plan, in place. Returns what was done.

    ``half="bf16"`` writes the same plan in bfloat16 (the tensorrt target); ONNX allows bfloat16 Conv only from
    opset 22, so the caller converts the model's opset first (:func:`write_half`).
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
    report = Fp16Report(kept_regions=keep, half=half)
    FLOAT, HALF = onnx.TensorProto.FLOAT, HALF_TYPES[half]
    # bf16 has fp32's exponent range: no weight is out of range.
    half_max = FP16_MAX if half == "fp16" else float("inf")

    # 1. Which nodes compute in fp16, and which type variables of each change.
    plan: dict[str, set[str]] = {}
    for node in graph.node:
        if regions[node.name] in keep:
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


# ---- int8 ---------------------------------------------------------------------------------------------------


def calibration_reader(calibration: CalibrationSet) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a calibration set (fp32 numpy feeds)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[dict[str, Any]] = self._feeds()

        def _feeds(self) -> Iterator[dict[str, Any]]:
            for image, factor in zip(calibration.images, calibration.disparity_factors, strict=True):
                yield {"image": image.numpy(), "disparity_factor": factor.numpy()}

        def get_next(self) -> dict[str, Any] | None:
            return next(self._items, None)

        def rewind(self) -> None:
            self._items = self._feeds()

    return _Reader()


def excluded_nodes(graph: onnx.GraphProto, modules: Sequence[str] = INT8_EXCLUDED_MODULES) -> list[str]:
    """Nodes int8 quantization must not touch: the tail, and network nodes traced in one of ``modules``."""
    regions = node_regions(graph)
    excluded = []
    for node in graph.node:
        paths = _module_paths(_namespace(node) or "")
        in_module = any(path == module or path.endswith("." + module) for path in paths for module in modules)
        if regions[node.name] == REGION_TAIL or in_module:
            excluded.append(node.name)
    return excluded


def calibration_tensors(model: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    """Float activations the quantizer needs ranges for: inputs and outputs of every node of ``op_types``.

    The same selection as onnxruntime's own calibrators (``select_tensors_to_calibrate``).
    """
    import onnx

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    weights = {t.name for t in graph.initializer}
    names: dict[str, None] = {}
    for node in graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for name in (*node.input, *node.output):
            if name and name not in weights and types.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                names[name] = None
    return list(names)


def minmax_ranges(fp32_path: Path, calibration: CalibrationSet, op_types: Sequence[str]) -> dict[str, tuple]:
    """MinMax calibration with a bounded memory footprint: tensor name -> (lowest, highest) over the set.

    onnxruntime's own MinMax calibrator holds a second in-memory copy of the weights, runs its session with the
    memory arena on and graph optimisations off, and measured 23.8 GB (killed) on the full preset here. This one
    adds a ReduceMin / ReduceMax pair after each tensor to a weight-less copy of the graph saved beside the fp32
    model (so it reads the same external data file), and runs it with the arena off, like the runner.
    """
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import helper

    model = onnx.load(str(fp32_path), load_external_data=False)
    tensors = calibration_tensors(model, op_types)
    graph = model.graph
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    after: dict[int, list[onnx.NodeProto]] = {}
    outputs = []
    for name in tensors:
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{name}__calib_{op}"
            node = helper.make_node(op, [name], [out], name=out, keepdims=0)
            after.setdefault(producer_index.get(name, -1), []).append(node)
            outputs.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, []))
    nodes = list(after.get(-1, []))
    for index, node in enumerate(graph.node):
        nodes.append(node)
        nodes.extend(after.get(index, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.output.extend(outputs)
    augmented = fp32_path.with_name(fp32_path.stem + ".calibration.onnx")
    onnx.save_model(model, str(augmented))  # weights stay in the fp32 model's external file (or inline when small)
    del model, graph, nodes
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = os.cpu_count() or 1
    # ORT's default order emits the graph outputs' producers depth first, so every reduction ran after the whole
    # network and kept all 700+ activations alive (22.7 GB and killed at full size). The priority-based order is a
    # Kahn sort that breaks ties by node index: each reduction, placed right after its producer, runs next.
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    session = onnxruntime.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in outputs]
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    for number, (image, factor) in enumerate(zip(calibration.images, calibration.disparity_factors, strict=True), 1):
        start = time.perf_counter()
        values = session.run(names, {"image": image.numpy(), "disparity_factor": factor.numpy()})
        found = dict(zip(names, values, strict=True))
        for name in tensors:
            low[name] = min(low[name], float(found[f"{name}__calib_ReduceMin"]))
            high[name] = max(high[name], float(found[f"{name}__calib_ReduceMax"]))
        echo(f"    calibration {number}/{len(calibration)}: {time.perf_counter() - start:.1f} s, RSS {rss_gb():.1f} GB")
    del session
    augmented.unlink()
    return {t: (np.array(low[t], dtype=np.float32), np.array(high[t], dtype=np.float32)) for t in tensors}


class _DropPreprocessHint(logging.Filter):
    """ORT warns on every call that the model was not run through its quant_pre_process; that step (symbolic
    shape inference + graph optimisation) is not needed here: the dynamo export carries full shape information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_hint() -> Iterator[None]:
    root = logging.getLogger()
    hint_filter = _DropPreprocessHint()
    root.addFilter(hint_filter)
    try:
        yield
    finally:
        root.removeFilter(hint_filter)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: CalibrationSet,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    op_types: Sequence[str] = INT8_OP_TYPES,
    external_data: bool = False,
    excluded_modules: Sequence[str] = INT8_EXCLUDED_MODULES,
    extra_options: dict[str, Any] | None = None,
    activations: str = "uint8",
    reduce_range: bool = False,
) -> dict[str, Any]:
    """Static QDQ int8 of the fp32 model at ``fp32_path`` into ``out_path``; returns manifest details.

    ``activations``: "uint8" (asymmetric, ONNX Runtime's best on CPU) or "int8" (symmetric, zero point 0: what
    TensorRT requires of every Q/DQ pair).
    """
    import onnx

    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "int8 quantization") from None
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ConversionError(f"unknown calibration method {method!r}; known: {', '.join(methods)}")
    if activations not in ("uint8", "int8"):
        raise ConversionError(f"activations must be uint8 or int8, not {activations!r}")
    symmetric = activations == "int8"
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    excluded = excluded_nodes(graph, excluded_modules)
    counts = Counter(n.op_type for n in graph.node if n.op_type in op_types and n.name not in excluded)
    del graph
    start = time.perf_counter()
    echo(
        f"    int8: quantize_static (QDQ, {method}, {len(calibration)} calibration images, "
        f"{sum(counts.values())} {'/'.join(op_types) or 'all'} nodes; {len(excluded)} nodes kept fp32: "
        f"{', '.join(('tail', *excluded_modules))})"
    )
    reader = calibration_reader(calibration)
    cache = None
    if method == "minmax":
        from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

        cache = out_path.with_name(out_path.name + ".calibration.json")
        ranges = minmax_ranges(fp32_path, calibration, op_types)
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        reader = None  # quantize_static reads the ranges from the cache and runs no calibrator of its own
    try:
        with _without_preprocess_hint():
            quantize_static(
                str(fp32_path),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                use_external_data_format=external_data,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": symmetric, **(extra_options or {})},
                calibration_cache_path=cache,
            )
    except (ValueError, RuntimeError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ConversionError(f"onnxruntime quantize_static failed: {type(error).__name__}: {first}") from error
    finally:
        if cache is not None:
            cache.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    echo(f"    int8: quantized in {seconds:.1f} s, RSS {rss_gb():.1f} GB")
    return {
        "quantization": "onnxruntime.quantization.quantize_static, QDQ"
        + (" (ranges from sharp-export's low-memory MinMax pass)" if method == "minmax" else ""),
        "calibration_method": method,
        "op_types_quantized": list(op_types),
        "quantized_nodes": dict(counts),
        "weights": "int8, symmetric, per output channel" + (" (7-bit range)" if reduce_range else ""),
        "reduce_range": reduce_range,
        "activations": ("int8, symmetric (zero point 0)" if symmetric else "uint8, asymmetric")
        + ", per tensor, calibrated",
        "excluded_nodes": excluded,
        "excluded_modules": list(excluded_modules),
        "excluded_why": INT8_EXCLUDED_NOTE,
        "quantize_seconds": round(seconds, 2),
    }


# ---- the onnx row's reduced-precision step ----------------------------------------------------------------------


def _file_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name.startswith("model")}


def save_onnx(model: onnx.ModelProto, path: Path, external_data: bool) -> None:
    """Save ``model``; with ``external_data`` every weight goes into one ``<name>.data`` file beside it."""
    import onnx

    if external_data:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )
    else:
        onnx.save_model(model, str(path))


def raise_opset(model: onnx.ModelProto, target: int, why: str) -> dict[str, Any]:
    """Declare opset ``target`` on ``model``, in place, only where that changes no node (``why``: for errors).

    onnx's version converter is run on a weight-free copy as the check: every node must come back with the same
    op type, inputs, outputs and attributes (true for SHARP's ops between 18 and 22: the changes are type
    extensions and new optional attributes). The converter itself is not used for the rewrite because it drops
    the nodes' ``namespace`` metadata (the region plan) and part of the value_info.
    """
    import onnx
    from onnx import version_converter

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= target:
        return {"opset_from": opset, "opset": opset}
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:  # weights are not needed to convert ops
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    try:
        converted = version_converter.convert_version(skeleton, target)
    except Exception as error:  # the converter raises bare RuntimeError / ValueError subclasses
        raise ConversionError(f"{why}: onnx cannot convert opset {opset} -> {target}: {error}") from error

    def signature(node: onnx.NodeProto) -> tuple:
        attributes = tuple(sorted(a.SerializeToString() for a in node.attribute))
        return node.name, node.op_type, tuple(node.input), tuple(node.output), attributes

    changed = [
        n.name for n, c in zip(model.graph.node, converted.graph.node, strict=False) if signature(n) != signature(c)
    ]
    if changed or len(converted.graph.node) != len(model.graph.node):
        raise ConversionError(
            f"{why}: moving opset {opset} -> {target} rewrites nodes ({', '.join(changed[:5]) or 'count'}); "
            f"the {why} plan supports only graphs it leaves unchanged",
            fix="export --precision fp16 instead",
        )
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return {"opset_from": opset, "opset": target, "opset_check": "onnx version converter: no node changed"}


def write_half(fp32_path: Path, out_path: Path, external_data: bool, half: str = "fp16") -> dict[str, Any]:
    """The fp16 (or bf16) model at ``out_path`` from the fp32 model at ``fp32_path``; returns manifest details."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    start = time.perf_counter()
    model = onnx.load(str(fp32_path), load_external_data=False)
    opset = raise_opset(model, BF16_MIN_OPSET, "bf16") if half == "bf16" else None
    load_external_data_for_model(model, str(fp32_path.parent))
    report = convert_fp16(model, half=half)
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


def reduce_precision(
    precision: str,
    fp32_dir: Path,
    workdir: Path,
    io: Any,  # IOSpec the artifact exposes (unchanged: fp32 in and out)
    *,
    external_data: bool,
    calibration: CalibrationSet | None = None,
    int8_rules: str = "onnxruntime",
    quantizer: str = "ort",
) -> dict[str, Any]:
    """fp32 ONNX in ``fp32_dir`` -> the ``precision`` artifact in ``workdir``, checked; returns manifest details.

    ``precision``: fp16, bf16 (the tensorrt target; ONNX Runtime's CPU kernels cannot run it), int8, or fp8 (the
    tensorrt target: float8e4m3fn Q/DQ, which ONNX Runtime's CPU kernels run as fake quantization).
    ``int8_rules``: "onnxruntime" (uint8 asymmetric activations, int32 biases: ONNX Runtime's fastest CPU kernels)
    or "tensorrt" (int8 symmetric activations and fp32 biases: TensorRT's DequantizeLinear reads int8 / fp8 / int4
    with zero point 0 only).
    ``quantizer``: who places int8 / fp8 Q/DQ for the tensorrt rules: "ort" (ONNX Runtime's quantizer, below) or
    "modelopt" (NVIDIA ModelOpt's ONNX PTQ, ``converters/onnx_modelopt.py``).
    """
    import onnx

    from sharp_export.converters.onnx import MODEL_FILE
    from sharp_export.converters.onnx_export import check_graph_io

    fp32_path = fp32_dir / MODEL_FILE
    out_path = workdir / MODEL_FILE
    fp32_bytes = _file_bytes(fp32_dir)
    from sharp_export.converters.onnx_modelopt import MODELOPT_PRECISIONS, QUANTIZERS

    if quantizer not in QUANTIZERS:
        raise ConversionError(f"quantizer must be one of {', '.join(QUANTIZERS)}, not {quantizer!r}")
    if quantizer == "modelopt" and (precision not in MODELOPT_PRECISIONS or int8_rules != "tensorrt"):
        raise ConversionError("the ModelOpt quantizer serves the tensorrt target's int8 and fp8 only")
    if int8_rules not in INT8_RULES:
        raise ConversionError(f"int8 rules must be one of {', '.join(INT8_RULES)}, not {int8_rules!r}")
    calibrated = precision in ("int8", "fp8")
    if calibrated and calibration is None:
        raise ConversionError(f"{precision} needs a calibration set")
    if precision == "fp8" and int8_rules != "tensorrt":
        raise ConversionError("fp8 Q/DQ is built for TensorRT only (int8_rules='tensorrt')")
    tensorrt = int8_rules == "tensorrt"
    if precision in HALF_TYPES:
        details = write_half(fp32_path, out_path, external_data, precision)
    elif quantizer == "modelopt":
        from sharp_export.converters.onnx_modelopt import quantize_with_modelopt  # ModelOpt is imported in there

        details = quantize_with_modelopt(
            precision,
            fp32_path,
            out_path,
            calibration,
            external_data=external_data,
            excluded_modules=TENSORRT_INT8_EXCLUDED_MODULES,
        )
    elif precision == "int8":
        rules = TENSORRT_INT8_OPTIONS if tensorrt else ONNXRUNTIME_INT8_OPTIONS
        details = quantize_int8(fp32_path, out_path, calibration, external_data=external_data, **rules)
        if tensorrt:
            details["biases"] = "fp32 (TensorRT fuses them; its DequantizeLinear takes no int32)"
        else:
            details["reduce_range_why"] = ORT_REDUCE_RANGE_NOTE
    elif precision == "fp8":
        # fp8 = the TensorRT-rule int8 graph with every Q/DQ retyped to float8e4m3fn (converters/onnx_fp8.py).
        import shutil

        from sharp_export.converters.onnx_fp8 import int8_qdq_to_fp8

        scratch = workdir / ".int8_for_fp8"
        scratch.mkdir()
        details = quantize_int8(
            fp32_path, scratch / MODEL_FILE, calibration, external_data=external_data, **TENSORRT_INT8_OPTIONS
        )
        details.update(int8_qdq_to_fp8(scratch / MODEL_FILE, fp32_path, out_path, external_data=external_data))
        shutil.rmtree(scratch)
        details["biases"] = "fp32 (TensorRT fuses them)"
    else:
        raise ConversionError(f"no reduced-precision step for {precision!r}")
    if calibrated:
        assert calibration is not None  # checked above
        details.setdefault("quantizer", "ort")
        details["int8_rules"] = int8_rules
        details["calibration"] = calibration.describe()
    written = sorted(_file_bytes(workdir))
    expected = sorted([MODEL_FILE] + ([MODEL_FILE + ".data"] if external_data else []))
    if written != expected:
        raise ConversionError(f"the {precision} step wrote {written}, expected exactly {expected}", path=workdir)
    check_graph_io(out_path, io)
    graph = onnx.load(str(out_path), load_external_data=False).graph
    not_fp32 = [v.name for v in (*graph.input, *graph.output) if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT]
    if not_fp32:
        raise ConversionError(f"the {precision} graph's I/O {not_fp32} is not float32", path=out_path)
    del graph
    try:
        onnx.checker.check_model(str(out_path))
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0][:300]
        raise ConversionError(f"the {precision} model is not valid ONNX: {first}", path=out_path) from error
    sizes = _file_bytes(workdir)
    details["file_bytes"] = sizes
    details["fp32_file_bytes"] = fp32_bytes
    details["size_vs_fp32"] = round(sum(sizes.values()) / sum(fp32_bytes.values()), 4)
    echo(
        f"    {precision}: {sum(sizes.values()) / 1e6:.1f} MB ({details['size_vs_fp32']:.3f} x the fp32 "
        f"{sum(fp32_bytes.values()) / 1e6:.1f} MB)"
    )
    return details
