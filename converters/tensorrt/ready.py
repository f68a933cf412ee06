"""The TensorRT-ready ONNX: precision baked into the graph, checked against what TensorRT's parser accepts.

TensorRT 11 builds *strongly typed* networks only (its FP16/INT8 builder flags and calibrators are gone) and
TensorRT 10.x does so when asked (``--stronglyTyped``): every tensor's type then follows from the ONNX itself, so
the precision must live in the ONNX. The step every ONNX-based target shares (``converters/onnx/precision.py``)
writes it with TensorRT's rules, and this module checks it here, where TensorRT cannot be installed:

* **fp16 / bf16**: the onnx target's explicit cast plan (``converters/onnx/half.py``), network in half
  precision, the tail and the GroupNorm statistics fp32, a Cast on every edge between them. bf16 needs opset 22
  (the first opset whose Conv and MatMul accept bfloat16); ONNX Runtime's CPU kernels have no bf16, so the bf16
  ONNX is checked structurally only.
* **fp8** (TensorRT 11 on SM89+): the int8 graph below with every Q/DQ retyped to float8e4m3fn and rescaled to
  amax / 448 (``converters/onnx/fp8.py``); opset 19.
* **int8**: ONNX Runtime's static QDQ quantizer with TensorRT's rules: activations **int8 symmetric** (zero point
  0; TensorRT rejects any other zero point and uint8 activations), weights int8 symmetric per output channel,
  calibrated on real photos (the calibration package). The tail and the disparity head stay fp32, as for onnx.
* **--quantizer modelopt** (int8, fp8): NVIDIA ModelOpt's ONNX PTQ places the Q/DQ instead, same calibration
  photos and float modules (``converters/onnx/modelopt.py``); opset 19.
* **static checks** (:func:`check_tensorrt_ready`): the declared opset against the TensorRT release's parser,
  every op type against the parser's operator list, the parser's documented restrictions that can be checked on
  a graph (constant ``axes``, pooling dilations, Resize modes), the element types present, the Q/DQ zero points,
  and onnx's full type check (what "strongly typed" needs: every tensor's type follows from the graph).

torch and TensorRT are not imported here; onnx only inside the functions.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.errors import ConversionError, UserInputError

if TYPE_CHECKING:
    import onnx

    from sharp_export.artifact import IOSpec
    from sharp_export.contract import ExportRequest


@dataclass(frozen=True)
class TensorRTRelease:
    """What one TensorRT release's ONNX parser accepts (``--trt-compat``)."""

    name: str  # the --trt-compat value
    label: str
    max_opset: int  # highest ONNX opset its parser reads
    precisions: tuple[str, ...]  # the precisions a TensorRT-ready ONNX may have for it
    why_not: str  # what it cannot do, and why (shown when a precision is refused)
    hardware_compatible: bool  # whether hardware-compatible (Ampere+) engines exist there


# Opset limits from the ONNX-TensorRT release notes and operators.md: 10.0-10.8 read opsets 9-20, 10.9 up to 22,
# 10.13 up to 24, TensorRT 11.x up to 25. JetPack 6 (Jetson Orin, SM87) ships TensorRT 10.3.
TENSORRT_RELEASES = {
    "11": TensorRTRelease(
        name="11",
        label="TensorRT 11 (data-centre GPUs: A100 SM80, H100/H200 SM90)",
        max_opset=25,
        precisions=("fp32", "fp16", "bf16", "int8", "fp8"),
        why_not="",
        hardware_compatible=True,
    ),
    "10.3": TensorRTRelease(
        name="10.3",
        label="TensorRT 10.3 (JetPack 6, Jetson Orin SM87)",
        max_opset=20,
        precisions=("fp32", "fp16", "int8"),
        why_not="bf16 needs ONNX opset 22 (bfloat16 Conv/MatMul) and the TensorRT 10.3 parser reads opsets <= 20; "
        "fp8 needs FP8 tensor cores (SM89+: Ada, Hopper), which Orin (SM87) lacks; "
        "use --precision fp16 or int8 on Orin",
        hardware_compatible=False,  # hardware compatibility is for discrete GPUs only, not Jetson
    ),
}
DEFAULT_RELEASE = "11"

# Op types marked supported in ONNX-TensorRT's operators.md for TensorRT 10.1 GA (the closest published table at
# or below 10.3; later parsers add ops, none removed). An op outside this list fails the check: it may still parse
# on a newer TensorRT, which only trtexec on the target machine can tell.
TENSORRT_ONNX_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
    Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow
    PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)
