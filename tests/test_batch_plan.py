"""`sharp-export batch` without Ray: listing INPUT, the resume plan, the manifest and its journals, the bytes
decoder. The Ray runs are in tests/test_batch.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from catalogue import save_photo
from PIL import Image

pytest.importorskip("pyarrow")

from sharp_export.batch.inputs import output_collisions, resolve_inputs  # noqa: E402
from sharp_export.batch.manifest import (  # noqa: E402
    MANIFEST_NAME,
    Journal,
    fold_journals,
    journal_paths,
    new_row,
    read_manifest,
)
from sharp_export.batch.plan import identity, lock_folder, make_plan  # noqa: E402
from sharp_export.errors import UserInputError  # noqa: E402

SHA = "a" * 64


def tree(root: Path, names: list[str]) -> list[Path]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (len(name) + 1))
        paths.append(path)
    return paths


# ---- the bytes decoder ------------------------------------------------------------------------------------------


def test_bytes_decode_like_the_file(tmp_path: Path) -> None:
    from sharp_export.reference.preprocess import load_image, load_image_bytes

    path = save_photo(tmp_path / "p.png")
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270
    exif.get_ifd(0x8769)[0x920A] = 1e9  # absurd: a warning and the 30 mm default
    Image.open(path).convert("RGB").save(rotated, exif=exif, quality=95)
    for file in (path, rotated):
        a, b = load_image(file), load_image_bytes(file.read_bytes(), f"s3://bucket/{file.name}")
        assert np.array_equal(a.rgb, b.rgb) and (a.f_px, a.width, a.height) == (b.f_px, b.width, b.height)
        assert a.warnings == b.warnings
    assert load_image(rotated).rgb.shape == (64, 48, 3) and load_image(rotated).warnings  # the case is not trivial
    with pytest.raises(UserInputError, match="junk.jpg: not an image PIL can read"):
        load_image_bytes(b"not an image", "in/junk.jpg")


# ---- listing INPUT ----------------------------------------------------------------------------------------------


def test_a_folder_lists_images_recursively_and_outputs_mirror_it(tmp_path: Path) -> None:
    tree(tmp_path / "in", ["b.jpg", "a/c.PNG", "a/d/e.webp", "notes.txt", "a/scene.ply"])
    found = resolve_inputs(str(tmp_path / "in"), ".ply")
    assert [f.output for f in found.files] == ["a/c.ply", "a/d/e.ply", "b.ply"]
    assert [f.uri for f in found.files] == [str(tmp_path / "in" / n) for n in ("a/c.PNG", "a/d/e.webp", "b.jpg")]
    assert found.files[0].size == len("a/c.PNG") + 1 and found.files[0].mtime_ns is not None
    assert [f.output for f in resolve_inputs(str(tmp_path / "in"), ".spz", limit=2).files] == ["a/c.spz", "a/d/e.spz"]
    assert resolve_inputs(f"file://{tmp_path / 'in'}", ".ply").total == 3


def test_globs_match_within_a_folder_and_double_star_across(tmp_path: Path) -> None:
    tree(tmp_path, ["in/x.jpg", "in/y.png", "in/sub/z.jpg", "in/sub/deeper/w.jpg", "in/v.txt"])
    names = lambda pattern: [f.output for f in resolve_inputs(str(tmp_path / pattern), ".ply").files]  # noqa: E731
    assert names("in/*.jpg") == ["x.ply"]
    assert names("in/**/*.jpg") == ["sub/deeper/w.ply", "sub/z.ply", "x.ply"]
    assert names("in/s?b/*") == ["sub/z.ply"]  # relative to the folder before the first wildcard
    with pytest.raises(UserInputError, match="no images match"):
        resolve_inputs(str(tmp_path / "in/*.gif"), ".ply")


def test_a_list_file_takes_entries_as_given_and_reports_missing_ones(tmp_path: Path) -> None:
    (a, b) = tree(tmp_path, ["shoot/one/a.jpg", "shoot/two/b.jpg"])
    listing = tmp_path / "shoot" / "list.txt"
    listing.write_text(f"# photos\none/a.jpg\n\n{b}\none/gone.jpg\none\n")
    found = resolve_inputs(str(listing), ".ply")
    assert [f.uri for f in found.files] == [str(a), str(b)]
    assert [f.output for f in found.files] == ["one/a.ply", "two/b.ply"]
    assert found.missing == [(str(tmp_path / "shoot/one/gone.jpg"), "input not found"),
                             (str(tmp_path / "shoot/one"), "is a folder, not an image file")]  # fmt: skip
    assert found.total == 4
    listing.write_text("# nothing\n")
    with pytest.raises(UserInputError, match="names no images"):
        resolve_inputs(str(listing), ".ply")
    listing.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UserInputError, match="nor a list file"):
        resolve_inputs(str(listing), ".ply")


def test_missing_input_and_empty_folder_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="input not found"):
        resolve_inputs(str(tmp_path / "nope"), ".ply")
    tree(tmp_path, ["in/readme.md"])
    with pytest.raises(UserInputError, match="no images found in"):
        resolve_inputs(str(tmp_path / "in"), ".ply")
    with pytest.raises(UserInputError, match="cannot open this location"):
        resolve_inputs("nosuchscheme://bucket/photos", ".ply")


def test_two_inputs_for_one_output_are_refused(tmp_path: Path) -> None:
    tree(tmp_path, ["in/a.jpg", "in/a.png"])
    with pytest.raises(UserInputError, match="would both be written to"):
        output_collisions(resolve_inputs(str(tmp_path / "in"), ".ply"), tmp_path / "out")


# ---- the plan ---------------------------------------------------------------------------------------------------


def ok_row(item, out: Path, **changes) -> dict:
    row = new_row(input=item.uri, input_size=item.size, input_mtime_ns=item.mtime_ns, output=item.output,
                  output_size=(out / item.output).stat().st_size if (out / item.output).exists() else 7, status="ok",
                  artifact_sha256=SHA, format="official", y_up=False, written=True, finished=1.0)  # fmt: skip
    row.update(changes)
    return row


def test_the_plan_skips_what_is_done_and_what_failed_on_the_same_input(tmp_path: Path) -> None:
    tree(tmp_path, ["in/a.jpg", "in/b.jpg", "in/c.jpg", "in/d.jpg", "in/e.jpg"])
    inputs = resolve_inputs(str(tmp_path / "in"), ".ply")
    a, b, c, d, e = inputs.files
    out = tmp_path / "out"
    out.mkdir()
    for item in (a, b, c):
        (out / item.output).write_bytes(b"scene")
    rows = {
        a.uri: ok_row(a, out),  # done
        b.uri: ok_row(b, out, artifact_sha256="b" * 64),  # another artifact made it: in the way
        c.uri: ok_row(c, out, output_size=3),  # the file is not the one recorded: in the way
        d.uri: ok_row(d, out, status="failed", output=None),  # failed before on this very input
        e.uri: ok_row(e, out, status="failed", output=None, input_size=e.size + 1),  # the input changed since
    }
    with pytest.raises(UserInputError, match=r"b.ply: already exists; nothing was overwritten .*1 more outputs"):
        make_plan(inputs, out, rows, artifact_sha256=SHA, fmt="official", y_up=False, force=False)
    del rows[b.uri], rows[c.uri]
    (out / b.output).unlink()
    (out / c.output).unlink()
    plan = make_plan(inputs, out, rows, artifact_sha256=SHA, fmt="official", y_up=False, force=False)
    assert plan.done == [a] and plan.failed_before == [d] and plan.pending == [b, c, e]
    assert all(work.prior is None for work in plan.work.values())
    retry = make_plan(inputs, out, rows, artifact_sha256=SHA, fmt="official", y_up=False, force=False,
                      retry_failed=True)  # fmt: skip
    assert retry.pending == [b, c, d, e]
    with pytest.raises(UserInputError, match="a.ply: already exists"):  # another format: not done, never overwritten
        make_plan(inputs, out, rows, artifact_sha256=SHA, fmt="viewer", y_up=False, force=False)
    forced = make_plan(inputs, out, rows, artifact_sha256=SHA, fmt="official", y_up=False, force=True)
    assert forced.pending == inputs.files and forced.work[a.path].prior == identity(out / a.output) is not None


def test_a_second_batch_into_one_folder_is_refused(tmp_path: Path) -> None:
    with lock_folder(tmp_path):
        with pytest.raises(UserInputError, match="another sharp-export batch is writing into this folder"):
            with lock_folder(tmp_path):
                pass
    with lock_folder(tmp_path):  # released
        pass


# ---- the manifest and its journals ------------------------------------------------------------------------------


def test_journals_fold_into_the_manifest_and_survive_a_torn_line(tmp_path: Path) -> None:
    first, second = Journal(tmp_path), Journal(tmp_path)
    assert first.path.name.startswith(f"journal-{os.getpid()}-") and first.path != second.path
    row = new_row(input="/in/a.jpg", status="ok", output="a.ply", output_sha256="s", written=True, finished=1.0)
    first.append(row)
    second.append(new_row(input="/in/b.jpg", status="failed", error="bad", exit_code=1, finished=2.0))
    # A retry that found a.ply already published (its writer was killed after writing it): the writer's row stays.
    second.append({**row, "written": False, "worker": "retry", "finished": 3.0})
    with open(second.path, "a") as handle:
        handle.write(json.dumps(new_row(input="/in/c.jpg"))[:40])  # the process died mid-line
    first.close()
    second.close()
    rows = fold_journals(tmp_path)
    assert journal_paths(tmp_path) == [] and not (tmp_path / ".sharp-batch").exists()
    assert read_manifest(tmp_path) == rows and set(rows) == {"/in/a.jpg", "/in/b.jpg"}
    assert rows["/in/a.jpg"]["written"] and rows["/in/b.jpg"]["error"] == "bad"
    later = Journal(tmp_path)
    later.append(new_row(input="/in/a.jpg", status="ok", output="a.ply", output_sha256="t", written=True, finished=4))
    later.close()
    assert fold_journals(tmp_path)["/in/a.jpg"]["output_sha256"] == "t"  # a newer write wins
    (tmp_path / MANIFEST_NAME).write_bytes(b"PAR1 broken")
    with pytest.raises(UserInputError, match="the batch manifest cannot be read"):
        read_manifest(tmp_path)


def test_an_intent_without_its_row_claims_its_published_file_only(tmp_path: Path) -> None:
    (tmp_path / "a.ply").write_bytes(b"a complete scene")  # published, then the process died before the row
    journal = Journal(tmp_path)
    intent = dict(status="writing", artifact_sha256=SHA, format="official", y_up=False, worker="h:1")
    journal.append(new_row(input="/in/a.jpg", output="a.ply", finished=1.0, **intent))
    journal.append(new_row(input="/in/b.jpg", output="b.ply", finished=2.0, **intent))  # died before publishing
    journal.append(new_row(input="/in/c.jpg", output="c.ply", finished=3.0, **intent))
    journal.append(new_row(input="/in/c.jpg", status="failed", error="x", exit_code=1, finished=4.0))
    journal.close()
    rows = fold_journals(tmp_path)
    assert set(rows) == {"/in/a.jpg", "/in/c.jpg"} and rows["/in/c.jpg"]["status"] == "failed"
    a = rows["/in/a.jpg"]
    assert (a["status"], a["written"], a["output_size"]) == ("ok", True, len(b"a complete scene"))
    assert a["output_sha256"] == hashlib.sha256(b"a complete scene").hexdigest()
