"""What TensorRT-RTX 1.7 builds, on the CPU, from the tiny preset's TensorRT-ready ONNX: three questions.

    python benchmarks/study_tensorrt_rtx_tiny.py

1. **bf16 ConvTranspose.** The tensorrt target's bf16 ONNX fails to build ("Could not infer output types for
   operation ... deconv ... bf16"). Is it our cast plan or a TensorRT-RTX limit? One ConvTranspose alone in a 3-node
   graph (Cast -> ConvTranspose -> Cast) in fp32 / fp16 / bf16, with and without bias, five kernel shapes, every
   compute capability; and a bf16 Conv for comparison.
2. **Precision x compute capability.** Every precision of the tiny ONNX (the tensorrt target's bf16 plan and the
   tensorrt-rtx one, which keeps ConvTranspose fp32) built for sm75 ... sm121 and portable: built or the builder's
   first error line, engine size, build seconds. This is the table ``converters/tensorrt_rtx/build.py`` checks.
3. **Why the int8 engine is larger than fp16.** Per precision: the engine's bytes, how many are CUDA C++ source
   text (TensorRT-RTX ships kernel source and compiles it for the GPU at first run), all printable text, the
   engine's zlib size, the ONNX's weight bytes by dtype, and whether the int8 weights are in the engine byte for
   byte (first 64 bytes of each tensor) or as dequantized fp32 / fp16 copies.

Tiny preset, golden perturbed weights; int8 / fp8 calibrated on the 5 bundled sample photos (TensorRT's Q/DQ rules).
Writes benchmarks/results/tensorrt_rtx_study_tiny.json. ~5-10 minutes on 2 cores (about 50 builds).
"""

from __future__ import annotations

import re
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WEIGHTS_TINY, save, tiny_pattern  # noqa: E402

from sharp_export.converters.onnx.export import export_onnx  # noqa: E402
from sharp_export.converters.onnx.precision import reduce_precision  # noqa: E402
from sharp_export.converters.tensorrt_rtx.build import COMPUTE_CAPABILITIES, run_builder  # noqa: E402
from sharp_export.converters.tensorrt_rtx.target import BF16_KEEP_FP32_OPS  # noqa: E402

CAPABILITIES = tuple(COMPUTE_CAPABILITIES)  # sm75 ... sm121, portable
SOURCE_PREFIXES = (b"__forceinline", b"template<>", b"#ifdef", b"      __devi")


def build(path: Path, capability: str, engine: Path | None = None) -> dict:
    record = run_builder(path, engine, compute_capabilities=[capability], batch_shapes=None, resolution=384)
    row = {"status": record["status"]}
    if record["status"] == "built":
        row.update(engine_mb=round(record["engine_bytes"] / 1e6, 2), build_s=record["build_seconds"])
    else:
        row["error"] = record["error"][:300]
    return row


def brief(row: dict) -> str:
    """'built', or 'build_failed: <the builder's reason>' (the part after Myelin's bracket, cut short)."""
    if row["status"] == "built":
        return "built"
    error = row["error"]
    reason = error.split("] ", 1)[1] if "] " in error else error
    return f"{row['status']}: {reason[:90]}"


def deconv_graph(path: Path, dtype: int, bias: bool, cin: int, cout: int, kernel: int, stride: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout, kernel, kernel)).astype(np.float32), "w32")]
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=dtype), helper.make_node("Cast", ["w32"], ["w"], to=dtype)]
    inputs = ["xh", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b32"))
        nodes.append(helper.make_node("Cast", ["b32"], ["b"], to=dtype))
        inputs.append("b")
    op = dict(strides=[stride, stride], kernel_shape=[kernel, kernel])
    nodes += [helper.make_node("ConvTranspose", inputs, ["yh"], name="deconv", **op),
              helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)]  # fmt: skip
    graph = helper.make_graph(nodes, "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), str(path))


def conv_graph(path: Path, dtype: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((56, 64, 3, 3)).astype(np.float32), "w32")
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=dtype), helper.make_node("Cast", ["w32"], ["w"], to=dtype),
             helper.make_node("Conv", ["xh", "w"], ["yh"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)]  # fmt: skip
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), str(path))


def question_1(tmp: Path) -> dict:
    from onnx import TensorProto

    rows = {}
    types = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
    shapes = ((64, 56, 2, 2), (64, 64, 2, 2), (64, 56, 3, 1), (16, 16, 4, 2), (64, 56, 1, 1))
    for name, dtype in types.items():
        for bias in (False, True):
            for cin, cout, kernel, stride in shapes:
                path = tmp / "deconv.onnx"
                deconv_graph(path, dtype, bias, cin, cout, kernel, stride)
                key = f"ConvTranspose {name} {'bias' if bias else 'no bias'} {cin}->{cout} k{kernel} s{stride}"
                rows[key] = {cc: brief(build(path, cc)) for cc in (("sm89",) if name != "bf16" else CAPABILITIES)}
                print(key, rows[key], flush=True)
    for name in ("fp32", "bf16"):
        conv_graph(tmp / "conv.onnx", types[name])
        rows[f"Conv {name} 64->56 k3"] = {cc: brief(build(tmp / "conv.onnx", cc)) for cc in ("sm89", "portable")}
    return rows


