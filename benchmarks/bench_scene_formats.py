"""File size, write time and read-back error of every scene format, on real predicted scenes.

    python benchmarks/bench_scene_formats.py FULL.ply [MORE.ply ...]

Each PLY (an official PLY from `sharp-export predict`) is loaded, written in every --format, and read back with
reference.scenes.load_scene (what `view` uses); the errors are against the official PLY's scene. The golden tiny
scene (ml-sharp's own output for the perturbed tiny weights) is always included. Saves
benchmarks/results/scene_formats.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import save

from sharp_export.reference.gaussians import Gaussians3D, SceneMeta
from sharp_export.reference.ply import FORMAT_SUFFIXES, PLY_FORMATS, load_ply, save_ply
from sharp_export.reference.scenes import load_scene

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_tiny" / "out_640x480_perturbed.npz"


def golden_scene() -> tuple[Gaussians3D, SceneMeta]:
    data = np.load(GOLDEN)
    fields = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
    width, height = (int(v) for v in data["image_size_wh"])
    return Gaussians3D(*(torch.from_numpy(data[k]) for k in fields)), SceneMeta(float(data["f_px"]), width, height)


def order_free_errors(reference: Gaussians3D, scene: Gaussians3D) -> dict:
    """Largest errors of sorted depths, opacities and colours (splat and compressed PLY reorder the Gaussians)."""

    def sorted_values(g: Gaussians3D, name: str) -> np.ndarray:
        return np.sort(getattr(g, name)[0].reshape(g.mean_vectors.shape[1], -1).double().numpy(), axis=0)

    def largest(name: str) -> float:
        return float(np.abs(sorted_values(scene, name) - sorted_values(reference, name)).max())

    depth_ref, depth = sorted_values(reference, "mean_vectors")[:, 2], sorted_values(scene, "mean_vectors")[:, 2]
    return {
        "depth_abs_max_m": float(np.abs(depth - depth_ref).max()),
        "depth_rel_max": float((np.abs(depth - depth_ref) / depth_ref).max()),
        "opacity_abs_max": largest("opacities"),
        "color_linear_abs_max": largest("colors"),
    }


def measure(name: str, gaussians: Gaussians3D, meta: SceneMeta, folder: Path) -> dict:
    count = int(gaussians.mean_vectors.shape[1])
    rows = {}
    reference = None
    for fmt in PLY_FORMATS:
        path = folder / f"{name}{FORMAT_SUFFIXES[fmt]}"
        if fmt == "viewer":
            path = folder / f"{name}.viewer.ply"
        save_ply(gaussians, meta, path, format=fmt, replace=True)  # once to warm up gsply's compiled kernels
        start = time.perf_counter()
        save_ply(gaussians, meta, path, format=fmt, replace=True)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        scene, _, _ = load_scene(path)
        read_s = time.perf_counter() - start
        if fmt == "official":
            reference = scene
        size = path.stat().st_size
        rows[fmt] = {
            "bytes": size,
            "bytes_per_gaussian": size / count,
            "write_s": round(write_s, 3),
            "read_s": round(read_s, 3),
            **order_free_errors(reference, scene),
        }
        print(f"{name} {fmt}: {size:,} bytes, write {write_s:.2f} s, read {read_s:.2f} s", flush=True)
    official = rows["official"]["bytes"]
    for row in rows.values():
        row["ratio_to_official"] = round(official / row["bytes"], 3)
    return {"gaussians": count, "formats": rows}


def main(paths: list[str]) -> None:
    scenes = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gaussians, meta = golden_scene()
        scenes["golden_tiny_perturbed"] = measure("golden_tiny_perturbed", gaussians, meta, folder)
        for path in paths:
            gaussians, meta = load_ply(path)
            scenes[Path(path).stem] = {"source": str(path), **measure(Path(path).stem, gaussians, meta, folder)}
            for file in folder.iterdir():
                file.unlink()
    save(
        "scene_formats",
        {
            "note": "sizes of one scene per format; errors are order-free (sorted values) against the official PLY",
            "scenes": scenes,
        },
    )


if __name__ == "__main__":
    main(sys.argv[1:])
