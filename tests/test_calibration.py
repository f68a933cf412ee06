"""Calibration sets: listing, deterministic selection, the set hash, the samples keyword and the one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharp_export.calibration import dataset
from sharp_export.calibration.dataset import (
    DEFAULT_CALIB_SIZE,
    MIN_CALIB_IMAGES,
    evenly_spaced,
    is_samples,
    load_calibration_set,
    select_images,
)
from sharp_export.errors import UserInputError
from sharp_export.reference.preprocess import load_image, prepare_input


def _photo(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Ten photos in nested folders, in shuffled creation order, plus files that are not photos."""
    root = tmp_path / "photos"
    names = ["b/07.png", "a/02.jpg", "10.png", "a/01.png", "c/d/05.png", "03.png", "b/08.jpg", "04.png",
             "c/06.png", "09.png"]  # fmt: skip
    for seed, name in enumerate(names):
        _photo(root / name, seed)
    (root / "notes.txt").write_text("not a photo")
    (root / "._01.png").write_bytes(b"macOS resource fork")  # hidden: skipped, although it has an image suffix
    (root / ".cache").mkdir()
    _photo(root / ".cache" / "thumb.png", 99)
    return root


def test_listing_is_recursive_sorted_and_skips_hidden_and_other_files(folder):
    listed = [p.relative_to(folder).as_posix() for p in dataset.list_calibration_images(folder)]
    assert listed == ["03.png", "04.png", "09.png", "10.png", "a/01.png", "a/02.jpg", "b/07.png", "b/08.jpg",
                      "c/06.png", "c/d/05.png"]  # fmt: skip


def test_evenly_spaced_picks_the_centre_of_each_bin():
    assert evenly_spaced(10, 4) == [1, 3, 6, 8]
    assert evenly_spaced(5, 5) == [0, 1, 2, 3, 4]
    assert evenly_spaced(100, 1) == [50]
    for count, size in ((7, 3), (16, 8), (1000, 8)):
        picks = evenly_spaced(count, size)
        assert len(set(picks)) == size and picks == sorted(picks) and 0 <= picks[0] and picks[-1] < count


def test_selection_and_hash_are_deterministic(folder, tmp_path):
    first = select_images(folder, 4)
    assert first.relative_names() == ["04.png", "10.png", "b/07.png", "c/06.png"]
    assert first.available == 10 and select_images(folder, 4) == first
    a = load_calibration_set(folder, 32, 4)
    b = load_calibration_set(folder, 32, 4)
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    # The same files elsewhere (another folder name) give the same set and hash: names do not enter the hash.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert load_calibration_set(copy, 32, 4).sha256 == a.sha256
    # Another resolution, or one changed selected file, gives another hash.
    assert load_calibration_set(folder, 48, 4).sha256 != a.sha256
    _photo(copy / "10.png", 1234)
    assert load_calibration_set(copy, 32, 4).sha256 != a.sha256
    # The tensors are predict's preprocessing of the picked files.
    expected, factor = prepare_input(load_image(folder / "04.png"), 32)
    assert a.images[0].shape == (1, 3, 32, 32) and np.array_equal(a.images[0].numpy(), expected.numpy())
    assert float(a.disparity_factors[0]) == float(factor)
    described = a.describe()
    assert described["size"] == 4 and described["available"] == 10 and described["sha256"] == a.sha256
    assert [i["name"] for i in described["images"]] == first.relative_names()


def test_default_size_uses_all_images_when_fewer(folder):
    assert select_images(folder).size == min(DEFAULT_CALIB_SIZE, 10)
    assert select_images(folder, 10).size == 10


def test_empty_folder_is_one_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UserInputError, match="holds no images") as info:
        select_images(empty)
    assert info.value.path == empty and "\n" not in str(info.value)
    with pytest.raises(UserInputError, match="calibration folder not found") as info:
        select_images(tmp_path / "missing")
    assert info.value.path == tmp_path / "missing"


def test_too_few_images(tmp_path):
    root = tmp_path / "few"
    for i in range(MIN_CALIB_IMAGES - 1):
        _photo(root / f"{i}.png", i)
    with pytest.raises(UserInputError, match="too few calibration images") as info:
        select_images(root)
    assert info.value.path == root and f"--calib-size {MIN_CALIB_IMAGES - 1}" in info.value.fix
    assert select_images(root, MIN_CALIB_IMAGES - 1).size == MIN_CALIB_IMAGES - 1  # explicit: accepted
    with pytest.raises(UserInputError, match="--calib-size 9 asks for 9") as info:
        select_images(root, 9)
    assert info.value.path == root
    with pytest.raises(UserInputError, match="at least 1"):
        select_images(root, 0)


def test_unreadable_image_names_the_file(folder):
    broken = folder / "10.png"  # one of the four picked
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserInputError, match="calibration image") as info:
        load_calibration_set(folder, 32, 4)
    assert info.value.path == broken and "\n" not in str(info.value)


def test_samples_keyword(capsys):
    assert is_samples("samples") and is_samples(Path("samples")) and not is_samples("/data/samples")
    selection = select_images("samples")
    assert selection.size == 5 and selection.root is None  # all five bundled photos (the default 8 > 5)
    assert selection.relative_names() == sorted(selection.relative_names())
    with pytest.raises(UserInputError, match="bundled sample photos are only 5"):
        select_images("samples", 6)
    calibration = load_calibration_set("samples", 32, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("CALIBRATION: using the 2 bundled scikit-image sample photos")
    assert len(calibration) == 2 and calibration.images[0].shape == (1, 3, 32, 32)
    assert calibration.describe()["source"] == "samples"
