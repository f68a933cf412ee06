"""fp8 (E4M3FN) Q/DQ for the TensorRT-ready ONNX, rewritten from the TensorRT-rule int8 graph.

Why a rewrite rather than a quantizer run: ONNX Runtime's quantizer derives float8 scales from each tensor's
standard deviation (a Gaussian model, from its Distribution calibrator, which keeps every activation: not
feasible for the full preset in 24 GB), while TensorRT and NVIDIA ModelOpt scale E4M3 by the absolute
maximum, ``scale = amax / 448``. The TensorRT-rule int8 graph (``onnx_quantize.quantize_int8`` with symmetric
int8 activations, zero point 0, fp32 biases) already holds per-tensor activation scales ``amax / 127`` from the
low-memory MinMax pass, and per-channel weight scales. This module keeps every Q/DQ node where it is and changes
only its type and scale:

* **activations:** scale ``x 127 / 448`` (ONNX Runtime's symmetric int8 range is [-127, 127], so
  ``scale * 127`` is the calibrated amax; checked on the weights, where the amax can be recomputed), zero point a
  float8e4m3fn 0;
* **weights:** re-quantized from the fp32 export's own weights (not from the int8 values, which would round
  twice) with ``scale = channel amax / 448``, stored as FLOAT8E4M3FN (round to nearest even, ml_dtypes);
* **opset 19** declared, the first whose QuantizeLinear / DequantizeLinear take float8 (checked by onnx's version
  converter as for bf16: no node may change).

ONNX Runtime's CPU kernels run float8 Q/DQ (as fake quantization: the Conv and MatMul still compute in fp32),
so the fp8 graph's rounding is checked by parity here; TensorRT fuses the same Q/DQ pairs into FP8 kernels on
SM89+ GPUs (Ada, Hopper).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sharp_export.converters.onnx.graph import raise_opset, save_onnx
from sharp_export.errors import ConversionError
from sharp_export.progress import echo, rss_gb

FP8_MAX = 448.0  # largest finite float8e4m3fn value
INT8_SYMMETRIC_MAX = 127.0  # ONNX Runtime's symmetric int8 range is [-127, 127]
FP8_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear accept float8 from opset 19
FLOAT8E4M3FN = 17  # onnx.TensorProto.FLOAT8E4M3FN (onnx is imported lazily)
# The int8-derived weight amax (scale x 127) must match the fp32 weights' amax this closely, else the scale
# convention assumed for the activations is wrong. Measured on the tiny preset: 6e-8 (float32 rounding).
AMAX_CONVENTION_TOLERANCE = 1e-4
QUANTIZED_SUFFIX = "_quantized"  # ONNX Runtime's name for a quantized weight initializer


def _fp8_tensor(name: str, values: Any) -> Any:
    """An onnx FLOAT8E4M3FN initializer from float32 values already scaled into [-448, 448]."""
    import ml_dtypes
    import numpy as np
    from onnx import helper

    data = np.asarray(values, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn)
    return helper.make_tensor(name, FLOAT8E4M3FN, data.shape, data.view(np.uint8).tobytes(), raw=True)


def _channel_amax(weights: Any, axis: int) -> Any:
    import numpy as np

    moved = np.moveaxis(np.abs(weights), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(axis=1)


def int8_qdq_to_fp8(int8_path: Path, fp32_path: Path, out_path: Path, *, external_data: bool) -> dict[str, Any]:
    """Rewrite the TensorRT-rule int8 Q/DQ model at ``int8_path`` to fp8 at ``out_path``; returns manifest details.

    ``fp32_path``: the fp32 export the int8 model was quantized from (the weights are re-quantized from it).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_model

    start = time.perf_counter()
    model = onnx.load(str(int8_path), load_external_data=False)
    opset = raise_opset(model, FP8_MIN_OPSET, "fp8")
    load_external_data_for_model(model, str(int8_path.parent))
    graph = model.graph
    inits = {tensor.name: tensor for tensor in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    weight_nodes = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    if not weight_nodes:
        raise ConversionError("fp8: the int8 graph has no quantized weight", path=int8_path)

    fp32 = onnx.load(str(fp32_path))  # the fp32 weights, by their original names
    fp32_weights = {tensor.name: tensor for tensor in fp32.graph.initializer}
    replacements: dict[str, Any] = {}
    worst_amax_mismatch = 0.0
    for node in weight_nodes:
        quantized, scale_name, zero_name = node.input[0], node.input[1], node.input[2]
        original = quantized.removesuffix(QUANTIZED_SUFFIX)
        if original == quantized or original not in fp32_weights:
            raise ConversionError(f"fp8: no fp32 weight {original!r} for {quantized!r}", path=fp32_path)
        weights = numpy_helper.to_array(fp32_weights[original]).astype(np.float32)
        int8_scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        per_channel = int8_scale.ndim == 1 and int8_scale.size > 1
        amax = _channel_amax(weights, axis) if per_channel else np.array(np.abs(weights).max(), dtype=np.float32)
        mismatch = np.abs(int8_scale * INT8_SYMMETRIC_MAX - amax) / np.maximum(amax, 1e-12)
        worst_amax_mismatch = max(worst_amax_mismatch, float(mismatch.max()))
        scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
        shape = [1] * weights.ndim
        if per_channel:
            shape[axis] = -1
        replacements[quantized] = _fp8_tensor(quantized, weights / scale.reshape(shape))
        replacements[scale_name] = numpy_helper.from_array(scale.reshape(int8_scale.shape), scale_name)
        replacements[zero_name] = _fp8_tensor(zero_name, np.zeros(int8_scale.shape, dtype=np.float32))
    del fp32, fp32_weights
    if worst_amax_mismatch > AMAX_CONVENTION_TOLERANCE:
        raise ConversionError(
            f"fp8: the int8 weight scales are not amax / 127 (worst relative mismatch {worst_amax_mismatch:.2e}); "
            "the activation scales cannot be converted",
            path=int8_path,
        )
    activation_scales = 0
    for node in qdq:
        scale_name, zero_name = node.input[1], node.input[2]
        if scale_name in replacements:
            continue  # a weight, or an activation scale already converted (Q and DQ share it)
        int8_scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        fp8_scale = (int8_scale * INT8_SYMMETRIC_MAX / FP8_MAX).astype(np.float32)
        replacements[scale_name] = numpy_helper.from_array(fp8_scale, scale_name)
        replacements[zero_name] = _fp8_tensor(zero_name, np.zeros(int8_scale.shape, dtype=np.float32))
        activation_scales += 1
    for index, tensor in enumerate(graph.initializer):
        if tensor.name in replacements:
            graph.initializer[index].CopyFrom(replacements[tensor.name])
    for value in graph.value_info:  # the quantized tensors' declared type follows the zero points
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT8:
            value.type.tensor_type.elem_type = FLOAT8E4M3FN
    save_onnx(model, out_path, external_data)
    del model, graph, inits, replacements
    seconds = time.perf_counter() - start
    echo(
        f"    fp8: {len(weight_nodes)} weights re-quantized, {activation_scales} activation scales, "
        f"{seconds:.1f} s, RSS {rss_gb():.1f} GB"
    )
    return {
        "fp8": "float8e4m3fn Q/DQ: the TensorRT-rule int8 graph's Q/DQ nodes retyped (converters/onnx_fp8.py)",
        "fp8_weights": "float8e4m3fn, per output channel, scale = channel amax / 448, from the fp32 weights",
        "fp8_activations": "float8e4m3fn, per tensor, scale = calibrated amax / 448 (int8 scale x 127 / 448)",
        "fp8_weight_nodes": len(weight_nodes),
        "fp8_activation_scales": activation_scales,
        "fp8_amax_convention_check": f"int8 weight scale x 127 vs fp32 amax: worst relative {worst_amax_mismatch:.1e}",
        "opset_change": opset,
        "fp8_seconds": round(seconds, 2),
    }
