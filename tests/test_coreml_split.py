"""``--split components`` (tiny preset): the three pieces chain to the exact model, and each converts cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("coremltools")

from sharp_export.artifact import IOSpec, read_manifest  # noqa: E402
from sharp_export.contract import ExportRequest  # noqa: E402
from sharp_export.converters.coreml.mil_checks import check_program, summarize_spec  # noqa: E402
from sharp_export.converters.coreml.split import PIECES, piece_shapes, run_pieces  # noqa: E402
from sharp_export.export import run_export  # noqa: E402
from sharp_export.reference.checkpoint import build_model  # noqa: E402
from sharp_export.runtime.coreml_runner import artifact_packages  # noqa: E402
from sharp_export.samples import example_inputs  # noqa: E402


@pytest.fixture(scope="module")
def tiny(golden_dir: Path):
    model = build_model("tiny", checkpoint=golden_dir / "weights_perturbed.safetensors").model.eval()
    return model, example_inputs(model.resolution, 1)


def test_pieces_chain_to_forward_grids_exactly(tiny):
    model, example = tiny
    with torch.no_grad():
        expected = model.forward_grids(example.image, example.disparity_factor)
    grids, piece_inputs = run_pieces(model, example.image, example.disparity_factor)
    for found, wanted in zip(grids, expected, strict=True):
        assert torch.equal(found, wanted)  # bit for bit: the pieces mirror the reference step by step
    shapes = piece_shapes(model, example.image, example.disparity_factor)
    for piece in PIECES:
        assert {n: tuple(t.shape) for n, t in piece_inputs[piece.name].items()} == {n: shapes[n] for n in piece.inputs}


@pytest.fixture(scope="module")
def split_fp16(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coreml_split") / "fp16"
    request = ExportRequest(
        target="coreml",
        output=out,
        preset="tiny",
        checkpoint=golden_dir / "weights_perturbed.safetensors",
        precision="fp16",
        parity=False,  # the proxy is covered by test_coreml_convert.py; here only the packages matter
        options={"split": "components"},
    )
    return run_export(request)


def test_split_pieces_pass_their_checks(split_fp16):
    import coremltools as ct

    manifest = read_manifest(split_fp16)
    pieces = manifest.conversion["pieces"]
    assert [p["file"] for p in pieces] == [f"{piece.name}.mlpackage" for piece in PIECES]
    assert manifest.main_file == "patch_encoder.mlpackage"
    assert artifact_packages(split_fp16, manifest) == [split_fp16 / p["file"] for p in pieces]
    for piece, info in zip(PIECES, pieces, strict=True):
        io = IOSpec.from_dict(info["io"])
        spec = ct.models.MLModel(str(split_fp16 / info["file"]), skip_model_load=True).get_spec()
        report = check_program(summarize_spec(spec), io, "fp16", ["tail", "group_norm"])
        assert report["problems"] == [], (piece.name, report["problems"])
        assert report["max_rank"] <= 4
        dtypes = info["mil_checks"]["compute_dtypes"]
        if piece.name == "gaussians":
            assert dtypes["fp32"] > 100 and dtypes["fp16"] > 50  # measured 194 pinned / 105 network
        else:
            assert dtypes.get("fp32", 0) == 0  # the monodepth pieces are pure Neural Engine work
    # Activations between pieces travel as fp16 (they are fp16 inside an fp16 program anyway); the image,
    # the disparity factor and the five grids stay fp32.
    between = {t["name"]: t["dtype"] for p in pieces for t in p["io"]["outputs"]}
    assert between["latent0"] == "float16" and between["disparity"] == "float16"
    assert between["mean_vectors"] == "float32"
    assert manifest.io.outputs[0].shape == (1, 6, 192, 192)  # the chain's I/O equals the unsplit model's


def test_each_piece_has_a_proxy_error_line(tiny):
    from sharp_export.converters.coreml.split import piece_proxy_errors

    model, example = tiny
    lines = piece_proxy_errors(model, example.image, example.disparity_factor)
    assert list(lines) == [piece.name for piece in PIECES]
    # fp16 proxy of each piece alone vs fp32, max |error| / max |value| (tiny golden, perturbed weights).
    assert max(lines["patch_encoder"].values()) < 5e-3  # measured 2.5e-3 (x0_features)
    assert max(lines["monodepth"].values()) < 2.5e-3  # measured 1.2e-3 (disparity)
    gaussians = lines["gaussians"]
    assert gaussians["mean_vectors"] < 7e-4  # measured 3.2e-4: the tail is fp32
    assert gaussians["singular_values"] < 3e-3  # measured 1.3e-3
    assert gaussians["colors"] < 2e-4  # measured 1.0e-4
