"""Atomic artifact directories, manifests and file hashes (no model involved)."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from sharp_export.artifact import (
    MANIFEST_NAME,
    Manifest,
    atomic_directory,
    hash_files,
    preprocessing_description,
    raw_io_spec,
    read_manifest,
    verify_files,
    write_manifest,
)
from sharp_export.capture import capture_log
from sharp_export.errors import UserInputError
from sharp_export.progress import echo


def _manifest() -> Manifest:
    return Manifest(
        source={"preset": "tiny", "checkpoint_sha256": None, "seed": 0, "untrained": True, "label": "UNTRAINED"},
        target="onnx",
        precision="fp32",
        options={"dynamic_batch": False},
        io=raw_io_spec(384, 1),
        preprocessing=preprocessing_description(384),
        environment={"python": sys.version},
        reproduce="sharp-export onnx --preset tiny --seed 0 -o out",
        main_file="model.bin",
    )


def _write_artifact(directory) -> None:
    (directory / "model.bin").write_bytes(b"\x00\x01weights")
    (directory / "sub").mkdir()
    (directory / "sub" / "extra.txt").write_text("hello")
    write_manifest(directory, _manifest())


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_directory_commits_complete_artifact(tmp_path):
    final = tmp_path / "out" / "art"
    with atomic_directory(final) as work:
        assert work.parent == final.parent and work.name.startswith("art.tmp-")
        assert not final.exists()  # nothing under the final name until the end
        _write_artifact(work)
    assert _siblings(final) == ["art"]
    manifest = read_manifest(final)
    assert manifest.target == "onnx" and manifest.main_file == "model.bin"
    assert manifest.tool["name"] == "sharp-export" and manifest.schema_version == 1
    assert manifest.files["model.bin"] == {"sha256": hashlib.sha256(b"\x00\x01weights").hexdigest(), "size": 9}
    assert set(manifest.files) == {"model.bin", "sub/extra.txt"}  # the manifest does not hash itself
    assert manifest.io.input("image").shape == (1, 3, 384, 384)
    assert manifest.io.outputs[0].shape == (1, 73728, 3)  # 2 layers x 192 x 192 Gaussians
    assert verify_files(final) == manifest.files


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_nothing(tmp_path, error):
    final = tmp_path / "art"
    with pytest.raises(type(error)):
        with atomic_directory(final) as work:
            (work / "model.bin").write_bytes(b"partial")
            raise error
    assert list(tmp_path.iterdir()) == []  # no artifact and no temp directory


def test_refuses_to_overwrite_without_force(tmp_path):
    final = tmp_path / "art"
    with atomic_directory(final) as work:
        _write_artifact(work)
    with pytest.raises(UserInputError, match="already exists.*--force"):
        with atomic_directory(final):
            pass
    assert _siblings(final) == ["art"]


def test_force_replaces_atomically_and_failure_keeps_old(tmp_path):
    final = tmp_path / "art"
    with atomic_directory(final) as work:
        _write_artifact(work)
    with pytest.raises(RuntimeError):
        with atomic_directory(final, force=True) as work:
            raise RuntimeError("second export failed")
    assert read_manifest(final).files["model.bin"]["size"] == 9  # old artifact untouched
    with atomic_directory(final, force=True) as work:
        (work / "model.bin").write_bytes(b"new")
        write_manifest(work, _manifest())
    assert read_manifest(final).files["model.bin"]["size"] == 3
    assert _siblings(final) == ["art"]  # no .old-* or .tmp-* left behind


def test_force_never_replaces_a_non_artifact(tmp_path):
    final = tmp_path / "photos"
    final.mkdir()
    (final / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UserInputError, match="not provably a sharp-export artifact"):
        with atomic_directory(final, force=True):
            pass
    assert (final / "holiday.jpg").read_bytes() == b"precious"


def test_read_manifest_errors_are_clear(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        read_manifest(tmp_path / "missing")
    file = tmp_path / "file.onnx"
    file.write_bytes(b"x")
    with pytest.raises(UserInputError, match="is a file, not an artifact directory"):
        read_manifest(file)
    with pytest.raises(UserInputError, match="not a sharp-export artifact \\(no manifest.json\\)"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(UserInputError, match="missing manifest keys"):
        read_manifest(tmp_path)


def test_newer_schema_is_refused(tmp_path):
    _write_artifact(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["schema_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="schema_version 99"):
        read_manifest(tmp_path)


def test_verify_files_names_changed_and_missing_files(tmp_path):
    _write_artifact(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x00\x01weightX")  # same size, different content
    (tmp_path / "sub" / "extra.txt").unlink()
    with pytest.raises(UserInputError, match="model.bin sha256 .* != manifest .*; sub/extra.txt missing"):
        verify_files(tmp_path)


def test_hash_files_matches_hashlib(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert hash_files(tmp_path) == {"a": {"sha256": hashlib.sha256(b"abc").hexdigest(), "size": 3}}


def test_capture_log_keeps_chatter_in_the_log(capsys):
    with capture_log() as log:
        print("to stdout")
        print("to stderr", file=sys.stderr)
        echo("our line")
    assert log.getvalue() == "to stdout\nto stderr\nour line\n"
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays clean
    assert captured.err == "our line\n"  # the terminal shows only our lines
    with capture_log(show=True) as log:  # -v: the chatter on the terminal as well
        print("to stdout")
        echo("our line")
    assert log.getvalue() == "to stdout\nour line\n"
    assert capsys.readouterr() == ("", "to stdout\nour line\n")
