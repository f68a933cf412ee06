"""Shared fixtures: the golden data made by the official ml-sharp code, shipped in tests/data/golden_tiny, and the
64 px stand-in predictor that tests needing a fast export use instead of a real model."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sharp_export.reference.gaussians import Gaussians3D

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DATA = REPO_ROOT / "tests" / "data" / "golden_tiny"  # in-repo subset; README.md there says where it came from
MARKER = "weights_perturbed.safetensors"  # a folder without this file is not a golden bundle


def find_golden_dir() -> Path:
    """The tiny golden bundle: $SHARP_GOLDEN_DIR when set, else the in-repo tests/data/golden_tiny.

    There is no silent fallback: a SHARP_GOLDEN_DIR that points at a folder without the bundle is an error.
    """
    env = os.environ.get("SHARP_GOLDEN_DIR")
    if env:
        path = Path(env).expanduser()
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"SHARP_GOLDEN_DIR={env!r} has no {MARKER}; unset it to use {GOLDEN_DATA}")
        return path
    if not (GOLDEN_DATA / MARKER).is_file():
        raise FileNotFoundError(
            f"golden data missing: {GOLDEN_DATA / MARKER} not found. It is committed with the repository, so "
            "the checkout is incomplete; restore tests/data/golden_tiny or set SHARP_GOLDEN_DIR to a copy"
        )
    return GOLDEN_DATA


@pytest.fixture(autouse=True, scope="session")
def _openvino_cache_in_tmp(tmp_path_factory):
    """OpenVINO runners keep compiled models under ~/.cache by default: the suite keeps them in its own tmp."""
    previous = os.environ.get("SHARP_EXPORT_OPENVINO_CACHE")
    os.environ["SHARP_EXPORT_OPENVINO_CACHE"] = str(tmp_path_factory.mktemp("openvino_cache"))
    yield
    if previous is None:
        os.environ.pop("SHARP_EXPORT_OPENVINO_CACHE", None)
    else:
        os.environ["SHARP_EXPORT_OPENVINO_CACHE"] = previous


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return find_golden_dir()


@pytest.fixture(scope="session")
def official_ply_sha256() -> dict[str, str]:
    """File name -> sha256 of the PLYs ml-sharp wrote for the golden runs (the PLY files are not shipped)."""
    facts = json.loads((GOLDEN_DATA / "provenance.json").read_text())
    return {name: entry["sha256"] for name, entry in facts["official_ply"].items()}


# torch.log on the CPU goes through MKL's vector math, whose code path depends on the CPU: on a Xeon with AMX,
# 21,646 of the 221,184 log-scale values of out_640x480_seed0 come out 1 ULP away from the official PLY's, on an
# AVX2-only AMD EPYC none did. MKL's conditional numerical reproducibility mode COMPATIBLE reproduces the official
# bytes on that Xeon (measured: 0 values differ; also with SSE4_2 or AVX, not with AVX2 or AVX512). It is set only
# in a child process: MKL reads it once, and in the test process it would slow every matmul down.
MKL_REPRODUCIBLE = {"MKL_CBWR": "COMPATIBLE"}
WRITE_PLY_CHILD = """
import sys, numpy as np, torch
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.ply import save_ply
data = np.load(sys.argv[1])
fields = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
width, height = (int(v) for v in data["image_size_wh"])
gaussians = Gaussians3D(*(torch.from_numpy(data[k]) for k in fields))
save_ply(gaussians, SceneMeta(float(data["f_px"]), width, height), sys.argv[2])
"""


def write_ply_reproducibly(npz: Path, target: Path) -> Path:
    """Our official-format writer on the golden arrays ``npz``, in a child with MKL's reproducible code path."""
    import subprocess
    import sys

    env = {**os.environ, **MKL_REPRODUCIBLE}
    subprocess.run([sys.executable, "-c", WRITE_PLY_CHILD, str(npz), str(target)], check=True, env=env)
    return target


@pytest.fixture(scope="session")
def reproducible_ply_writer():
    """write_ply_reproducibly(npz, target): the writer with MKL's reproducible code path, in a child process."""
    return write_ply_reproducibly


@pytest.fixture(scope="session")
def official_ply(golden_dir, official_ply_sha256, tmp_path_factory):
    """name ("perturbed" / "seed0") -> path of out_640x480_{name}.ply as ml-sharp wrote it.

    The file is rebuilt by our writer from the golden arrays (with MKL's reproducible code path, see
    MKL_REPRODUCIBLE) and used only after its sha256 has been checked against the official PLY's, so its bytes
    are the official bytes.
    """
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            target = tmp_path_factory.mktemp(f"official_ply_{name}") / f"out_640x480_{name}.ply"
            write_ply_reproducibly(golden_dir / f"out_640x480_{name}.npz", target)
            if hashlib.sha256(target.read_bytes()).hexdigest() != official_ply_sha256[target.name]:
                pytest.fail(f"our writer no longer reproduces the official {target.name} (sha256 differs)")
            made[name] = target
        return made[name]

    return make


class StandInPredictor(torch.nn.Module):
    """Tiny model with the predictor's signature: image [B,3,64,64], disparity_factor [B] -> Gaussians3D."""

    resolution = 64

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 28, 1)

    def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> Gaussians3D:
        b = image.shape[0]
        x = F.avg_pool2d(torch.relu(self.conv(image * 2 - 1)), 2)  # [B, 8, 32, 32]
        d = self.head(x).reshape(b, 14, 2, 32, 32).permute(0, 2, 3, 4, 1).reshape(b, 2048, 14)
        z = disparity_factor[:, None, None] / (torch.sigmoid(d[..., 2:3]) + 1e-3)  # [B, N, 1]
        means = torch.cat([d[..., 0:2] * z, z], dim=-1)
        quats = d[..., 6:10] + torch.tensor([1.0, 0.0, 0.0, 0.0])
        return Gaussians3D(
            means, F.softplus(d[..., 3:6]), quats, torch.sigmoid(d[..., 10:13]), torch.sigmoid(d[..., 13])
        )


def use_standin_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make build_model return the stand-in (whatever preset, weights or precision is asked for)."""
    from sharp_export.reference import checkpoint

    def build(preset, checkpoint_path=None, seed=None, device="cpu", precision="fp32") -> checkpoint.LoadedModel:
        return checkpoint.LoadedModel(StandInPredictor().eval(), preset, None, None, seed, precision)

    monkeypatch.setattr(checkpoint, "build_model", build)


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_model returns the 64 px stand-in for the test's duration (exports take about a second)."""
    use_standin_model(monkeypatch)


@pytest.fixture
def without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT looks absent, as on the CPU machines, even where it is installed (a GPU box)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # and `import tensorrt` fails


@pytest.fixture(scope="session")
def session_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ONNX artifact (seed 0, weights in model.onnx.data) that the bad-input catalogue's run and parity
    cases read; built once per session (tests/catalogue.py)."""
    from click.testing import CliRunner

    from sharp_export.cli import cli

    target = tmp_path_factory.mktemp("bad_inputs") / "tiny-onnx"
    args = ["onnx", "--preset", "tiny", "--seed", "0", "-o", str(target), "--no-parity", "--external-data", "always"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (target / "model.onnx.data").is_file()
    return target
