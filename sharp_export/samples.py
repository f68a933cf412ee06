"""Inputs that need no user file: real sample photos (scikit-image's wheel) and the synthetic golden pattern.

Only files that are part of the installed package are used; nothing is downloaded. (scikit-image
fetches its larger data sets with pooch into a cache; these five are in the wheel itself.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sharp_export.contract import ExampleInputs
from sharp_export.errors import UserInputError

# name -> file name in skimage/data, with what the photo shows.
SAMPLE_FILES = {
    "astronaut": "astronaut.png",  # 512 x 512, portrait of Eileen Collins
    "coffee": "coffee.png",  # 600 x 400, cup of coffee on a table
    "chelsea": "chelsea.png",  # 451 x 300, a cat
    "rocket": "rocket.jpg",  # 640 x 427, rocket on the launch pad
    "motorcycle_left": "motorcycle_left.png",  # 741 x 500, left view of a stereo pair
}
SAMPLE_NAMES = tuple(SAMPLE_FILES)
DEFAULT_SAMPLE = "coffee"


def _skimage_data_dirs() -> list[Path]:
    try:
        import skimage.data
    except ImportError as error:
        # A core dependency, so no extra to name: the environment is broken.
        raise UserInputError(
            "the sample photos come from scikit-image, which is not installed", fix="pip install scikit-image"
        ) from error
    # skimage.data.data_dir is the package folder without pooch and pooch's cache folder with it; the
    # package folder (next to skimage/data/__init__.py) always holds the files shipped in the wheel.
    dirs = [Path(skimage.data.data_dir), Path(skimage.data.__file__).resolve().parent]
    return list(dict.fromkeys(dirs))


def sample_image_path(name: str) -> Path:
    """Path of a sample photo by name (see ``SAMPLE_NAMES``)."""
    if name not in SAMPLE_FILES:
        raise UserInputError(f"unknown sample '{name}'", fix=f"use one of {', '.join(SAMPLE_NAMES)}")
    candidates = [folder / SAMPLE_FILES[name] for folder in _skimage_data_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    raise UserInputError(
        f"sample '{name}' is not in the installed scikit-image (looked in {', '.join(map(str, candidates))})",
        fix="reinstall scikit-image from a wheel: pip install --force-reinstall scikit-image",
    )


def default_sample_path() -> Path:
    return sample_image_path(DEFAULT_SAMPLE)


# ---- the synthetic test pattern: the export example input -----------------------------------------------


def golden_pattern(resolution: int) -> np.ndarray:
    """The golden bundle's synthetic test image (smooth colour waves + a soft disk) as uint8 [H, W, 3].

    Deterministic and file-free; the same formula made the reference goldens (tests/data/golden_tiny), so
    example outputs are comparable across machines.
    """
    coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    u, v = np.meshgrid(coords, coords)  # u along columns (x), v along rows (y)
    red = 0.5 + 0.4 * np.sin(2 * np.pi * (1.5 * u + 0.1)) * np.cos(2 * np.pi * 0.75 * v)
    green = 0.5 + 0.4 * np.sin(2 * np.pi * (1.25 * v + 0.3))
    blue = 0.5 + 0.4 * np.cos(2 * np.pi * 0.8 * (u + v))
    image = np.stack([red, green, blue], axis=-1)
    alpha = 1.0 / (1.0 + np.exp((np.sqrt((u - 0.6) ** 2 + (v - 0.55) ** 2) - 0.18) / 0.01))
    image = image * (1 - alpha[..., None]) + np.array([0.9, 0.3, 0.2]) * alpha[..., None]
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def example_inputs(resolution: int, batch: int = 1) -> ExampleInputs:
    """Example batch: the golden pattern, mirrored for odd batch entries, disparity factors 1.0, 0.9, ..."""
    import torch

    base = torch.from_numpy(golden_pattern(resolution)).permute(2, 0, 1).float() / 255.0
    images = [base if i % 2 == 0 else base.flip(-1) for i in range(batch)]
    factors = torch.tensor([1.0 - 0.1 * (i % 5) for i in range(batch)], dtype=torch.float32)
    return ExampleInputs(torch.stack(images).contiguous(), factors)
