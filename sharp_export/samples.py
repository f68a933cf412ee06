"""Real sample photos for demos, parity and calibration: the ones shipped inside scikit-image's wheel.

Only files that are part of the installed package are used; nothing is downloaded. (scikit-image
fetches its larger data sets with pooch into a cache; these five are in the wheel itself.)
"""

from __future__ import annotations

from pathlib import Path

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
