"""int8 (QDQ) quantization with ONNX Runtime's quantizer, for every ONNX-based target (``precision.py`` calls it).

* **int8** (:func:`quantize_int8`): ``onnxruntime.quantization.quantize_static`` in QDQ format, weights int8
  symmetric per output channel, activations calibrated on real photos (a low-memory MinMax pass,
  :func:`minmax_ranges`). Only the layers with weights (Conv / MatMul) of the encoder's two ViTs are quantized
  (``INT8_QUANTIZED_MODULES``, ``INT8_WEIGHT_LAYERS_ONLY``), with Q/DQ on what they read, not on what they write;
  everything else stays float.
  Two rule sets: ONNX Runtime's (uint8 asymmetric activations; the onnx and openvino targets) and TensorRT's (int8
  symmetric activations, fp32 biases); weights int8 (8 bits) per output channel in both.

torch is not imported here; onnx and onnxruntime only inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.converters.onnx.graph import REGION_TAIL, module_paths, node_namespace, node_regions
from sharp_export.errors import ConversionError, MissingDependencyError
from sharp_export.progress import echo, rss_gb

if TYPE_CHECKING:
    import onnx

    from sharp_export.calibration.dataset import CalibrationSet

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
# Where int8 goes (issue 33): the Conv / MatMul nodes of the two DINOv2 ViTs only (patch and image encoders: 36
# ViT-L passes, ~64 % of the full preset's estimated FLOPs, docs/architecture.md), with Q/DQ on the tensors they read
# only (ONNX Runtime's OpTypesToExcludeOutputQuantization); everything else float. Quantizing every network Conv /
# MatMul passed on the golden recipe's perturbed weights but not on weights with a live disparity (--live-disparity):
# depth is f / disparity there, and the int8 error reaching the disparity (pre-ReLU p99 2.5e-3) became depth p99
# ~0.07 against the 0.015 row. Fake-quant study at full size (benchmarks/results/int8_full_live_study.json): the
# regions' errors add in quadrature (decoder 2.1e-3, patch ViT 1.1e-3, upsample / fuse 0.8e-3, image ViT 0.1e-3);
# the ViTs only, inputs only: 4.7e-4, under the ~5.5e-4 the row needs.
INT8_QUANTIZED_MODULES = (
    "monodepth_model.monodepth_predictor.encoder.patch_encoder",
    "monodepth_model.monodepth_predictor.encoder.image_encoder",
)
# Inside the ViTs only the layers with a weight (patch embedding Conv, qkv / proj / fc1 / fc2 MatMuls) are int8;
# the attention MatMuls (q x k, softmax x v: activation x activation) stay float. Under TensorRT's rules this is
# accuracy: symmetric int8 spends half its 255 steps on negative values the softmax output never takes. Fake-quant,
# full preset, live-disparity weights, golden pattern, 8-bit weights (benchmarks/results/int8_full_live_study.json):
# pre-ReLU error p99 at the disparity, symmetric activations 5.5e-4 with the attention int8, 4.0e-4 float (the
# TensorRT int8 graph had missed the live depth row on one photo, p99 0.0193 against 0.015, and now passes with
# 0.0146: docs/full-size-precision.md, section 0); ONNX Runtime's asymmetric rules 4.7e-4 and 4.6e-4 (no change).
# For every target it halves the tensors the calibration pass reduces (194 instead of 386 at full size: 64 s for the
# 5 sample photos instead of 139 s). NVIDIA ModelOpt's default int8 recipe for TensorRT likewise quantizes only
# layers with weights.
INT8_WEIGHT_LAYERS_ONLY = True
# quantize_int8 settings of the plan before 2026-12-07 (every network Conv / MatMul, Q/DQ on inputs and outputs),
# which the tiny studies in benchmarks/ measured; they pass it to stay reproducible.
WHOLE_NETWORK_PLAN: dict[str, Any] = {"quantized_modules": None, "outputs_float": False, "weight_layers_only": False}
# The ViTs-only plan of the third session of 2026-12-07 (attention MatMuls int8 too), for the studies that measured it.
VITS_WITH_ATTENTION_PLAN: dict[str, Any] = {"weight_layers_only": False}
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
# Weights keep 8 bits. ONNX Runtime's (and OpenVINO's) u8 x s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F)
# add pairs of products in 16 bits and can saturate; 7-bit weights (reduce_range) avoid it, and the int8 graphs were
# built so until 2026-12-07 (measured on an AMD EPYC with AVX2 only, whole-network plan, tiny golden pattern: 8-bit
# scales_log p99 0.167, colours 5.2e-3; 7-bit 0.057 and 1.3e-3). With the ViTs alone int8, the weights' rounding is
# most of the error that reaches the disparity (fake-quant, live-disparity full-size weights, golden pattern:
# pre-ReLU error p99 6.4e-4 with 7-bit weights, 4.6e-4 with 8-bit; benchmarks/results/int8_full_live_study.json),
# and 7-bit weights failed the depth row end to end (OpenVINO and ONNX Runtime int8 on that vector: depth p99 0.019
# against 0.015). So 8 bits, as OpenVINO's own quantizer (NNCF) keeps them but for the first layer; the runners warn
# on an x86 CPU without VNNI, where this was not measured.
INT8_WEIGHT_BITS_NOTE = (
    "weights keep 8 bits: with 7 the full preset's depth error on a live disparity exceeded its row (p99 0.019 "
    "against 0.015); on x86 CPUs without VNNI the u8 x s8 int8 kernels may saturate (not measured with this plan; "
    "the runners warn there)"
)
INT8_RULES = ("onnxruntime", "tensorrt")  # whose Q/DQ conventions the int8 graph follows (reduce_precision)
# quantize_int8's settings per rule set: ONNX Runtime's (uint8 asymmetric activations, int32 biases; the onnx and
# openvino targets) and TensorRT's (int8 symmetric activations, fp32 biases, the Gaussian heads fp32).
ONNXRUNTIME_INT8_OPTIONS: dict[str, Any] = {
    "activations": "uint8",
    "excluded_modules": INT8_EXCLUDED_MODULES,
}
TENSORRT_INT8_OPTIONS: dict[str, Any] = {
    "activations": "int8",
    "extra_options": {"QuantizeBias": False},
    "excluded_modules": TENSORRT_INT8_EXCLUDED_MODULES,
}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"


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
        paths = module_paths(node_namespace(node) or "")
        in_module = any(path == module or path.endswith("." + module) for path in paths for module in modules)
        if regions[node.name] == REGION_TAIL or in_module:
            excluded.append(node.name)
    return excluded


def in_modules(node: onnx.NodeProto, modules: Sequence[str]) -> bool:
    """Whether the node was traced inside one of ``modules`` (module paths as in the state_dict)."""
    innermost = module_paths(node_namespace(node) or "")[-1:]
    return any(f".{module}." in f".{path}." for path in innermost for module in modules)


def quantized_nodes(
    graph: onnx.GraphProto,
    op_types: Sequence[str] = INT8_OP_TYPES,
    excluded: Collection[str] | None = None,
    quantized_modules: Sequence[str] | None = INT8_QUANTIZED_MODULES,
    weight_layers_only: bool = INT8_WEIGHT_LAYERS_ONLY,
) -> list[str]:
    """Names of the nodes int8 quantizes: ``op_types`` nodes inside ``quantized_modules`` (None: anywhere in the
    network), minus ``excluded`` (node names; default: :func:`excluded_nodes` with the ONNX Runtime rules).
    ``weight_layers_only``: only nodes that read a weight (an initializer), so not the attention MatMuls."""
    excluded = set(excluded_nodes(graph) if excluded is None else excluded)
    weights = {t.name for t in graph.initializer} if weight_layers_only else set()
    return [
        node.name
        for node in graph.node
        if (not op_types or node.op_type in op_types)  # no op types: every op type (a study's setting)
        and node.name not in excluded
        and (quantized_modules is None or in_modules(node, quantized_modules))
        and (not weight_layers_only or any(name in weights for name in node.input))
    ]


def calibration_tensors(model: onnx.ModelProto, nodes: Sequence[str], outputs: bool = False) -> list[str]:
    """Float activations the quantizer needs ranges for: the inputs of ``nodes`` (names), and their outputs when
    ``outputs`` (ONNX Runtime's default placement; int8 here quantizes inputs only)."""
    import onnx

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    weights = {t.name for t in graph.initializer}
    wanted = set(nodes)
    names: dict[str, None] = {}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for name in (*node.input, *(node.output if outputs else ())):
            if name and name not in weights and types.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                names[name] = None
    return list(names)


def planned_calibration_tensors(fp32_path: Path) -> list[str]:
    """The activations the int8 plan (:func:`quantize_int8`'s defaults) calibrates in the fp32 graph at a path."""
    model = _load_graph_only(fp32_path)
    return calibration_tensors(model, quantized_nodes(model.graph))


# Who runs the calibration graph (``--calib-runtime``). Full preset, 2-core Xeon with AMX: OpenVINO with the bf16
# hint ~60 s a photo, the export at 9.6 GB; ONNX Runtime fp32 110-250 s a photo, the export at 15.5 GB, a figure
# that also held the 3.6 GB the exporter leaked then (benchmarks/results/export_memory_full.json,
# docs/benchmarks.md). Its ranges come from bf16 activations: against ONNX Runtime's fp32 ranges (full preset,
# 5 photos, 833 tensors) the range ends differ by a median 0.11 %, p99 0.49 %, worst 1.75 % of the tensor's range
# (one uint8 step is 0.39 %). "auto" = openvino when installed.
CALIBRATION_RUNTIMES = ("auto", "openvino", "onnxruntime")


def resolve_calibration_runtime(choice: str) -> str:
    """``auto`` -> openvino when it is installed, else onnxruntime; an explicit choice must be installed."""
    import importlib.util

    if choice not in CALIBRATION_RUNTIMES:
        raise ConversionError(f"calibration runtime must be one of {', '.join(CALIBRATION_RUNTIMES)}, not {choice!r}")
    installed = importlib.util.find_spec("openvino") is not None
    if choice == "auto":
        return "openvino" if installed else "onnxruntime"
    if choice == "openvino" and not installed:
        raise MissingDependencyError("openvino", "openvino", "calibrating with --calib-runtime openvino")
    return choice


def _augmented_with_reductions(fp32_path: Path, tensors: Sequence[str]) -> tuple[Path, list[str]]:
    """A weight-less copy of the fp32 graph with a ReduceMin / ReduceMax pair right after each tensor, saved beside
    the fp32 model (so it reads the same external data file); returns its path and the reductions' output names."""
    import onnx
    from onnx import helper

    model = onnx.load(str(fp32_path), load_external_data=False)
    graph = model.graph
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input, *graph.output)}
    axes_inputs: dict[int, str] = {}
    after: dict[int, list[onnx.NodeProto]] = {}
    outputs = []
    for name in tensors:
        rank = ranks.get(name, 0)
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{name}__calib_{op}"
            steps = []
            if rank >= 3:
                # Two steps, the same extreme: first over every axis but the channels (axis 1) with the dims kept,
                # then over the small rest. OpenVINO reduces a blocked-layout activation over its spatial axes in
                # place but copies it to reduce it to one value: measured ~2x cheaper (a 38M-value conv output,
                # bf16, 2 cores: 42 ms against 81 ms for the pair).
                if rank not in axes_inputs:
                    axes_inputs[rank] = f"calib_axes_rank{rank}"
                    axes = [0, *range(2, rank)]
                    graph.initializer.append(
                        helper.make_tensor(axes_inputs[rank], onnx.TensorProto.INT64, [len(axes)], axes)
                    )
                partial = f"{out}__partial"
                steps.append(helper.make_node(op, [name, axes_inputs[rank]], [partial], name=partial, keepdims=1))
                steps.append(helper.make_node(op, [partial], [out], name=out, keepdims=0))
            else:
                steps.append(helper.make_node(op, [name], [out], name=out, keepdims=0))
            after.setdefault(producer_index.get(name, -1), []).extend(steps)
            outputs.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, []))
    nodes = list(after.get(-1, []))
    for index, node in enumerate(graph.node):
        nodes.append(node)
        nodes.extend(after.get(index, []))
    del graph.node[:]
    graph.node.extend(nodes)
    # The reductions are the only outputs, in graph order. OpenVINO orders execution depth first from the outputs:
    # with the network's own outputs first, every reduction ran after the whole network, no activation could be
    # freed, and compiling the full preset asked for 91 GB. (The tail that feeds only those outputs is pruned.)
    del graph.output[:]
    graph.output.extend(outputs)
    augmented = fp32_path.with_name(fp32_path.stem + ".calibration.onnx")
    onnx.save_model(model, str(augmented))  # weights stay in the fp32 model's external file (or inline when small)
    return augmented, [o.name for o in outputs]


