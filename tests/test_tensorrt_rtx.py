"""The tensorrt-rtx target: real TensorRT-RTX engines of the tiny preset, built here on the CPU, for every precision.

What runs here: the TensorRT-ready ONNX, TensorRT-RTX's parser and its ahead-of-time builder (no GPU needed), the
engine header read back by TensorRT-RTX, and the export's parity of the ONNX the engine was built from in ONNX
Runtime. What does not: the engine itself (it needs a CUDA GPU); ``test_engine_runs_on_an_rtx_gpu`` is marked
``gpu`` and skips here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from sharp_export.artifact import read_manifest
from sharp_export.cli import cli
from sharp_export.contract import ExportRequest
from sharp_export.converters.tensorrt_rtx.build import (
    build_engine,
    check_precision,
    parse_compute_capabilities,
    rtx_check,
)
from sharp_export.converters.tensorrt_rtx.target import ONNX_PARITY_LABEL, check_environment
from sharp_export.errors import ConversionError, TargetUnavailableError, UserInputError
from sharp_export.export import run_export
from sharp_export.registry import open_runner

HAS_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
needs_rtx = pytest.mark.skipif(
    not HAS_RTX, reason="TensorRT-RTX not installed (pip install 'sharp-export[tensorrt-rtx]')"
)
WEIGHTS = Path(__file__).parent / "data" / "golden_tiny" / "weights_perturbed.safetensors"
# precision -> (compute capabilities, dynamic batch): every precision, several compute capability forms.
BUILDS = {
    "fp32": ("portable", False),
    "fp16": ("sm86,sm89", True),
    "bf16": ("sm89", False),
    "int8": ("sm86", False),
    "fp8": ("sm89,sm120", False),
}


def export(out: Path, precision: str, **options) -> Path:
    capabilities, dynamic = BUILDS[precision]
    request = ExportRequest(target="tensorrt-rtx", output=out, preset="tiny", checkpoint=WEIGHTS, precision=precision,
                            calib_data=Path("samples") if precision in ("int8", "fp8") else None, device="cpu",
                            dynamic_batch=dynamic,
                            options={"compute_capability": capabilities, **({"max_batch": 4} if dynamic else {}),
                                     **options})  # fmt: skip
    return run_export(request)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    if not HAS_RTX:
        pytest.skip("TensorRT-RTX not installed")
    root = tmp_path_factory.mktemp("rtx")
    return {precision: export(root / precision, precision) for precision in BUILDS}


def broken_onnx(path: Path) -> Path:
    """Two nodes, the second an op no parser knows."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu_ok"), helper.make_node("NotAnOp", ["h"], ["y"], name="bad")],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@needs_rtx
