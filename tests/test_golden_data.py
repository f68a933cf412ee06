"""The committed golden data (tests/data/golden_tiny) is complete and unchanged: every file matches SHA256SUMS.

Always checks the in-repo folder, also when SHARP_GOLDEN_DIR points the other tests elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data" / "golden_tiny"
UNCHECKED = {"README.md", "SHA256SUMS"}  # documentation and the checksum list itself
HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listed() -> dict[str, str]:
    """SHA256SUMS in `sha256sum` format (so `sha256sum -c SHA256SUMS` works in that folder)."""
    sums = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        assert HEX64.fullmatch(digest), line
        sums[name.lstrip("*")] = digest
    return sums


def test_sha256sums_lists_every_data_file():
    on_disk = {p.name for p in DATA.iterdir() if p.name not in UNCHECKED}
    assert set(listed()) == on_disk  # a missing file, or an added one nobody checksummed, fails here
    assert (DATA / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(listed()))
def test_file_matches_its_checksum(name):
    path = DATA / name
    assert path.is_file(), f"{path} is missing"
    assert sha256(path) == listed()[name], f"{name} changed; see {DATA / 'README.md'}"


def facts() -> dict:
    return json.loads((DATA / "provenance.json").read_text())


def test_repacked_arrays_are_bit_identical_to_the_original():
    """Files re-zipped here hold exactly the arrays ml-sharp saved (digests taken from the original files)."""
    for name, entry in facts()["repacked"].items():
        data = np.load(DATA / name)
        assert list(data.files) == list(entry["arrays"]), name
        for key, expected in entry["arrays"].items():
            array = data[key]
            assert str(array.dtype) == expected["dtype"] and list(array.shape) == expected["shape"], (name, key)
            assert hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() == expected["sha256"], (name, key)


def test_official_ply_hashes_are_recorded():
    ply = facts()["official_ply"]
    assert set(ply) == {"out_640x480_perturbed.ply", "out_640x480_seed0.ply"}
    for entry in ply.values():
        assert HEX64.fullmatch(entry["sha256"]) and entry["bytes"] == 4_129_564
    for name in set(facts()["dropped"]) - UNCHECKED:  # the original README.md was replaced by our own
        assert not (DATA / name).exists(), f"{name} is listed as dropped but present"
