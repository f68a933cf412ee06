"""ONNX --precision fp16 and int8 on the tiny preset (golden perturbed weights): graphs, manifests and parity.

Two exports (module fixtures, ~20 s each on 2 cores) feed every test. Bounds are about 3x the worst cases
measured on this machine (benchmarks/results/onnx_precision_tiny.json, onnx_precision_study_tiny.json).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sharp_export.artifact import read_manifest
from sharp_export.commands.export import make_target_command
from sharp_export.converters.onnx.graph import REGION_TAIL, node_regions
from sharp_export.parity.harness import check_artifact
from sharp_export.parity.lpips import load_lpips
from sharp_export.registry import get_target, load_tolerances, open_runner, resolve_artifact
from sharp_export.samples import sample_image_path

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def invoke(args: list[str]):
    return CliRunner().invoke(make_target_command(get_target("onnx")), args)


@pytest.fixture(scope="module")
def weights(golden_dir):
    return golden_dir / "weights_perturbed.safetensors"


@pytest.fixture(scope="module")
def fp16(tmp_path_factory, weights):
    out = tmp_path_factory.mktemp("fp16") / "tiny-fp16"
    result = invoke(["--preset", "tiny", "-c", str(weights), "-o", str(out), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def int8(tmp_path_factory, weights):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    args = ["--preset", "tiny", "-c", str(weights), "-o", str(out), "--precision", "int8", "--calib-data", "samples",
            "--calib-size", "4", "--external-data", "always"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "CALIBRATION: using the 4 bundled scikit-image sample photos" in result.stderr
    return out


def _graph(artifact):
    return onnx.load(str(artifact / "model.onnx"), load_external_data=False).graph


def _parity_p99(artifact) -> dict[str, float]:
    document = json.loads((artifact / "parity.json").read_text())
    return {a["metric"]: a["p99"] for a in document["attributes"] if a.get("tolerance") is not None}


def test_fp16_weights_are_fp16_and_the_tail_stays_fp32(fp16):
    manifest = read_manifest(fp16)
    assert manifest.precision == "fp16" and manifest.parity["status"] == "passed"
    graph = _graph(fp16)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    weights = [t for t in graph.initializer if t.data_type in (FLOAT, HALF) and np.prod(t.dims) > 64]
    assert sum(t.data_type == HALF for t in weights) > 0.9 * len(weights)
    assert all(types[v.name] == FLOAT for v in (*graph.input, *graph.output))  # I/O stays fp32
    regions = node_regions(graph)
    tail = [n for n in graph.node if regions[n.name] == REGION_TAIL]
    tail_types = {n.op_type for n in tail}
    assert {"ReduceMin", "Reciprocal", "Softplus", "Log", "Sigmoid", "Pow", "Clip", "Div"} <= tail_types
    for node in tail:  # every float tensor a tail node produces is float32
        assert all(types.get(o, FLOAT) != HALF for o in node.output), node.name
    for node in graph.node:
        if node.op_type == "InstanceNormalization":  # the GroupNorm statistics
            assert types[node.output[0]] == FLOAT, node.name
        if node.op_type == "Conv":
            assert types[node.output[0]] == HALF, node.name
    plan = manifest.conversion["precision_plan"]
    assert plan["kept_fp32_regions"] == ["tail", "group_norm"] and "tail kept fp32" in plan["kept_fp32_why"]
    assert plan["kept_fp32_op_types"]["ReduceMin"] == 1 and len(plan["kept_fp32_nodes"]) == plan["nodes_fp32"]
    assert manifest.conversion["file_bytes"]["model.onnx"] == (fp16 / "model.onnx").stat().st_size


def test_fp16_parity_numbers(fp16):
    # Measured worst p99 over the pattern + 5 photos: z 6.3e-4, colours 2.5e-5, opacities 2.4e-4.
    p99 = _parity_p99(fp16)
    assert 0 < p99["means_rel_depth"] < 2e-3 and 0 < p99["colors_abs"] < 1e-4 and p99["opacities_abs"] < 1e-3
    assert read_manifest(fp16).conversion["size_vs_fp32"] < 0.75  # tiny: node metadata is half the file


def test_int8_graph_quantizes_only_what_the_two_vits_read(int8):
    """Q/DQ only on the inputs of the ViTs' layers with weights (quantize.INT8_QUANTIZED_MODULES,
    INT8_WEIGHT_LAYERS_ONLY): no other Conv / MatMul (the attention MatMuls included), no tail node and no quantized
    node's output goes through int8 rounding."""
    from sharp_export.converters.onnx.quantize import INT8_QUANTIZED_MODULES, in_modules

    manifest = read_manifest(int8)
    assert manifest.precision == "int8" and manifest.parity["status"] == "passed"
    graph = _graph(int8)
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    regions = node_regions(graph)
    vit_compute = {
        n.name
        for n in graph.node
        if n.op_type in ("Conv", "MatMul")
        and in_modules(n, INT8_QUANTIZED_MODULES)
        and any(
            i in inits
            or (i in producer and producer[i].op_type == "DequantizeLinear" and producer[i].input[0] in inits)
            for i in n.input[1:2]
        )  # fmt: skip
    }
    activation_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert len(activation_q) == manifest.conversion["calibrated_tensors"] == 34  # one per quantized layer
    for q in activation_q:
        readers = consumers[q.input[0]]
        # Each quantized tensor is read by a ViT Conv / MatMul (not quantized for what wrote it) ...
        assert any(r.name in vit_compute for r in readers if r is not q) or any(
            c.name in vit_compute for dq in consumers[q.output[0]] for c in consumers[dq.output[0]]
        ), q.name
        for dq in consumers[q.output[0]]:
            assert dq.op_type == "DequantizeLinear", q.name
            for reader in consumers[dq.output[0]]:
                assert regions[reader.name] != REGION_TAIL, reader.name
                # ... and only ViT nodes read the rounded value, but for one shared tensor: the image resized to
                # 384 px, which the image ViT's patch embedding reads and the patch batch concatenates (a 2nd
                # rounding of an 8-bit photo).
                assert reader.name in vit_compute or reader.op_type == "Concat", reader.name
    outside = [
        n.name
        for n in graph.node
        if n.op_type in ("Conv", "MatMul")
        and n.name not in vit_compute
        and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    assert not outside, outside[:5]
    # tiny: 2 ViTs x 4 blocks x 4 linear MatMuls (qkv, proj, two MLP layers), 2 patch embeddings; the two attention
    # products of each block stay float.
    assert manifest.conversion["quantized_nodes"] == {"Conv": 2, "MatMul": 32}
    assert manifest.conversion["attention_matmuls"].startswith("float") and len(vit_compute) == 34
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}
    assert set(types.values()) == {FLOAT}


