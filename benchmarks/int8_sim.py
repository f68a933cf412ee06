"""A cheap stand-in for ONNX Runtime's int8 QDQ graph, for per-region sensitivity studies at full size.

``quantize_static`` peaks at ~15 GB on the full preset and needs a calibration pass per try. This module instead
writes a weight-less copy of the fp32 ONNX (it reads the fp32 model's external data file) with QuantizeLinear /
DequantizeLinear pairs where ONNX Runtime's QDQ quantizer puts them, and with the scales it would compute:

* activations: every float input and output of each quantized Conv / MatMul node, uint8 asymmetric per tensor,
  ``scale = (max(hi, 0) - min(lo, 0)) / 255`` from calibrated (lo, hi) ranges, zero point ``round(-lo / scale)``;
* weights: int8 symmetric per output channel (Conv axis 0, MatMul axis 1) with ``reduce_range`` (7 bits:
  ``scale = absmax / 64``, as ONNX Runtime's ``quantize_static(reduce_range=True)`` writes them);
* with ``symmetric_activations``: int8, zero point 0, ``scale = absmax / 127`` (TensorRT's rules);
* biases stay fp32 (ONNX Runtime stores Conv biases as int32 at scale s_in * s_w: below 1e-6 relative).

``check_against`` compares the placement with a real ``quantize_static`` graph (same tensor names). Ranges can be
overridden per tensor (percentile clipping, other calibration sets), and any tensor or weight can be left float.

torch is not imported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OP_TYPES = ("Conv", "MatMul")


@dataclass
class QdqPlan:
    """Which activations (tensor -> consumer-independent QDQ) and weights (initializer -> axis) are quantized."""

    activations: list[str]
    weights: dict[str, int]  # initializer name -> channel axis
    node_of_weight: dict[str, str] = field(default_factory=dict)
    # For every activation: the quantized nodes it feeds or comes from (for region filters).
    nodes_of_activation: dict[str, list[str]] = field(default_factory=dict)


def load_skeleton(fp32_path: Path) -> Any:
    import onnx

    return onnx.load(str(fp32_path), load_external_data=False)


def plan_qdq(model: Any, excluded: Iterable[str], op_types: Sequence[str] = OP_TYPES) -> QdqPlan:
    """ONNX Runtime's QDQ placement for ``op_types`` nodes not in ``excluded`` (node names)."""
    import onnx

    graph = model.graph
    excluded = set(excluded)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    inits = {t.name for t in graph.initializer}
    activations: dict[str, list[str]] = {}
    weights: dict[str, int] = {}
    node_of_weight: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in op_types or node.name in excluded:
            continue
        for index, name in enumerate(node.input):
            if not name:
                continue
            if name in inits:
                if index == 1:  # the weight; Conv's bias (index 2) stays float here
                    weights[name] = 0 if node.op_type == "Conv" else 1
                    node_of_weight[name] = node.name
                continue
            if types.get(name) == onnx.TensorProto.FLOAT:
                activations.setdefault(name, []).append(node.name)
        for name in node.output:
            if types.get(name) == onnx.TensorProto.FLOAT:
                activations.setdefault(name, []).append(node.name)
    return QdqPlan(list(activations), weights, node_of_weight, activations)