def tiny_onnx(tmp: Path) -> dict[str, Path]:
    """fp32 export once, then every precision through the shared step's rewrite (TensorRT's int8 rules)."""
    from sharp_export.reference.checkpoint import build_model

    pattern = tiny_pattern()
    model = build_model("tiny", WEIGHTS_TINY).model.eval()
    fp32 = tmp / "fp32"
    fp32.mkdir()
    export_onnx(model, pattern.example, pattern.io, fp32, opset=18, external_data=True)
    paths = {"fp32": fp32 / "model.onnx"}
    variants = {"fp16": ("fp16", None), "bf16 (tensorrt plan)": ("bf16", None),
                "bf16 (tensorrt-rtx plan: ConvTranspose fp32)": ("bf16", BF16_KEEP_FP32_OPS),
                "int8": ("int8", None), "fp8": ("fp8", None)}  # fmt: skip
    for index, (name, (precision, keep)) in enumerate(variants.items()):
        out = tmp / f"v{index}"
        out.mkdir()
        reduce_precision(precision, fp32, out, pattern.io, external_data=True, int8_rules="tensorrt",
                         calibration=pattern.calibration if precision in ("int8", "fp8") else None,
                         keep_fp32_ops=keep)  # fmt: skip
        paths[name] = out / "model.onnx"
    return paths


def engine_anatomy(engine: Path, onnx_path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    data = engine.read_bytes()
    texts = re.findall(rb"[\x20-\x7e]{8,}", data)
    source = sum(len(t) for t in texts if t.startswith(SOURCE_PREFIXES))
    model = onnx.load(str(onnx_path))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_bytes: dict[str, int] = {}
    for array in arrays.values():
        weight_bytes[str(array.dtype)] = weight_bytes.get(str(array.dtype), 0) + array.nbytes
    row = {
        "engine_mb": round(len(data) / 1e6, 2),
        "cuda_source_text_mb": round(source / 1e6, 2),
        "printable_text_mb": round(sum(len(t) for t in texts) / 1e6, 2),
        "zlib_mb": round(len(zlib.compress(data, 6)) / 1e6, 2),
        "onnx_weight_mb_by_dtype": {k: round(v / 1e6, 3) for k, v in weight_bytes.items()},
    }
    int8 = {n: a for n, a in arrays.items() if a.dtype == np.int8 and a.size >= 256}
    if int8:
        row["int8_weight_tensors"] = len(int8)
        row["int8_weights_found_byte_exact"] = sum(a.tobytes()[:64] in data for a in int8.values())
        dequantized = found32 = found16 = 0
        for node in model.graph.node:
            if node.op_type != "DequantizeLinear" or node.input[0] not in int8:
                continue
            q, scale = int8[node.input[0]].astype(np.float32), arrays[node.input[1]].astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            w = q * scale.reshape(shape)
            dequantized += 1
            found32 += w.tobytes()[:64] in data
            found16 += w.astype(np.float16).tobytes()[:32] in data
        row["dequantized_copies_found"] = {"fp32": found32, "fp16": found16, "of": dequantized}
    return row


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rtx-study-") as scratch:
        tmp = Path(scratch)
        q1 = question_1(tmp)
        paths = tiny_onnx(tmp)
        q2 = {name: {cc: build(path, cc) for cc in CAPABILITIES} for name, path in paths.items()}
        for name, row in q2.items():
            print(name, {cc: r["status"] for cc, r in row.items()}, flush=True)
        q3 = {}
        for name in ("fp32", "fp16", "bf16 (tensorrt-rtx plan: ConvTranspose fp32)", "int8", "fp8"):
            engine = tmp / "anatomy.engine"
            build(paths[name], "sm89", engine)
            q3[name] = engine_anatomy(engine, paths[name])
            print(name, q3[name], flush=True)
    save(
        "tensorrt_rtx_study_tiny",
        {
            "what": "TensorRT-RTX 1.7 ahead-of-time builds on the CPU (no GPU): bf16 ConvTranspose alone, precision x "
            "compute capability on the tiny TensorRT-ready ONNX, and the anatomy of the sm89 engines",
            "weights": "tiny golden perturbed; int8 / fp8 calibrated on the 5 sample photos",
            "q1_bf16_convtranspose_alone": q1,
            "q2_precision_by_compute_capability": q2,
            "q3_engine_anatomy_sm89": q3,
        },
    )


if __name__ == "__main__":
    main()