# The parser's "must be an initializer / constant" restrictions on inputs (op type -> input indices).
CONSTANT_INPUTS = {"Slice": (3,), "ReduceMin": (1,), "ReduceMax": (1,), "Squeeze": (1,), "Unsqueeze": (1,)}
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_MODES = ("nearest", "linear")
# Element types TensorRT reads (onnx.TensorProto enum values: FLOAT, UINT8, INT8, INT32, INT64, BOOL, FLOAT16,
# BFLOAT16); int8 only as the quantized side of Q/DQ.
TENSORRT_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                       16: "bfloat16", 17: "float8e4m3fn"}  # fmt: skip
FLOAT_TYPES_BY_PRECISION = {"fp32": {"float32"}, "fp16": {"float32", "float16"}, "bf16": {"float32", "bfloat16"},
                            "int8": {"float32"}, "fp8": {"float32"}}  # fmt: skip
QUANTIZED_TYPE = {"int8": "int8", "fp8": "float8e4m3fn"}  # the Q/DQ zero-point (quantized) type per precision


# ---- checking -------------------------------------------------------------------------------------------------


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _zero_points(graph: onnx.GraphProto, folder: Path) -> tuple[Counter, list[str]]:
    """Element types of the Q/DQ zero points, and the nodes whose zero point is not all zeros."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    types: Counter = Counter()
    nonzero: list[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or not node.input[2]:
            types["absent (uint8, ONNX's default)"] += 1
            continue
        tensor = initializers.get(node.input[2])
        if tensor is None:
            nonzero.append(f"{node.name} (zero point not an initializer)")
            continue
        types[TENSORRT_ELEM_TYPES.get(tensor.data_type, str(tensor.data_type))] += 1
        # Large zero points (fp8's per-channel ones at full size) sit in the external data file beside the model.
        if numpy_helper.to_array(tensor, base_dir=str(folder)).any():
            nonzero.append(node.name)
    return types, nonzero


def check_tensorrt_ready(
    onnx_path: Path, precision: str, release: str | TensorRTRelease = DEFAULT_RELEASE
) -> dict[str, Any]:
    """Static checks of a TensorRT-ready ONNX; raises ConversionError listing every problem, else returns a summary.

    ``release``: a ``--trt-compat`` name, or a parser's row (the tensorrt-rtx target passes TensorRT-RTX's).
    """
    import onnx

    target = release if isinstance(release, TensorRTRelease) else TENSORRT_RELEASES[release]
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    problems: list[str] = []
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > target.max_opset:
        problems.append(f"opset {opset} > {target.max_opset}, the highest the {target.label} parser reads")
    other_domains = sorted({n.domain for n in graph.node if n.domain not in ("", "ai.onnx")})
    if other_domains:
        problems.append(f"nodes in custom domains {other_domains} (TensorRT needs plugins for them)")
    op_types = Counter(n.op_type for n in graph.node)
    unknown = sorted(set(op_types) - TENSORRT_ONNX_OPS)
    if unknown:
        problems.append(f"op types not in TensorRT's ONNX operator list: {unknown}")

    constants = _constant_names(graph)
    for node in graph.node:
        for index in CONSTANT_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                problems.append(f"{node.op_type} {node.name}: input {index} must be a constant for TensorRT")
        if node.op_type in ("AveragePool", "MaxPool") and any(d != 1 for d in _attribute(node, "dilations", [])):
            problems.append(f"{node.op_type} {node.name}: dilations must be all ones for TensorRT")
        if node.op_type == "Resize":
            mode = _attribute(node, "mode", b"nearest").decode()
            coords = _attribute(node, "coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in RESIZE_MODES or coords not in RESIZE_COORDINATE_MODES or _attribute(node, "antialias", 0):
                problems.append(f"Resize {node.name}: mode {mode} / {coords} / antialias not supported by TensorRT")

    # Element types: of the weights, of every typed tensor, and of every Cast's target.
    elem_types: Counter = Counter()
    for tensor in graph.initializer:
        elem_types[TENSORRT_ELEM_TYPES.get(tensor.data_type, f"onnx type {tensor.data_type}")] += 1
    for value in (*graph.input, *graph.value_info, *graph.output):
        elem = value.type.tensor_type.elem_type
        elem_types[TENSORRT_ELEM_TYPES.get(elem, f"onnx type {elem}")] += 1
    cast_targets = Counter(
        TENSORRT_ELEM_TYPES.get(_attribute(n, "to"), f"onnx type {_attribute(n, 'to')}")
        for n in graph.node
        if n.op_type == "Cast"
    )
    not_trt = sorted(t for t in (*elem_types, *cast_targets) if t.startswith("onnx type"))
    if not_trt:
        problems.append(f"element types TensorRT does not read: {not_trt}")
    floats = {t for t in (*elem_types, *cast_targets) if t in ("float32", "float16", "bfloat16")}
    unexpected = sorted(floats - FLOAT_TYPES_BY_PRECISION[precision])
    if unexpected:
        problems.append(f"a {precision} model holds {unexpected} tensors")
    if precision in ("fp16", "bf16") and not floats & {"float16", "bfloat16"}:
        problems.append(f"a {precision} model with no {precision} tensor")

    qdq = {"QuantizeLinear": op_types.get("QuantizeLinear", 0), "DequantizeLinear": op_types.get("DequantizeLinear", 0)}
    if precision in QUANTIZED_TYPE:
        wanted = QUANTIZED_TYPE[precision]
        zero_point_types, nonzero = _zero_points(graph, onnx_path.parent)
        qdq["zero_point_types"] = dict(zero_point_types)
        if set(zero_point_types) != {wanted}:
            problems.append(f"Q/DQ zero points must be {wanted} for {precision}, found {dict(zero_point_types)}")
        if nonzero:
            problems.append(f"Q/DQ zero points must be 0 for TensorRT: {nonzero[:5]} ({len(nonzero)} nodes)")
        producers = {out: node.op_type for node in graph.node for out in node.output}
        quantized = Counter(
            n.op_type
            for n in graph.node
            if n.op_type in ("Conv", "MatMul") and producers.get(n.input[0]) == "DequantizeLinear"
        )
        qdq["quantized_consumers"] = dict(quantized)
        if not quantized:
            problems.append(f"an {precision} model with no quantized Conv/MatMul input")
    elif qdq["QuantizeLinear"] or qdq["DequantizeLinear"]:
        problems.append(f"Q/DQ nodes in a {precision} model")
    del model, graph

    # Strongly typed means every tensor's type follows from the graph: onnx's full check runs type inference.
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        problems.append(f"onnx full check (type inference): {str(error).strip().splitlines()[0][:300]}")
    if problems:
        raise ConversionError(
            f"the {precision} ONNX is not TensorRT-ready for {target.label}: " + "; ".join(problems),
            path=onnx_path,
            fix="report this with the manifest; the ONNX stage is meant to produce parser-clean graphs",
        )
    return {
        "release": target.name,
        "release_label": target.label,
        "opset": opset,
        "max_opset": target.max_opset,
        "op_types": dict(sorted(op_types.items())),
        "operator_list": "ONNX-TensorRT docs/operators.md, TensorRT 10.1 GA",
        "element_types": dict(sorted(elem_types.items())),
        "cast_targets": dict(sorted(cast_targets.items())),
        "casts": op_types.get("Cast", 0),
        "qdq": qdq,
        "strongly_typed": "onnx.checker full_check (type inference) passed: every tensor type follows from the graph",
        "passed": True,
    }


# ---- the build command for the target machine ----------------------------------------------------------------


def shape_text(spec: Any, batch: int) -> str:
    """trtexec's shape syntax for one input: ``image:1x3x1536x1536``."""
    dims = [batch if isinstance(d, str) else int(d) for d in spec.shape]
    return f"{spec.name}:" + "x".join(str(d) for d in dims)