def _onnxruntime_session(augmented: Path, names: list[str]) -> tuple[Callable[[dict], list], str]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = os.cpu_count() or 1
    # ORT's default order emits the graph outputs' producers depth first, so every reduction ran after the whole
    # network and kept all 700+ activations alive (22.7 GB and killed at full size). The priority-based order is a
    # Kahn sort that breaks ties by node index: each reduction, placed right after its producer, runs next.
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    session = onnxruntime.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    return (lambda feeds: session.run(names, feeds)), f"onnxruntime {onnxruntime.__version__} fp32"


def openvino_calibration_model(augmented: Path, extra_config: dict[str, str] | None = None) -> tuple[Any, str]:
    """The augmented graph compiled as the calibration pass runs it (bf16 hint, one stream, the runner's threads),
    and its label; ``extra_config`` adds OpenVINO properties (the profiling benchmark turns on ``PERF_COUNT``)."""
    import openvino as ov

    from sharp_export.runtime.base import omp_threads

    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})  # as the runner: the compiled model keeps its own weights only
    config = {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": "1", **(extra_config or {})}
    if threads := omp_threads():  # else OpenVINO's choice, as the runner
        config["INFERENCE_NUM_THREADS"] = str(threads)
    # Compiled from an OpenVINO IR with fp16 weights, not from the fp32 ONNX: the CPU plugin keeps the constants it
    # was given beside its own bf16 copies, so fp32 ones cost 2.4 GB more (full preset: the OpenVINO int8 export's
    # peak 9.3 -> 6.8 GB; the pass ~55-60 s a photo either way). Its ranges against the fp32-weight pass's (perturbed
    # weights, 5 sample photos, 834 tensors): 370 identical, p99 1.3 %, worst 2.5 % of a tensor's range, the size of
    # the bf16 pass's own difference from ONNX Runtime fp32 (worst 1.75 %, docs/benchmarks.md).
    ir = augmented.with_suffix(".xml")
    try:
        ov.save_model(ov.convert_model(str(augmented)), str(ir), compress_to_fp16=True)
        compiled = core.compile_model(core.read_model(str(ir)), "CPU", config)
    finally:
        ir.unlink(missing_ok=True)
        ir.with_suffix(".bin").unlink(missing_ok=True)
    effective = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    precision = "bf16" if ("bf16" in effective or "bfloat16" in effective) else "f32"  # f32 on CPUs without bf16
    return compiled, f"openvino {ov.__version__} {precision} (fp16 weights)"


def _openvino_request(augmented: Path, names: list[str]) -> tuple[Callable[[dict], list], str]:
    compiled, label = openvino_calibration_model(augmented)
    request = compiled.create_infer_request()

    def run(feeds: dict) -> list:
        request.infer(feeds)
        return [request.get_tensor(name).data.copy() for name in names]

    return run, label


def minmax_ranges(
    fp32_path: Path, calibration: CalibrationSet, tensors: Sequence[str], runtime: str = "onnxruntime"
) -> tuple[dict[str, tuple], str]:
    """MinMax calibration with a bounded memory footprint: tensor name -> (lowest, highest) over the set, and the
    runtime that computed them (e.g. "openvino 2026.4 bf16", for the manifest).

    onnxruntime's own MinMax calibrator holds a second in-memory copy of the weights, runs its session with the
    memory arena on and graph optimisations off, and measured 23.8 GB (killed) on the full preset here. This one
    runs a copy of the graph whose only outputs are a ReduceMin / ReduceMax pair per tensor
    (:func:`_augmented_with_reductions`), so no activation outlives its consumers; ``runtime`` ("onnxruntime":
    fp32, arena off; "openvino": bf16 hint where the CPU has it) runs it.
    """
    import numpy as np

    augmented, names = _augmented_with_reductions(fp32_path, tensors)
    try:
        run, runtime_label = (_openvino_request if runtime == "openvino" else _onnxruntime_session)(augmented, names)
        echo(f"    calibration runs on {runtime_label} ({len(tensors)} tensors), RSS {rss_gb():.1f} GB")
        low = {t: np.inf for t in tensors}
        high = {t: -np.inf for t in tensors}
        for number, (image, factor) in enumerate(
            zip(calibration.images, calibration.disparity_factors, strict=True), 1
        ):
            start = time.perf_counter()
            found = dict(zip(names, run({"image": image.numpy(), "disparity_factor": factor.numpy()}), strict=True))
            for name in tensors:
                low[name] = min(low[name], float(found[f"{name}__calib_ReduceMin"]))
                high[name] = max(high[name], float(found[f"{name}__calib_ReduceMax"]))
            echo(
                f"    calibration {number}/{len(calibration)}: {time.perf_counter() - start:.1f} s, "
                f"RSS {rss_gb():.1f} GB"
            )
        del run
    finally:
        augmented.unlink(missing_ok=True)
    ranges = {t: (np.array(low[t], dtype=np.float32), np.array(high[t], dtype=np.float32)) for t in tensors}
    return ranges, runtime_label


def _load_graph_only(fp32_path: Path) -> onnx.ModelProto:
    import onnx

    return onnx.load(str(fp32_path), load_external_data=False)


# Opt-in cache of MinMax ranges: a folder named by this variable keeps one JSON per (fp32 graph, weights, calibration
# set, op types), so re-exports of the same weights (another target, --float-ops, the TensorRT rules) skip the
# calibration pass (~2 fp32 forwards per photo: 4-7 minutes per photo at full size on 2 cores).
CALIBRATION_CACHE_ENV = "SHARP_EXPORT_CALIBRATION_CACHE"


def ranges_cache_key(
    fp32_path: Path, calibration: CalibrationSet, tensors: Sequence[str], runtime: str = "onnxruntime"
) -> str:
    """sha256 over the fp32 graph's nodes and initializer names / shapes, its external data file, the calibration
    set's hash, the calibrated tensors' names and the runtime (bf16 and fp32 activations give slightly different
    ranges). Not over the model's metadata_props (they carry the export command) nor each node's metadata_props /
    doc_string: the exporter writes there the Python stack trace and class paths of the code that traced it, so the
    key would change with the checkout's folder and with any line moved in the model's source."""
    import hashlib

    import onnx

    from sharp_export.reference.hashing import sha256_file

    digest = hashlib.sha256()
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    for node in graph.node:
        bare = onnx.NodeProto()
        bare.CopyFrom(node)
        del bare.metadata_props[:]
        bare.ClearField("doc_string")
        digest.update(bare.SerializeToString())
    for tensor in graph.initializer:
        digest.update(f"{tensor.name}:{list(tensor.dims)}:{tensor.data_type}".encode())
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            digest.update(tensor.raw_data)
    data = fp32_path.with_name(fp32_path.name + ".data")
    digest.update((sha256_file(data) if data.exists() else "inline").encode())
    digest.update(f"{calibration.sha256}:{','.join(sorted(tensors))}".encode())
    if runtime != "onnxruntime":  # keys written before the runtime choice existed stay valid for onnxruntime
        digest.update(runtime.encode())
    if runtime == "openvino":  # since the pass compiles fp16 weights (_openvino_request): not the f32-weight ranges
        digest.update(b":fp16-weights")
    return digest.hexdigest()


def cached_minmax_ranges(
    fp32_path: Path, calibration: CalibrationSet, tensors: Sequence[str], runtime: str = "onnxruntime"
) -> tuple[dict, str]:
    """:func:`minmax_ranges`, read from / written to ``$SHARP_EXPORT_CALIBRATION_CACHE`` when that is set; returns
    the ranges and where they came from (for the manifest)."""
    import json

    import numpy as np

    folder = os.environ.get(CALIBRATION_CACHE_ENV)
    if not folder:
        ranges, label = minmax_ranges(fp32_path, calibration, tensors, runtime)
        return ranges, f"computed on {label}"
    key = ranges_cache_key(fp32_path, calibration, tensors, runtime)
    path = Path(folder) / f"minmax_{key}.json"
    if path.is_file():
        echo(f"    int8: calibration ranges read from {path} (${CALIBRATION_CACHE_ENV})")
        found = json.loads(path.read_text())
        ranges = {t: (np.array(lo, dtype=np.float32), np.array(hi, dtype=np.float32)) for t, (lo, hi) in found.items()}
        return ranges, f"cache {path.name} ({runtime})"
    ranges, label = minmax_ranges(fp32_path, calibration, tensors, runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({t: [float(lo), float(hi)] for t, (lo, hi) in ranges.items()}))
    tmp.replace(path)
    return ranges, f"computed on {label}, cached as {path.name}"


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
    quantized_modules: Sequence[str] | None = INT8_QUANTIZED_MODULES,
    outputs_float: bool = True,
    weight_layers_only: bool = INT8_WEIGHT_LAYERS_ONLY,
    extra_options: dict[str, Any] | None = None,
    activations: str = "uint8",
    reduce_range: bool = False,
    calibration_runtime: str = "auto",
) -> dict[str, Any]:
    """Static QDQ int8 of the fp32 model at ``fp32_path`` into ``out_path``; returns manifest details.

    ``quantized_modules``: only ``op_types`` nodes inside these modules are quantized (None: the whole network but
    ``excluded_modules`` and the tail). ``outputs_float``: Q/DQ only on what a quantized node reads; its output stays
    float unless another quantized node reads it. ``weight_layers_only``: leave the nodes without a weight (the
    attention MatMuls) float.

    ``calibration_runtime``: who runs the MinMax pass (CALIBRATION_RUNTIMES; "auto" = openvino when installed).

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
    model = onnx.load(str(fp32_path), load_external_data=False)
    excluded = excluded_nodes(model.graph, excluded_modules)
    nodes = quantized_nodes(model.graph, op_types, excluded, quantized_modules, weight_layers_only)
    tensors = calibration_tensors(model, nodes, outputs=not outputs_float)
    chosen = set(nodes)
    counts = Counter(n.op_type for n in model.graph.node if n.name in chosen)
    del model
    start = time.perf_counter()
    where = "in " + ", ".join(m.rsplit(".", 1)[-1] for m in quantized_modules) if quantized_modules else "network"
    echo(
        f"    int8: quantize_static (QDQ, {method}, {len(calibration)} calibration images, "
        f"{sum(counts.values())} {'/'.join(op_types) or 'all'} nodes {where}, {len(tensors)} activations; "
        f"kept float: the rest)"
    )
    reader = calibration_reader(calibration)
    cache = None
    ranges_source = "calibrator of onnxruntime"
    if method == "minmax":
        from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

        cache = out_path.with_name(out_path.name + ".calibration.json")
        runtime = resolve_calibration_runtime(calibration_runtime)
        ranges, ranges_source = cached_minmax_ranges(fp32_path, calibration, tensors, runtime)
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
                nodes_to_quantize=nodes,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                use_external_data_format=external_data,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={
                    "WeightSymmetric": True,
                    "ActivationSymmetric": symmetric,
                    **({"OpTypesToExcludeOutputQuantization": list(op_types)} if outputs_float else {}),
                    **(extra_options or {}),
                },
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
        "calibration_ranges": ranges_source,
        "op_types_quantized": list(op_types),
        "quantized_nodes": dict(counts),
        "quantized_modules": list(quantized_modules) if quantized_modules else "the network",
        "quantized_why": "the encoder's two ViTs only: with the decoders int8 too, the error reaching the disparity "
        "broke depth on a live disparity (issue 33; converters/onnx/quantize.py INT8_QUANTIZED_MODULES)",
        "activation_qdq": "inputs of quantized nodes only" if outputs_float else "inputs and outputs",
        "attention_matmuls": "float (only nodes with a weight are quantized)" if weight_layers_only else "int8",
        "calibrated_tensors": len(tensors),
        "weights": "int8, symmetric, per output channel" + (" (7-bit range)" if reduce_range else ""),
        "reduce_range": reduce_range,
        "activations": ("int8, symmetric (zero point 0)" if symmetric else "uint8, asymmetric")
        + ", per tensor, calibrated",
        "excluded_nodes": excluded,
        "excluded_modules": list(excluded_modules),
        "excluded_why": INT8_EXCLUDED_NOTE,
        "quantize_seconds": round(seconds, 2),
    }
