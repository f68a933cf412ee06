"""The pure-PyTorch renderer against gsplat 1.5.3 itself on the tiny golden scene.

* ``test_torch_matches_gsplat`` (marked gpu) renders both live where CUDA and gsplat are installed.
* ``test_torch_matches_stored_gsplat_references`` compares with the npz that
  benchmarks/make_gsplat_references.py writes on a GPU machine; it is skipped until that file exists.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.render import Camera, make_trajectory, render_scene

REFERENCES = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gsplat_references_tiny.npz"
MIN_PSNR_DB = 45.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double().cpu() - b.double().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def golden_scene(golden_dir):
    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    names = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
    gaussians = Gaussians3D(*(torch.from_numpy(data[name]) for name in names))
    return gaussians, SceneMeta(f_px=float(data["f_px"]), width=640, height=480)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None, reason="needs CUDA and gsplat==1.5.3"
)
@pytest.mark.parametrize("frame", [0, 30, 59])
def test_torch_matches_gsplat(golden_scene, frame):
    gaussians, meta = golden_scene
    camera = make_trajectory(gaussians, meta, "rotate_forward", num_frames=60)[frame]
    on_gpu = gaussians.to("cuda")
    reference = render_scene(on_gpu, camera, backend="gsplat")
    ours = render_scene(on_gpu, camera, backend="torch")
    assert psnr(ours.color, reference.color) >= MIN_PSNR_DB
    assert psnr(ours.alpha, reference.alpha) >= MIN_PSNR_DB
    covered = reference.alpha > 0.5
    relative = (ours.depth[covered] - reference.depth[covered]).abs() / reference.depth[covered]
    assert float(relative.median()) < 1e-4  # float32 on both sides; not yet measured on a GPU


@pytest.mark.skipif(not REFERENCES.is_file(), reason="run benchmarks/make_gsplat_references.py on a GPU machine")
def test_torch_matches_stored_gsplat_references(golden_scene):
    gaussians, meta = golden_scene
    refs = np.load(REFERENCES)
    for frame in refs["frames"].tolist():
        camera = Camera(
            viewmat=torch.from_numpy(refs[f"viewmat_{frame}"]),
            K=torch.from_numpy(refs[f"K_{frame}"]),
            width=640,
            height=480,
        )
        for eps2d in refs["eps2d"].tolist():
            tag = f"{frame}_eps{eps2d:g}"
            ours = render_scene(gaussians, camera, backend="torch", eps2d=eps2d)
            assert psnr(ours.color, torch.from_numpy(refs[f"color_{tag}"])) >= MIN_PSNR_DB, tag
            assert psnr(ours.alpha, torch.from_numpy(refs[f"alpha_{tag}"])) >= MIN_PSNR_DB, tag