@pytest.mark.parametrize("precision", list(BUILDS))
def test_every_precision_builds_an_engine_whose_io_is_the_manifests(engines, precision):
    out = engines[precision]
    m = read_manifest(out)
    engine = out / "model.engine"
    assert m.main_file == "model.engine" and m.target == "tensorrt-rtx" and m.precision == precision
    # The ONNX the engine was built from was removed after its parity (no --keep-onnx); bf16 has no parity.json
    # (ONNX Runtime cannot run it: structural checks only).
    files = ["export.log", "manifest.json", "model.engine"] + ([] if precision == "bf16" else ["parity.json"])
    assert sorted(p.name for p in out.iterdir()) == files
    rtx = m.conversion["tensorrt_rtx"]
    data = engine.read_bytes()
    assert rtx["status"] == "built" and rtx["engine_bytes"] == len(data) > 1_000_000
    assert rtx["engine_sha256"] == hashlib.sha256(data).hexdigest() == m.files["model.engine"]["sha256"]
    assert rtx["tensorrt_rtx_version"] == importlib.metadata.version("tensorrt-rtx-cu12-bindings")
    assert rtx["compute_capabilities"] == BUILDS[precision][0].split(",")
    assert rtx["build_seconds"] > 0 and 0 < rtx["build_peak_rss_gb"] < 4
    # The engine binds the parsed network's I/O: the manifest's spec, names in order, fp32, dynamic batch as -1.
    for kind in ("inputs", "outputs"):
        spec = [(s.name, s.dtype, [-1 if isinstance(d, str) else d for d in s.shape]) for s in getattr(m.io, kind)]
        assert [(t["name"], t["dtype"], t["shape"]) for t in rtx["network"][kind]] == spec
    dynamic = BUILDS[precision][1]
    assert rtx["network"]["inputs"][0]["shape"] == [-1 if dynamic else 1, 3, 384, 384]
    assert rtx.get("batch_profile") == ([1, 1, 4] if dynamic else None)
    # TensorRT-RTX itself reads the engine header (the full validity check needs a GPU).
    import tensorrt_rtx_bindings as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    size = runtime.engine_header_size
    malformed = int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)
    assert runtime.get_engine_validity(data[:size])[1] & malformed == 0
    assert runtime.get_engine_validity(b"\0" * size)[1] & malformed


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "fp8"])
def test_parity_is_the_onnx_the_engine_was_built_from_and_says_so(engines, precision):
    m = read_manifest(engines[precision])
    assert m.parity["status"] == "deferred" and m.parity["engine"].startswith("not run here")
    assert m.parity["onnx_parity"]["status"] == "passed" and m.parity["reason"] == ONNX_PARITY_LABEL
    report = json.loads((engines[precision] / "parity.json").read_text())
    assert report["meta"]["ran"] == ONNX_PARITY_LABEL
    rows = {r["metric"]: r for r in report["attributes"]}
    # Measured on these exports (ORT CPU vs torch fp32, golden pattern, Xeon-AMX): z rel err p99 fp32 9.0e-7, fp16
    # 6.3e-4, int8 6.1e-3 (2.6e-2 on an AVX2-only EPYC: test_onnx_tensorrt.py), fp8 7.3e-2.
    bound = {"fp32": 1e-4, "fp16": 2e-3, "int8": 4e-2, "fp8": 0.11}[precision]
    assert rows["means_rel_depth"]["p99"] < bound


@needs_rtx
def test_bf16_keeps_convtranspose_fp32_so_tensorrt_rtx_builds_it(engines):
    m = read_manifest(engines["bf16"])
    plan = m.conversion["precision_plan"]
    assert list(plan["kept_fp32_ops"]) == ["ConvTranspose"] and plan["kept_fp32_op_nodes"] == 18
    assert m.conversion["tensorrt_ready"]["cast_targets"] == {"bfloat16": 24, "float32": 24}
    assert m.parity["status"] == "deferred" and m.parity["structural_checks"] == "passed"


def test_compute_capabilities_and_the_precisions_they_build():
    assert parse_compute_capabilities("SM86, sm89") == ("sm86", "sm89")
    assert parse_compute_capabilities("portable") == ("portable",)
    for bad in ("sm90", "portable,sm89", ""):
        with pytest.raises(UserInputError):
            parse_compute_capabilities(bad)
    check_precision("fp8", ("sm89", "sm120"))
    check_precision("fp16", ("sm75",))
    with pytest.raises(UserInputError, match="fp8 needs FP8 tensor cores"):
        check_precision("fp8", ("sm86", "sm89"))
    with pytest.raises(UserInputError, match="FP32 GEMM is not supported"):
        check_precision("int8", ("sm75",))


def test_refusals_come_before_any_work(tmp_path):
    def run(*args):
        return CliRunner().invoke(cli, ["tensorrt-rtx", "--preset", "tiny", "--seed", "0", "-o", str(tmp_path / "x"),
                                        *args])  # fmt: skip

    fp8 = run("--precision", "fp8", "--compute-capability", "sm86", "--calib-data", "samples")
    assert fp8.exit_code == 1 and "cannot be built for sm86" in fp8.output and "fp8 needs FP8" in fp8.output
    unknown = run("--compute-capability", "sm90")
    assert unknown.exit_code == 1 and "unknown ['sm90']" in unknown.output
    batch = run("--max-batch", "4")
    assert batch.exit_code == 1 and "--dynamic-batch" in batch.output
    assert not (tmp_path / "x").exists()