def test_int8_warns_on_an_x86_cpu_without_vnni(int8, fp16, monkeypatch, capsys):
    """8-bit weights can saturate ONNX Runtime's int8 kernels without VNNI: the runner says so on such a CPU, for
    int8 artifacts only."""
    from sharp_export.runtime import base

    monkeypatch.setattr(base, "x86_without_vnni", lambda: True)
    for artifact, warnings in ((int8, 1), (fp16, 0)):
        with open_runner(artifact):
            pass
        assert capsys.readouterr().err.count("warning: this CPU has no VNNI") == warnings
    assert "8 bits" in read_manifest(int8).conversion["weight_bits_why"]


def test_int8_manifest_records_the_calibration(int8):
    conversion = read_manifest(int8).conversion
    calibration = conversion["calibration"]
    assert calibration["source"] == "samples" and calibration["size"] == 4 and len(calibration["sha256"]) == 64
    assert conversion["calibration_method"] == "minmax" and conversion["op_types_quantized"] == ["Conv", "MatMul"]
    assert conversion["activation_qdq"] == "inputs of quantized nodes only"
    assert conversion["weights"].startswith("int8, symmetric, per output channel")
    assert sorted(conversion["file_bytes"]) == ["model.onnx", "model.onnx.data"]
    assert conversion["size_vs_fp32"] < 0.8  # tiny: only the ViTs' weights are int8 (0.756 measured; full size 0.308)
    # Measured on the pattern (calibrated on the samples): z p99 5.6e-3, quaternion angle p99 4.3 degrees.
    p99 = _parity_p99(int8)
    assert 0 < p99["means_rel_depth"] < 2e-2 and 0 < p99["quat_angle_deg"] < 15


