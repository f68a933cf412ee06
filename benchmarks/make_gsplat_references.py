"""Make small gsplat 1.5.3 reference renders of the tiny golden scene (run on a CUDA machine with gsplat).

    pip install gsplat==1.5.3          # compiles its CUDA kernels on first use (needs nvcc)
    python benchmarks/make_gsplat_references.py [--out benchmarks/results/gsplat_references_tiny.npz]

Renders tests/data/golden_tiny/out_640x480_perturbed.npz (SceneMeta(f_px, 640, 480)) through SHARP's
rotate_forward trajectory (60 frames) at frames 0, 30 and 59, with eps2d = 0 (SHARP) and 0.3 (gsplat's
default), and stores colour (sRGB), depth and alpha per render plus the cameras. The CPU test
tests/test_render_gsplat.py::test_torch_matches_stored_gsplat_references compares the torch renderer
with this file when it exists. It has NOT been run on the machine that wrote this script (no GPU there).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.render import make_trajectory, render_scene

FRAMES = (0, 30, 59)
EPS2D = (0.0, 0.3)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gsplat_references_tiny.npz"


def golden_scene(golden_dir: Path) -> tuple[Gaussians3D, SceneMeta]:
    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    names = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
    gaussians = Gaussians3D(*(torch.from_numpy(data[name]) for name in names))
    return gaussians, SceneMeta(f_px=float(data["f_px"]), width=640, height=480)


def main() -> None:
    parser = argparse.ArgumentParser()
    in_repo = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_tiny"
    default_golden = os.environ.get("SHARP_GOLDEN_DIR", str(in_repo))
    parser.add_argument("--golden-dir", type=Path, default=Path(default_golden))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    import gsplat

    gaussians, meta = golden_scene(args.golden_dir)
    cameras = make_trajectory(gaussians, meta, "rotate_forward", num_frames=60)
    on_gpu = gaussians.to("cuda")
    arrays: dict[str, np.ndarray] = {"frames": np.array(FRAMES), "eps2d": np.array(EPS2D)}
    for frame in FRAMES:
        camera = cameras[frame]
        arrays[f"viewmat_{frame}"] = camera.viewmat.numpy()
        arrays[f"K_{frame}"] = camera.K.numpy()
        for eps2d in EPS2D:
            out = render_scene(on_gpu, camera, backend="gsplat", eps2d=eps2d)
            tag = f"{frame}_eps{eps2d:g}"
            arrays[f"color_{tag}"] = out.color.cpu().numpy()
            arrays[f"depth_{tag}"] = out.depth.cpu().numpy()
            arrays[f"alpha_{tag}"] = out.alpha.cpu().numpy()
            print(f"frame {frame} eps2d {eps2d}: mean colour {out.color.mean():.4f}, mean alpha {out.alpha.mean():.4f}")
    arrays["gsplat_version"] = np.array(gsplat.__version__)
    arrays["device"] = np.array(torch.cuda.get_device_name(0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