@needs_rtx
def test_a_parser_error_names_the_node(tmp_path):
    from sharp_export.artifact import raw_io_spec

    path = broken_onnx(tmp_path / "broken.onnx")
    with pytest.raises(ConversionError, match=r"TensorRT-RTX's ONNX parser failed at node 'bad' \(NotAnOp\)"):
        build_engine(path, tmp_path / "e.engine", compute_capabilities=["sm89"], batch_shapes=None, resolution=4)
    with pytest.raises(ConversionError, match="parser failed at node 'bad'.*--no-rtx-check"):
        rtx_check(path, raw_io_spec(4, 1), capability="sm80", why="test", batch_shapes=None, resolution=4)
    assert not (tmp_path / "e.engine").exists()


@needs_rtx
def test_the_engine_refuses_in_one_line_without_cuda(engines, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: test_engine_runs_on_an_rtx_gpu runs it instead")
    with pytest.raises(UserInputError, match="needs a CUDA GPU; torch sees none"):
        open_runner(engines["fp16"], "cuda").open()
    with pytest.raises(UserInputError, match="runs on an NVIDIA RTX GPU only"):
        open_runner(engines["fp16"], "cpu")
    photo = Path(__file__).parent / "data" / "golden_tiny" / "input.png"
    result = CliRunner().invoke(cli, ["run", str(engines["fp16"]), str(photo), "-o", str(tmp_path / "ply"),
                                      "--device", "cuda"])  # fmt: skip
    assert result.exit_code == 1 and "needs a CUDA GPU" in result.output and "Traceback" not in result.output


@needs_rtx
@pytest.mark.parametrize(
    ("gpu", "message", "fix"),
    [
        ((9, 0), "this GPU is sm90", "use the tensorrt target"),  # H100: TensorRT-RTX has no SM90
        ((8, 0), "this GPU is sm80 .*runs on sm86, sm89 only", "--compute-capability"),  # not built for it
        # Built for it: TensorRT-RTX itself is asked and refuses (here: no CUDA driver behind the pretended GPU).
        ((8, 9), "TensorRT-RTX 1.* says the engine cannot run here", "--compute-capability"),
    ],
)
def test_the_runner_checks_the_gpu_before_loading(engines, monkeypatch, gpu, message, fix):
    import torch

    if gpu == (8, 9) and torch.cuda.is_available():
        pytest.skip("a real GPU is here: TensorRT-RTX would be asked about it, not about a pretended one")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "pretended GPU")
    with pytest.raises(UserInputError, match=message) as error:
        open_runner(engines["fp16"], "cuda").open()  # the fp16 test engine: sm86, sm89
    assert fix in error.value.fix
    assert not (engines["fp16"] / "runtime.cache").exists()


def test_without_tensorrt_rtx_the_target_names_the_install_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt_rtx_bindings" else find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    assert check_environment().startswith("tensorrt-rtx-cu12-bindings not installed: pip install 'sharp-export[")
    with pytest.raises(TargetUnavailableError):
        run_export(ExportRequest(target="tensorrt-rtx", output=tmp_path / "x", preset="tiny", seed=0))
    from sharp_export.artifact import raw_io_spec

    record = rtx_check(tmp_path / "none.onnx", raw_io_spec(4, 1), capability="sm80", why="", batch_shapes=None,
                       resolution=4)  # fmt: skip
    assert record == {"status": "not run", "reason": record["reason"]} and "pip install" in record["reason"]


@pytest.mark.gpu
@needs_rtx
def test_engine_runs_on_an_rtx_gpu(engines):
    """On an RTX GPU (sm86 / sm89 here): the fp16 engine against torch, then the runtime cache is reused."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    capability = "sm{}{}".format(*torch.cuda.get_device_capability())
    if capability not in ("sm86", "sm89"):
        pytest.skip(f"the fp16 test engine is built for sm86 / sm89; this GPU is {capability}")
    result = CliRunner().invoke(cli, ["parity", str(engines["fp16"]), "--device", "cuda", "-c", str(WEIGHTS),
                                      "--poses", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (engines["fp16"] / "runtime.cache").is_file()
    with open_runner(engines["fp16"], "cuda") as runner:  # second open: the cache is loaded, not rebuilt
        assert runner.engine is not None