@pytest.mark.parametrize("which", ["fp16", "int8"])
def test_parity_on_a_real_photo_with_renders(which, request):
    artifact = request.getfixturevalue(which)
    lpips = load_lpips()
    report = check_artifact(
        resolve_artifact(artifact), tolerances=load_tolerances("onnx", which), poses=("quarter",), lpips_model=lpips,
        image_paths=[sample_image_path("motorcycle_left")],
    )  # fmt: skip
    assert report.passed, [f.metric for f in report.failures]
    psnr = next(v.value for v in report.views if v.metric == "psnr_db")
    # Measured worst over 5 photos x 4 views: fp16 66.4 dB, int8 45.1 dB (motorcycle_left).
    assert psnr > (60.0 if which == "fp16" else 42.0)


def test_the_runner_opens_both_with_fp32_io(fp16, int8):
    for artifact in (fp16, int8):
        with open_runner(artifact) as runner:
            image = np.full((1, 3, 384, 384), 0.5, dtype=np.float32)
            out = runner.infer(image, np.array([1.0], dtype=np.float32))
        assert out.mean_vectors.dtype.is_floating_point and str(out.mean_vectors.dtype) == "torch.float32"
        assert bool(out.mean_vectors.isfinite().all())


def test_the_runner_runs_int8_linear_layers_as_int8_kernels(int8, fp16, tmp_path, monkeypatch):
    import collections

    import onnxruntime

    from sharp_export.runtime.onnxruntime_runner import INT8_DISABLED_OPTIMIZERS

    # The runner opens int8 artifacts without MatMulAddFusion (and only those) ...
    seen: list[object] = []
    real = onnxruntime.InferenceSession

    def recording(*args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    for artifact in (int8, fp16):
        with open_runner(artifact):
            pass
    assert seen == [list(INT8_DISABLED_OPTIMIZERS), None]
    # ... so ONNX Runtime turns every ViT linear layer (tiny: 8 blocks x 4) into an int8 MatMulIntegerToFloat instead
    # of an fp32 Gemm fed by dequantized weights at every run, and leaves no weight DequantizeLinear behind.
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    real(str(int8 / "model.onnx"), options, providers=["CPUExecutionProvider"],
         disabled_optimizers=list(INT8_DISABLED_OPTIMIZERS))  # fmt: skip
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    assert ops["MatMulIntegerToFloat"] >= 32 and ops["Gemm"] == 0, ops
    assert ops["DequantizeLinear"] < 10, ops  # activation DQs feeding float ops; 71 with the fusion on (measured)


def _one_line(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_int8_without_calibration_data_is_one_clear_line(tmp_path):
    result = invoke(["--preset", "tiny", "--seed", "0", "-o", str(tmp_path / "a"), "--precision", "int8"])
    _one_line(result, 1, "int8 needs calibration images", "--calib-data DIR", "--calib-data samples")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--precision", "fp16", "--calib-size", "4"], ("--calib-size applies to --precision int8 only",)),
        (["--calib-data", "samples"], ("--calib-data applies to --precision int8 only",)),
        (["--precision", "int8", "--calib-data", "samples", "--calib-size", "6"],
         ("too few calibration images", "--calib-size 5")),
        (["--precision", "int8", "--calib-data", "nowhere"], ("calibration data not found",)),
    ],
)  # fmt: skip
def test_calibration_flags_are_checked_before_work(tmp_path, monkeypatch, args, fragments):
    from sharp_export.reference import checkpoint

    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work")))
    result = invoke(["--preset", "tiny", "--seed", "0", "-o", str(tmp_path / "a"), *args])
    _one_line(result, 1, *fragments)


