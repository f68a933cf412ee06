"""Core ML ``--weights`` compression (tiny preset, golden perturbed weights): packages, MIL, manifest, proxy.

Four exports through the shared pipeline (~25 s each on 2 cores): int8 and palettize4 fp16 for iOS17,
palettize6 fp16 for iOS18 (the iOS18 LUT op), int8 fp32 with --split components. The torch proxy must use
exactly the package's expanded weights: the digests of the package's compressed weights and of the proxy's
must be equal.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("coremltools")

from sharp_export.artifact import IOSpec, read_manifest  # noqa: E402
from sharp_export.contract import ExportRequest  # noqa: E402
from sharp_export.converters.coreml.choices import MODEL_FILE, WEIGHT_MODES  # noqa: E402
from sharp_export.converters.coreml.mil_checks import check_program, summarize_spec  # noqa: E402
from sharp_export.converters.coreml.target import TOLERANCES_FILE, WEIGHT_TOLERANCE_PROFILES  # noqa: E402
from sharp_export.converters.coreml.weights import kmeans_lut  # noqa: E402
from sharp_export.errors import UserInputError  # noqa: E402
from sharp_export.export import run_export  # noqa: E402
from sharp_export.parity.tolerances import PROFILES  # noqa: E402

UNCOMPRESSED_FP16_BYTES = 2362074  # tiny fp16 package, measured (coreml fp16 export, iOS17)
UNCOMPRESSED_FP32_BYTES = 4259744  # tiny fp32 package
# Package weight bytes / uncompressed fp16, measured on the tiny preset: 0.646 (int8), 0.539 (palettize6),
# 0.446 (palettize4). The tiny model's tensors are small, so LUTs, scales and the uncompressed rest weigh more
# than at full size (see benchmarks/results/coreml_weights_full.json).
RATIOS = {"int8": 0.646, "palettize6": 0.539, "palettize4": 0.446}
OP_TYPE = {"int8": "constexpr_affine_dequantize", "palettize6": "constexpr_lut_to_dense",
           "palettize4": "constexpr_lut_to_dense"}  # fmt: skip
# conv / conv_transpose / linear weights above 2048 elements in the traced tiny model (105), less the 8 of the Gaussian
# heads (weights.KEPT_MODULES)
COMPRESSED_TENSORS = 97


def _request(golden_dir: Path, out: Path, precision: str = "fp16", **options: str) -> ExportRequest:
    return ExportRequest(target="coreml", output=out, preset="tiny", precision=precision, options=options,
                         checkpoint=golden_dir / "weights_perturbed.safetensors")  # fmt: skip


@pytest.fixture(scope="module")
def exports(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from sharp_export.converters.coreml import convert as coreml_module
    from sharp_export.converters.coreml.mil_checks import summarize_mil

    root = tmp_path_factory.mktemp("coreml_weights")
    captured: dict[str, Any] = {}
    original = coreml_module.compress_program

    def spy(mlmodel, plan, io, precision):  # the compressed in-memory program (the saved spec inlines its data)
        compressed, report = original(mlmodel, plan, io, precision)
        captured[plan.mode] = summarize_mil(compressed._mil_program)
        return compressed, report

    coreml_module.compress_program = spy
    try:
        result: dict[str, Any] = {
            "int8": run_export(_request(golden_dir, root / "int8", weights="int8")),
            "palettize4": run_export(_request(golden_dir, root / "palettize4", weights="palettize4")),
            "palettize6": run_export(
                _request(golden_dir, root / "palettize6", weights="palettize6", deployment_target="iOS18")
            ),
        }
        result["palettize6-mil"] = captured["palettize6"]
        result["int8-fp32-split"] = run_export(
            _request(golden_dir, root / "int8-fp32-split", "fp32", weights="int8", split="components")
        )
        return result
    finally:
        coreml_module.compress_program = original


def test_option_is_on_the_row():
    from sharp_export.registry import get_target

    option = get_target("coreml").option("weights")
    assert option.default == "none" and option.choices == WEIGHT_MODES
    assert set(WEIGHT_TOLERANCE_PROFILES.values()) <= set(PROFILES)


@pytest.mark.parametrize("mode", ["int8", "palettize6", "palettize4"])
def test_package_is_compressed_and_checked(exports, mode):
    import coremltools as ct

    artifact = exports[mode]
    manifest = read_manifest(artifact)
    assert manifest.options["weights"] == mode
    weights = manifest.conversion["weights"]
    assert weights["mode"] == mode and weights["compressed_tensors"] == COMPRESSED_TENSORS
    assert weights["compressed_op_types"] == {OP_TYPE[mode]: COMPRESSED_TENSORS}
    assert weights["config"]["weight_threshold"] == 2048
    assert weights["config"]["granularity"] == ("per_channel" if mode == "int8" else "per_tensor")
    size = weights["weights_bytes"][MODEL_FILE]
    assert size == manifest.conversion["weights_bytes"]
    assert size / UNCOMPRESSED_FP16_BYTES == pytest.approx(RATIOS[mode], abs=0.01)
    # The saved package: the compressed ops are there, and the spec passes every MIL check.
    spec = ct.models.MLModel(str(artifact / MODEL_FILE), skip_model_load=True).get_spec()
    summary = summarize_spec(spec)
    assert summary.compressed_weight_ops() == {OP_TYPE[mode]: COMPRESSED_TENSORS}
    report = check_program(summary, manifest.io, "fp16", ["tail", "group_norm"])
    assert report["problems"] == [] and report["max_rank"] <= 4
    # As before compression (constexpr ops are weights, not compute): 481 / 194 for iOS17, 457 / 194 for iOS18.
    assert report["compute_dtypes"] == manifest.conversion["mil_checks"]["compute_dtypes"]
    assert report["compute_dtypes"]["fp32"] == 194


@pytest.mark.parametrize("mode", ["int8", "palettize6", "palettize4"])
def test_proxy_uses_the_package_weights_and_passes(exports, mode):
    manifest = read_manifest(exports[mode])
    parity = manifest.parity
    proxy = parity["proxy"]
    assert parity["status"] == "deferred" and f"--tolerances ARTIFACT/{TOLERANCES_FILE}" in parity["reason"]
    assert proxy["label"].startswith("PROXY") and mode in proxy["label"] and proxy["passed"]
    assert proxy["tolerance_profile"] == WEIGHT_TOLERANCE_PROFILES[mode]
    assert proxy["weights"]["compressed_tensors"] == COMPRESSED_TENSORS
    # Exactly the package's expanded values (order- and layout-independent digest of every compressed weight).
    assert proxy["weights"]["digest"] == manifest.conversion["weights"]["digest"]
    tolerances = json.loads((exports[mode] / TOLERANCES_FILE).read_text())
    profile = PROFILES[WEIGHT_TOLERANCE_PROFILES[mode]]
    assert tolerances == {m: {"value": t.value, "statistic": t.statistic} for m, t in profile.items()}
    assert TOLERANCES_FILE in manifest.files


def test_proxy_errors_are_the_measured_ones(exports):
    # Measured on the golden pattern, tiny perturbed weights (torch 2.13 CPU), fp16 (p99); bounds ~1.5x.
    p99 = {mode: {k: m["p99"] for k, m in read_manifest(exports[mode]).parity["proxy"]["metrics"].items()}
           for mode in ("int8", "palettize6", "palettize4")}  # fmt: skip
    assert p99["int8"]["means_rel_depth"] < 9e-3  # measured 5.8e-3
    assert p99["int8"]["scales_log"] < 8.5e-3  # measured 5.6e-3 (9.7e-3 with the Gaussian heads compressed)
    assert p99["int8"]["opacities_abs"] < 8e-4  # measured 5.5e-4 (1.7e-3 with the heads compressed)
    assert p99["palettize6"]["scales_log"] < 3e-2  # measured 2.0e-2 (5.2e-2 with the heads compressed)
    assert p99["palettize4"]["means_rel_depth"] < 3.5e-2  # measured 2.25e-2
    assert p99["palettize4"]["quat_angle_deg"] < 4.5  # measured 2.8 (9.8 with the heads compressed)
    # Fewer bits, larger error; every mode is worse than fp16 alone (p99 scales_log 2.0e-3).
    assert 2e-3 < p99["int8"]["scales_log"] < p99["palettize6"]["scales_log"] < p99["palettize4"]["scales_log"]


def test_ios18_lut_is_compression_data(exports):
    """iOS18's constexpr_lut_to_dense takes a rank-6 LUT for a conv weight: compression data, exempt from the
    rank check (which passed on the compressed program, or the export would have failed)."""
    summary = dataclasses.replace(exports["palettize6-mil"], has_regions=False)  # as compress_program checks it
    luts = [t.shape for op in summary.ops if op.compression_data for t in op.outputs if len(t.shape) == 6]
    assert len(luts) == 65 and set(luts) == {(1, 1, 1, 1, 64, 1)}  # the compressed conv / conv_transpose weights' LUTs
    report = check_program(summary, read_manifest(exports["palettize6"]).io, "fp16", [])
    assert report["problems"] == [] and report["max_rank"] == 4


def test_int8_fp32_split_components(exports):
    import coremltools as ct

    artifact = exports["int8-fp32-split"]
    manifest = read_manifest(artifact)
    weights = manifest.conversion["weights"]
    per_package = weights["compressed_tensors_per_package"]
    assert list(per_package) == [p["file"] for p in manifest.conversion["pieces"]]
    assert sum(per_package.values()) == weights["compressed_tensors"] == COMPRESSED_TENSORS
    assert all(count > 0 for count in per_package.values())
    for piece in manifest.conversion["pieces"]:
        spec = ct.models.MLModel(str(artifact / piece["file"]), skip_model_load=True).get_spec()
        summary = summarize_spec(spec)
        assert summary.compressed_weight_ops() == {"constexpr_affine_dequantize": per_package[piece["file"]]}
        report = check_program(summary, IOSpec.from_dict(piece["io"]), "fp32", [])
        assert report["problems"] == [] and set(report["compute_dtypes"]) == {"fp32"}
        assert weights["weights_bytes"][piece["file"]] == piece["weights_bytes"]
    # fp32 weights quantized: 4 bytes -> 1 byte plus a scale per output channel, the heads' 4 bytes kept (measured
    # 0.390 of 4259744 B).
    assert sum(weights["weights_bytes"].values()) / UNCOMPRESSED_FP32_BYTES == pytest.approx(0.390, abs=0.01)
    proxy = manifest.parity["proxy"]
    assert proxy["passed"] and "fp32 precision plan" in proxy["label"] and proxy["pinned_fp32"] == []
    assert "pieces" not in proxy  # the per-piece proxy is the fp16 one
    assert proxy["weights"]["digest"] == weights["digest"]  # the pieces hold the same weights as the model


def test_validate_refuses_an_unknown_mode(tmp_path, golden_dir):
    with pytest.raises(UserInputError, match="--weights must be one of none, int8, palettize4, palettize6"):
        run_export(_request(golden_dir, tmp_path / "bad", weights="int4"))
    assert not (tmp_path / "bad").exists()


def test_kmeans_lut_is_nearest_and_exact_for_few_values():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((64, 96)) * 0.05).astype(np.float16)
    lut, indices = kmeans_lut(values, 4)
    assert lut.dtype == np.float16 and lut.shape == (16,) and indices.dtype == np.uint8
    assert np.all(np.diff(lut.astype(np.float64)) > 0)
    error = np.abs(lut[indices].astype(np.float64) - values.reshape(-1))
    nearest = np.abs(values.reshape(-1, 1).astype(np.float64) - lut.astype(np.float64)[None]).min(axis=1)
    np.testing.assert_array_equal(error, nearest)  # every value takes its nearest entry
    uniform = np.linspace(values.min(), values.max(), 16).astype(np.float16)
    uniform_error = np.abs(values.reshape(-1, 1).astype(np.float64) - uniform.astype(np.float64)[None]).min(axis=1)
    assert (error**2).mean() < 0.6 * (uniform_error**2).mean()  # k-means beats a uniform grid on Gaussian weights
    few = np.array([[0.5, -1.0], [0.5, 2.0]], dtype=np.float32)
    lut, indices = kmeans_lut(few, 4)
    np.testing.assert_array_equal(lut[indices].reshape(few.shape), few)  # <= 16 distinct values: lossless