def check_against(plan: QdqPlan, int8_path: Path) -> dict[str, Any]:
    """Compare the plan with a real quantize_static graph: activation tensors with a QuantizeLinear, and weights."""
    import onnx

    model = onnx.load(str(int8_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    real_acts = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    real_weights = {
        n.input[0].removesuffix("_quantized")
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[0].endswith("_quantized")
    }
    real_weights = {w for w in real_weights if not w.endswith(".bias") and not w.endswith("bias")}
    ours_a, ours_w = set(plan.activations), set(plan.weights)
    return {
        "activations": {"real": len(real_acts), "plan": len(ours_a), "only_real": sorted(real_acts - ours_a)[:10],
                        "only_plan": sorted(ours_a - real_acts)[:10]},
        "weights": {"real": len(real_weights), "plan": len(ours_w), "only_real": sorted(real_weights - ours_w)[:10],
                    "only_plan": sorted(ours_w - real_weights)[:10]},
    }  # fmt: skip


def read_initializer(fp32_path: Path, tensor: Any) -> np.ndarray:
    """One initializer's values (inline or from the external data file, memory-mapped)."""
    from onnx import numpy_helper

    if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    offset = int(info.get("offset", 0))
    length = int(info["length"])
    data = np.memmap(fp32_path.parent / info["location"], dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    assert tensor.data_type == 1, "float32 weights expected"
    return np.frombuffer(data, dtype=np.float32).reshape(tuple(tensor.dims))


def weight_scales(fp32_path: Path, model: Any, plan: QdqPlan, bits: int = 7) -> dict[str, np.ndarray]:
    """Per-channel symmetric scales: absmax / 64 for 7-bit (reduce_range), / 127.5 for 8-bit."""
    inits = {t.name: t for t in model.graph.initializer}
    divisor = 64.0 if bits == 7 else 127.5
    scales = {}
    for name, axis in plan.weights.items():
        values = read_initializer(fp32_path, inits[name])
        other = tuple(i for i in range(values.ndim) if i != axis)
        absmax = np.abs(values).max(axis=other).astype(np.float32)
        scales[name] = np.maximum(absmax / divisor, np.float32(1e-12)).astype(np.float32)
    return scales


def activation_qparams(lo: float, hi: float, symmetric: bool = False) -> tuple[np.float32, np.uint8 | np.int8]:
    """uint8 asymmetric (ONNX Runtime's rules), or int8 symmetric with zero point 0 (TensorRT's: ``absmax / 127``,
    ONNX Runtime's symmetric int8 range [-127, 127])."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        absmax = max(-lo, hi)
        return np.float32(absmax / 127.0 if absmax > 0 else 1.0), np.int8(0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zero)


def write_variant(
    fp32_path: Path,
    out_path: Path,
    plan: QdqPlan,
    ranges: dict[str, tuple[float, float]],
    w_scales: dict[str, np.ndarray],
    *,
    float_activations: Iterable[str] = (),
    float_weights: Iterable[str] = (),
    extra_outputs: Sequence[str] = (),
    only_outputs: Sequence[str] | None = None,
    symmetric_activations: bool = False,
) -> dict[str, int]:
    """Write the fp32 graph with fake-quant QDQ pairs beside ``fp32_path`` (it shares the external data file).

    ``only_outputs``: make these tensors the graph's only outputs and drop every node they do not depend on (the
    depth path alone skips the Gaussian decoder).
    """
    import onnx
    from onnx import helper, numpy_helper

    assert out_path.parent == fp32_path.parent, "the variant must sit beside the fp32 model (external data)"
    model = load_skeleton(fp32_path)
    graph = model.graph
    skip_a, skip_w = set(float_activations), set(float_weights)
    rename: dict[str, str] = {}
    new_inits = []
    after: dict[str, list[Any]] = {}  # tensor -> QDQ nodes to place after its producer
    count = {"activations": 0, "weights": 0}
    for name in plan.activations:
        if name in skip_a or name not in ranges:
            continue
        scale, zero = activation_qparams(*ranges[name], symmetric=symmetric_activations)
        s_name, z_name, q, dq = f"{name}__s", f"{name}__z", f"{name}__q", f"{name}__dq"
        new_inits += [numpy_helper.from_array(np.array(scale), s_name), numpy_helper.from_array(np.array(zero), z_name)]
        after.setdefault(name, []).extend(
            [
                helper.make_node("QuantizeLinear", [name, s_name, z_name], [q], name=q),
                helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=dq),
            ]
        )
        rename[name] = dq
        count["activations"] += 1
    for name, axis in plan.weights.items():
        if name in skip_w:
            continue
        scale = w_scales[name]
        s_name, z_name, q, dq = f"{name}__s", f"{name}__z", f"{name}__q", f"{name}__dq"
        new_inits += [
            numpy_helper.from_array(scale, s_name),
            numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), z_name),
        ]
        after.setdefault(name, []).extend(
            [
                helper.make_node("QuantizeLinear", [name, s_name, z_name], [q], name=q, axis=axis),
                helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=dq, axis=axis),
            ]
        )
        rename[name] = dq
        count["weights"] += 1
    graph_outputs = {o.name for o in graph.output}
    nodes = []
    inits = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    for name in list(after):
        if name in inits or name in inputs:
            nodes.extend(after.pop(name))
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
        nodes.append(node)
        for out in node.output:
            nodes.extend(after.pop(out, []))
    assert not after, f"no producer for {list(after)[:3]}"
    for out in graph.output:  # a graph output read through its QDQ pair keeps its name: rewire via Identity
        if out.name in rename:
            raise AssertionError(f"graph output {out.name} is quantized; not expected")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    for name in extra_outputs:
        if name not in graph_outputs:
            graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    if only_outputs is not None:
        needed, kept = set(only_outputs), []
        for node in reversed(list(graph.node)):
            if needed.intersection(node.output):
                kept.append(node)
                needed.update(i for i in node.input if i)
        kept.reverse()
        del graph.node[:]
        graph.node.extend(kept)
        del graph.output[:]
        graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in only_outputs)
        used = {i for node in kept for i in node.input}
        keep_inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
        keep_inputs = [i for i in graph.input if i.name in used]
        del graph.input[:]
        graph.input.extend(keep_inputs)
    onnx.save_model(model, str(out_path))
    return count


def ort_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def save_ranges(path: Path, ranges: dict[str, tuple]) -> None:
    path.write_text(json.dumps({k: [float(v[0]), float(v[1])] for k, v in ranges.items()}))


def load_ranges(path: Path) -> dict[str, tuple[float, float]]:
    return {k: (v[0], v[1]) for k, v in json.loads(path.read_text()).items()}
