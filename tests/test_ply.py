"""PLY / .splat writers and the reader, against the PLY files ml-sharp wrote for the golden runs.

The official PLYs are not shipped (4 MB each); tests/data/golden_tiny/provenance.json records their sha256,
and the `official_ply` fixture (conftest.py) rebuilds them with our writer after checking that hash.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from sharp_export.errors import UserInputError
from sharp_export.reference.gaussians import (
    Gaussians3D,
    SceneMeta,
    compose_covariance_matrices,
    linear_to_srgb,
    unproject_gaussians,
)
from sharp_export.reference.ply import (
    OFFICIAL_VERTEX_PROPS,
    VIEWER_VERTEX_PROPS,
    disparity_quantiles,
    load_ply,
    read_ply_elements,
    read_splat,
    save_ply,
)

FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
RAW_FIELDS = ("ndc_mean_vectors", "ndc_singular_values", "ndc_quaternions", "colors", "opacities")
N = 73728


def golden(golden_dir, name: str, fields=FIELDS) -> tuple[Gaussians3D, SceneMeta]:
    data = np.load(golden_dir / f"out_640x480_{name}.npz")
    return Gaussians3D(*(torch.from_numpy(data[k]) for k in fields)), SceneMeta(float(data["f_px"]), 640, 480)


def split_ply(raw: bytes) -> tuple[bytes, np.ndarray, bytes]:
    """Header, official vertex table [N, 14] and the bytes of the extra elements."""
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    vertex = np.frombuffer(raw[end : end + N * 56], dtype="<f4").reshape(N, 14).copy()
    return raw[:end], vertex, raw[end + N * 56 :]


def covariance(quaternions, scales) -> torch.Tensor:
    return compose_covariance_matrices(torch.as_tensor(quaternions).double(), torch.as_tensor(scales).double())


@pytest.mark.parametrize("name", ["seed0", "perturbed"])
def test_official_ply_is_byte_identical(
    golden_dir, official_ply_sha256, official_ply, reproducible_ply_writer, tmp_path, name
):
    # With MKL's reproducible code path (conftest.MKL_REPRODUCIBLE), in a child process: the official bytes.
    reproducible = reproducible_ply_writer(golden_dir / f"out_640x480_{name}.npz", tmp_path / "reproducible.ply")
    assert hashlib.sha256(reproducible.read_bytes()).hexdigest() == official_ply_sha256[f"out_640x480_{name}.ply"]
    # In this process (MKL's default, CPU-dependent code path): every byte equal except the values that go
    # through torch.log (opacity logits, log scales), which may differ by 1 ULP (measured on a Xeon with AMX:
    # 21,646 of seed0's 221,184 log scales; none on an AVX2-only AMD EPYC).
    gaussians, meta = golden(golden_dir, name)
    header, ours, extras = split_ply(save_ply(gaussians, meta, tmp_path / "scene.ply").read_bytes())
    gold_header, gold, gold_extras = split_ply(official_ply(name).read_bytes())
    assert header == gold_header and extras == gold_extras
    assert np.array_equal(ours[:, :6], gold[:, :6]) and np.array_equal(ours[:, 10:], gold[:, 10:])
    ulps = np.abs(ours[:, 6:10].view(np.int32) - gold[:, 6:10].view(np.int32))
    assert ulps.max() <= 1


@pytest.mark.parametrize("name", ["seed0", "perturbed"])
def test_pipeline_ply_matches_golden(golden_dir, official_ply, tmp_path, name):
    raw, meta = golden(golden_dir, name, RAW_FIELDS)
    save_ply(unproject_gaussians(raw, meta, 384), meta, tmp_path / "scene.ply")
    header, ours, extras = split_ply((tmp_path / "scene.ply").read_bytes())
    gold_header, gold, gold_extras = split_ply(official_ply(name).read_bytes())
    assert header == gold_header
    assert extras == gold_extras  # disparity quantiles come from the bit-identical means
    assert np.array_equal(ours[:, :6], gold[:, :6])  # xyz, f_dc: same inputs, same float32 ops
    # Opacity logits go through torch.log, whose MKL code path depends on the CPU (conftest.MKL_REPRODUCIBLE):
    # measured 6,626 of 73,728 perturbed values 1 ULP away on a Xeon with AMX, none with MKL_CBWR=COMPATIBLE.
    assert np.abs(ours[:, 6].view(np.int32) - gold[:, 6].view(np.int32)).max() <= 1
    np.testing.assert_allclose(ours[:, 7:10], gold[:, 7:10], rtol=0, atol=2e-6)  # log scales: measured 9.5e-7
    error = covariance(ours[:, 10:], np.exp(ours[:, 7:10])) - covariance(gold[:, 10:], np.exp(gold[:, 7:10]))
    assert error.abs().max().item() < 1e-6  # metric covariances (entries up to ~1.1): measured 3.9e-7


@pytest.mark.parametrize("name", ["seed0", "perturbed"])
def test_load_golden_ply(golden_dir, official_ply, name):
    gaussians, meta = golden(golden_dir, name)
    loaded, loaded_meta = load_ply(official_ply(name))
    assert (loaded_meta.width, loaded_meta.height) == (640, 480)
    assert loaded_meta.f_px == pytest.approx(meta.f_px, rel=1e-7)  # stored as float32
    assert torch.equal(loaded.mean_vectors, gaussians.mean_vectors)
    assert torch.equal(loaded.quaternions, gaussians.quaternions)
    assert torch.allclose(loaded.singular_values, gaussians.singular_values, rtol=1e-6, atol=0)  # measured 1.9e-7 rel
    assert torch.allclose(loaded.colors, gaussians.colors, rtol=0, atol=1e-6)  # sRGB round trip: measured 1.8e-7
    assert torch.allclose(loaded.opacities, gaussians.opacities, rtol=0, atol=1e-6)  # measured 6.0e-8


def test_disparity_quantiles_match_torch_quantile():
    generator = torch.Generator().manual_seed(0)
    for count in (1, 2, 10, 1001, 100_000):
        depth = torch.rand(count, generator=generator) * 20 + 0.3
        expected = torch.quantile(1.0 / depth, torch.tensor([0.1, 0.9])).numpy()
        assert disparity_quantiles(depth).tobytes() == expected.tobytes()
    with_nan = torch.tensor([1.0, float("nan"), 2.0])
    assert np.isnan(disparity_quantiles(with_nan)).all()


def small_scene(count: int = 500, seed: int = 0) -> tuple[Gaussians3D, SceneMeta]:
    generator = torch.Generator().manual_seed(seed)
    quats = torch.nn.functional.normalize(torch.randn(1, count, 4, generator=generator), dim=-1)
    scene = Gaussians3D(
        mean_vectors=torch.randn(1, count, 3, generator=generator) + torch.tensor([0.0, 0.0, 4.0]),
        singular_values=torch.rand(1, count, 3, generator=generator) * 0.1 + 0.001,
        quaternions=quats,
        colors=torch.rand(1, count, 3, generator=generator) * 0.98 + 0.01,
        opacities=torch.rand(1, count, generator=generator) * 0.98 + 0.01,
    )
    return scene, SceneMeta(f_px=800.0, width=1024, height=768)


def test_official_round_trip(tmp_path):
    scene, meta = small_scene()
    save_ply(scene, meta, tmp_path / "s.ply")
    loaded, loaded_meta = load_ply(tmp_path / "s.ply")
    assert loaded_meta == meta
    assert torch.equal(loaded.mean_vectors, scene.mean_vectors)
    assert torch.allclose(loaded.singular_values, scene.singular_values, rtol=1e-6)  # log/exp: measured 2.7e-7
    assert torch.allclose(loaded.colors, scene.colors, atol=1e-6)  # measured 4.2e-7
    assert torch.allclose(loaded.opacities, scene.opacities, atol=1e-6)  # measured 6.0e-8
    elements = read_ply_elements(tmp_path / "s.ply")
    assert list(elements) == ["vertex", "extrinsic", "intrinsic", "image_size", "frame", "disparity"] + [
        "color_space",
        "version",
    ]
    assert list(elements["vertex"].dtype.names) == OFFICIAL_VERTEX_PROPS
    assert elements["frame"]["frame"].tolist() == [1, 500]
    assert elements["version"]["version"].tolist() == [1, 5, 0]


@pytest.mark.parametrize("y_up", [False, True])
def test_viewer_format(tmp_path, y_up):
    scene, meta = small_scene()
    save_ply(scene, meta, tmp_path / "v.ply", format="viewer", y_up=y_up)
    raw = (tmp_path / "v.ply").read_bytes()
    assert raw.count(b"element ") == 1  # vertex only
    elements = read_ply_elements(tmp_path / "v.ply")
    vertex = elements["vertex"]
    assert list(vertex.dtype.names) == VIEWER_VERTEX_PROPS and len(VIEWER_VERTEX_PROPS) == 62
    for name in ["nx", "ny", "nz"] + [f"f_rest_{i}" for i in range(45)]:
        assert not vertex[name].any()
    loaded, loaded_meta = load_ply(tmp_path / "v.ply")  # no color_space element: read as sRGB
    assert loaded_meta == SceneMeta(512.0, 640, 480)  # ml-sharp's default without intrinsics
    assert torch.allclose(loaded.colors, scene.colors, atol=1e-6)  # measured 4.2e-7
    flip = torch.tensor([1.0, -1.0, -1.0]) if y_up else torch.ones(3)
    assert torch.equal(loaded.mean_vectors, scene.mean_vectors * flip)
    rotate = torch.diag(flip).double()
    expected = rotate @ covariance(scene.quaternions, scene.singular_values) @ rotate.T
    assert (
        covariance(loaded.quaternions, loaded.singular_values) - expected
    ).abs().max().item() < 1e-8  # measured 2.7e-9


@pytest.mark.parametrize("y_up", [False, True])
def test_splat_format(tmp_path, y_up):
    scene, meta = small_scene()
    save_ply(scene, meta, tmp_path / "s.splat", format="splat", y_up=y_up)
    assert (tmp_path / "s.splat").stat().st_size == 500 * 32
    splat = read_splat(tmp_path / "s.splat")
    importance = scene.singular_values[0].double().prod(-1) * scene.opacities[0].double()
    order = torch.argsort(-importance, stable=True)
    flip = torch.tensor([1.0, -1.0, -1.0]) if y_up else torch.ones(3)
    assert np.array_equal(splat["position"], (scene.mean_vectors[0, order] * flip).numpy())
    assert np.array_equal(splat["scale"], scene.singular_values[0, order].numpy())
    kept = importance[order].numpy()
    assert (np.diff(kept) <= 0).all()
    rgba = np.concatenate([linear_to_srgb(scene.colors[0]).numpy(), scene.opacities[0, :, None].numpy()], axis=1)
    assert np.abs(splat["rgba"].astype(float) - rgba[order.numpy()] * 255).max() < 1.0  # truncation
    # Decoded u8 quaternions (wxyz) describe the same rotation to within the 1/128 quantisation.
    decoded = torch.from_numpy((splat["rot"].astype(np.float64) - 128) / 128)
    w, x, y, z = scene.quaternions[0, order].double().unbind(-1)
    expected = torch.stack([-x, w, -z, y], -1) if y_up else torch.stack([w, x, y, z], -1)
    distance = torch.minimum((decoded - expected).abs().amax(-1), (decoded + expected).abs().amax(-1))
    assert distance.max().item() <= 1 / 128 + 1e-9


def test_writes_are_atomic(tmp_path, monkeypatch):
    scene, meta = small_scene()
    target = tmp_path / "s.ply"
    target.write_bytes(b"previous")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_ply(scene, meta, target, replace=True)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ply"]  # no temporary file left behind


def test_bad_files_and_arguments(tmp_path):
    (tmp_path / "x.ply").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(UserInputError, match="not a PLY"):
        load_ply(tmp_path / "x.ply")
    scene, meta = small_scene()
    save_ply(scene, meta, tmp_path / "s.ply")
    data = (tmp_path / "s.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="truncated"):
        load_ply(tmp_path / "cut.ply")
    (tmp_path / "hdr.ply").write_bytes(data[:40])
    with pytest.raises(UserInputError, match="header"):
        load_ply(tmp_path / "hdr.ply")
    with pytest.raises(UserInputError, match="not found"):
        load_ply(tmp_path / "missing.ply")
    with pytest.raises(UserInputError, match="unknown scene format"):
        save_ply(scene, meta, tmp_path / "y.ply", format="gltf")
    with pytest.raises(UserInputError, match="y_up"):
        save_ply(scene, meta, tmp_path / "y.ply", y_up=True)
    with pytest.raises(UserInputError, match="does not exist"):
        save_ply(scene, meta, tmp_path / "no" / "dir" / "y.ply")
    with pytest.raises(UserInputError, match="multiple of 32"):
        (tmp_path / "bad.splat").write_bytes(b"\x00" * 33)
        read_splat(tmp_path / "bad.splat")


@pytest.mark.slow
def test_disparity_quantiles_beyond_torch_quantile_limit():
    count = (1 << 24) + 3  # torch.quantile refuses more than 2^24 elements
    depth = torch.rand(count, generator=torch.Generator().manual_seed(1)) * 20 + 0.3
    ours = disparity_quantiles(depth)
    expected = np.quantile((1.0 / depth).double().numpy(), [0.1, 0.9])
    np.testing.assert_allclose(ours, expected, rtol=1e-6)  # float32 ranks and lerp: measured 2.1e-7