def test_calibration_ranges_cache_is_opt_in_and_exact(tmp_path, monkeypatch, weights):
    """$SHARP_EXPORT_CALIBRATION_CACHE keeps the MinMax ranges of one (graph, weights, photos, tensors): a second
    export of the same weights reads them back bit for bit; other photos get another key."""
    from sharp_export.calibration.dataset import load_calibration_set
    from sharp_export.converters.onnx.quantize import (
        CALIBRATION_CACHE_ENV,
        cached_minmax_ranges,
        planned_calibration_tensors,
        ranges_cache_key,
    )

    out = tmp_path / "fp32"
    assert invoke(["--preset", "tiny", "-c", str(weights), "-o", str(out), "--no-parity"]).exit_code == 0
    model = out / "model.onnx"
    two = load_calibration_set("samples", 384, 2)
    tensors = planned_calibration_tensors(model)
    monkeypatch.delenv(CALIBRATION_CACHE_ENV, raising=False)
    computed, source = cached_minmax_ranges(model, two, tensors)
    assert source.startswith("computed on onnxruntime") and not list(tmp_path.glob("cache/*"))
    monkeypatch.setenv(CALIBRATION_CACHE_ENV, str(tmp_path / "cache"))
    first, source = cached_minmax_ranges(model, two, tensors)
    assert source.startswith("computed on onnxruntime") and ", cached as minmax_" in source
    again, source = cached_minmax_ranges(model, two, tensors)
    assert source.startswith("cache minmax_")
    assert set(again) == set(computed) == set(first)
    for name, (lo, hi) in computed.items():
        assert again[name][0] == lo and again[name][1] == hi, name
    key = ranges_cache_key(model, two, tensors)
    assert ranges_cache_key(model, load_calibration_set("samples", 384, 3), tensors) != key
    assert ranges_cache_key(model, two, tensors, "openvino") != key
    assert ranges_cache_key(model, two, tensors[:-1]) != key  # another int8 plan: other tensors, another key


def test_openvino_calibration_ranges_match_onnxruntime_fp32(tmp_path, weights):
    """The OpenVINO calibration pass (bf16 on CPUs with bf16) collects the same tensors as ONNX Runtime's fp32 pass,
    with each range end within a bf16-sized distance of the fp32 one (measured here, tiny perturbed weights, two
    photos, the pass compiling fp16 weights: worst 0.45 % of the tensor's range on this Xeon with AMX; the bound
    is 4 %)."""
    pytest.importorskip("openvino")
    from sharp_export.calibration.dataset import load_calibration_set
    from sharp_export.converters.onnx.quantize import minmax_ranges, planned_calibration_tensors

    out = tmp_path / "fp32"
    assert invoke(["--preset", "tiny", "-c", str(weights), "-o", str(out), "--no-parity"]).exit_code == 0
    two = load_calibration_set("samples", 384, 2)
    tensors = planned_calibration_tensors(out / "model.onnx")
    fp32, fp32_label = minmax_ranges(out / "model.onnx", two, tensors, "onnxruntime")
    ov, ov_label = minmax_ranges(out / "model.onnx", two, tensors, "openvino")
    assert fp32_label.startswith("onnxruntime") and fp32_label.endswith("fp32")
    assert ov_label.startswith("openvino")
    assert set(ov) == set(fp32) and len(fp32) == 34  # the plan's: what the ViTs' 34 weight layers read
    worst = 0.0
    for name, (lo, hi) in fp32.items():
        span = max(float(hi - lo), 1e-6)
        worst = max(worst, abs(float(ov[name][0] - lo)) / span, abs(float(ov[name][1] - hi)) / span)
    print(f"worst range-end difference: {worst:.4f} of the tensor's range ({ov_label})")
    assert worst <= 0.04, worst
    assert not list(out.glob("*.calibration.onnx"))  # the augmented graph is removed