# The --dynamic-batch profile maximum: TensorRT reserves activation memory for the largest shape of the profile,
# so a generous maximum costs GPU memory in every execution context even when photos come one by one.
DEFAULT_MAX_BATCH = 8


def validate_max_batch(request: ExportRequest) -> None:
    """--max-batch within 1..64, and only with --dynamic-batch (the tensorrt and tensorrt-rtx targets)."""
    max_batch = int(request.options.get("max_batch", DEFAULT_MAX_BATCH))
    if max_batch < 1 or max_batch > 64:
        raise UserInputError(f"--max-batch {max_batch} must be within 1..64")
    if max_batch != DEFAULT_MAX_BATCH and not request.dynamic_batch:
        raise UserInputError("--max-batch applies to --dynamic-batch exports only", fix="add --dynamic-batch")


def batch_profile(io: IOSpec, max_batch: int) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of the optimisation profile; None for a fixed-batch model (static shapes).

    opt = 1: TensorRT tunes kernels for the opt shape, and single-photo latency is what most users see; servers
    that batch should rebuild with their own --optShapes.
    """
    return (1, 1, max_batch) if io.dynamic_batch else None


def trtexec_command(
    onnx_file: str,
    plan_file: str,
    io: IOSpec,
    *,
    workspace_gb: float,
    optimization_level: int,
    timing_cache: str,
    version_compatible: bool,
    hardware_compatible: bool,
    max_batch: int,
) -> str:
    """The trtexec line that builds the plan on the target machine, with the options this export was given."""
    argv = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={plan_file}",
        "--stronglyTyped",  # precision comes from the ONNX: no builder precision flags (TensorRT 11 has none)
        f"--memPoolSize=workspace:{int(round(workspace_gb * 1024))}M",
        f"--builderOptimizationLevel={optimization_level}",
        f"--timingCacheFile={timing_cache}",
    ]
    profile = batch_profile(io, max_batch)
    if profile is not None:
        for flag, batch in zip(("--minShapes", "--optShapes", "--maxShapes"), profile, strict=True):
            argv.append(f"{flag}=" + ",".join(shape_text(spec, batch) for spec in io.inputs))
    if version_compatible:
        argv.append("--versionCompatible")
    if hardware_compatible:
        argv.append("--hardwareCompatibilityLevel=ampere+")
    return shlex.join(argv)
