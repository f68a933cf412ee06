"""The ONNX file and graph facts every ONNX module shares (export, half, quantize, fp8, modelopt, precision).

* **The file:** ``model.onnx`` (+ ``model.onnx.data``) with inputs :data:`INPUT_NAMES` and the five Gaussian
  outputs; :func:`declared_opset` and :func:`check_graph_io` check a written file without loading its weights.

* **Regions** (:func:`node_regions`): which nodes are network and which are the **tail**, the ops after the
  monodepth network and around the Gaussian decoder that have no weights (disparity -> depth division and
  clamps, the initializer's global depth minimum and reciprocals, the composer's softplus / log / exp / sigmoid /
  pow and the flatten). They are found by the module path the dynamo exporter writes into every node's
  ``namespace`` metadata: a node traced inside ``monodepth_model``, ``feature_model`` or ``prediction_head`` is
  network, a node traced in the predictor itself is tail (the same split as ``reference/model/predictor.py``'s
  ``PrecisionPlan`` and the Core ML regions in ``converters/coreml/capture.py``). Every reduced precision keeps
  the tail fp32.
* **Files and opsets:** :func:`save_onnx` (one ``.data`` file beside the model), :func:`raise_opset` (declare a
  newer opset only where that changes no node), :func:`file_bytes`.

torch is not imported here; onnx only inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.errors import ConversionError

if TYPE_CHECKING:
    import onnx

    from sharp_export.artifact import IOSpec

MODEL_FILE = "model.onnx"  # + model.onnx.data (external weights) beside it
INPUT_NAMES = ("image", "disparity_factor")
MAX_DYNAMIC_BATCH = 64  # the batch dimension's upper bound in a --dynamic-batch export
DEFAULT_OPSET = 18  # the opset written by default: the lowest torch's dynamo exporter implements natively
REGION_TAIL = "tail"
REGION_GROUP_NORM = "group_norm"  # GroupNorm lowers to Reshape + InstanceNormalization + Reshape + Mul + Add
REGION_NETWORK = "network"
# The predictor's submodules with weights: an op traced inside one is network, an op traced in the predictor itself
# is tail. (Public: the executorch target's int8 rules read it.)
NETWORK_MODULES = ("monodepth_model", "feature_model", "prediction_head")
_NETWORK_MODULES = NETWORK_MODULES


# ---- regions ---------------------------------------------------------------------------------------------


def node_namespace(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "namespace":
            return prop.value
    return None


def module_paths(namespace: str) -> list[str]:
    """Module paths of a node's namespace, outermost first (the last segment is the op itself)."""
    # ": pkg.RawOutputs/predictor: pkg.RGBGaussianPredictor/predictor.monodepth_model: pkg.Monodepth.../op: aten.x"
    return [segment.split(":")[0].strip() for segment in namespace.split("/")[:-1]]


def _region_from_namespace(namespace: str) -> str:
    paths = module_paths(namespace)
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
        namespace = node_namespace(node)
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


# ---- files and opsets ------------------------------------------------------------------------------------


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


def check_graph_io(model_path: Path, io: IOSpec) -> None:
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


def file_bytes(folder: Path) -> dict[str, int]:
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
