"""Publishing outputs (reference/publish.py): exactly one of several writers wins, --force replaces atomically and
only what is provably ours, and temporaries of dead processes are recognised and removed (issue 32, classes 1, 6, 7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sharp_export.artifact import ARTIFACT, Manifest, atomic_directory, raw_io_spec, replace_problem, write_manifest
from sharp_export.errors import OutputError
from sharp_export.reference import publish
from sharp_export.reference.publish import (
    owner_is_gone,
    publish_folder,
    sweep_stale,
    temp_folder,
    temp_path,
    write_file,
)


def race(count: int, work) -> tuple[list[int], list[BaseException]]:
    """Run ``work(i)`` in ``count`` threads released together; (indices that returned, errors raised)."""
    barrier = threading.Barrier(count)
    won: list[int] = []
    lost: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            work(index)
            won.append(index)
        except BaseException as error:  # noqa: BLE001 -- collected and checked by the test
            lost.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, lost


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-links-file-system"])
def test_of_many_file_writers_exactly_one_wins(links, tmp_path, monkeypatch):
    if not links:  # FAT, exFAT, some shares: os.link fails, the name is reserved with O_EXCL instead
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(1, "no links")))
    final = tmp_path / "scene.ply"
    won, lost = race(8, lambda i: write_file(final, [f"writer {i}".encode()], replace=False))
    assert len(won) == 1 and len(lost) == 7
    assert all(isinstance(e, OutputError) and "already exists; nothing was overwritten" in str(e) for e in lost)
    assert final.read_bytes() == f"writer {won[0]}".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.ply"]  # every loser's temporary is gone


def test_of_many_folder_writers_exactly_one_wins(tmp_path):
    final = tmp_path / "art"

    def write(index: int) -> None:
        folder = temp_folder(final)
        (folder / "who").write_text(str(index))
        try:
            publish_folder(folder, final, replace=False)
        except BaseException:
            (folder / "who").unlink()
            folder.rmdir()
            raise

    won, lost = race(8, write)
    assert len(won) == 1 and all(isinstance(e, OutputError) for e in lost) and len(lost) == 7
    assert (final / "who").read_text() == str(won[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "move-aside"])
def test_force_replaces_a_folder_whole(exchange, tmp_path, monkeypatch):
    if not exchange:
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    final = tmp_path / "art"
    final.mkdir()
    (final / "old").write_text("old")
    new = temp_folder(final)
    (new / "new").write_text("new")
    publish_folder(new, final, replace=True)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # the old folder and the temporaries are gone


def test_force_replaces_a_file_and_without_force_it_is_kept(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    with pytest.raises(OutputError, match="already exists; nothing was overwritten"):
        write_file(final, [b"new"], replace=False)
    assert final.read_text() == "old"
    write_file(final, [b"new"], replace=True)
    assert final.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temporary_names_carry_the_owner(tmp_path):
    file, folder = temp_path(tmp_path / "photo.mp4", "partial"), temp_folder(tmp_path / "art")
    assert file.name.startswith(".photo.mp4.partial-") and file.suffix == ".mp4"  # ffmpeg picks the container by it
    assert folder.name.startswith("art.tmp-") and f"-{os.getpid()}-" in folder.name
    assert owner_is_gone(file.name) is False and owner_is_gone(folder.name) is False  # this process runs
    assert owner_is_gone("photo.ply.tmp-notes.txt") is None  # not a name of ours


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_only_temporaries_of_dead_processes_here(tmp_path):
    host = publish._host()
    mine = temp_path(tmp_path / "a.ply")
    mine.write_bytes(b"a live writer's")
    pid = dead_pid()
    dead_file = tmp_path / f".b.ply.tmp-{pid}-1700000000-abcd1234@{host}"
    dead_file.write_bytes(b"half a PLY")
    dead_folder = tmp_path / f"art.tmp-{pid}-1700000000-k3j9x2_a@{host}"
    (dead_folder / "sub").mkdir(parents=True)
    (dead_folder / "sub" / "model.onnx.data").write_bytes(b"gigabytes")
    reused = tmp_path / f".c.ply.tmp-{os.getpid()}-1000-abcd1234@{host}"  # our pid, but another start time
    reused.write_bytes(b"from the process that had our pid before")
    foreign = tmp_path / f"art.tmp-{pid}-1700000000-zz@another-host"
    foreign.mkdir()
    look_alikes = [tmp_path / "photo.ply.tmp-notes.txt", tmp_path / "art.tmp-backup", tmp_path / "x.tmp-1-2-3"]
    for path in look_alikes:
        path.write_text("the user's")
    found = sweep_stale(tmp_path)
    assert sorted(s.path.name for s in found if s.removed) == sorted([dead_file.name, dead_folder.name, reused.name])
    assert [s.path.name for s in found if not s.removed] == [foreign.name]
    assert "not removed from here" in next(s for s in found if not s.removed).note()
    assert mine.exists() and foreign.exists() and all(p.exists() for p in look_alikes)
    assert not dead_file.exists() and not dead_folder.exists() and not reused.exists()
    assert sweep_stale(tmp_path, base="nothing-here") == []


# ---- --force: what is provably ours --------------------------------------------------------------------------------


def manifest() -> Manifest:
    return Manifest(source={}, target="onnx", precision="fp32", options={}, io=raw_io_spec(64, 1),
                    preprocessing={"resolution": 64}, environment={})  # fmt: skip


def artifact(folder: Path) -> Path:
    with atomic_directory(folder) as work:
        (work / "model.onnx").write_bytes(b"model")
        (work / "export.log").write_text("log")
        (work / "parity.json").write_text("{}")
        write_manifest(work, manifest())
    return folder


def test_an_artifact_with_its_own_files_may_be_replaced(tmp_path):
    assert replace_problem(artifact(tmp_path / "art")) is None
    (tmp_path / "empty").mkdir()
    assert replace_problem(tmp_path / "empty") is None  # nothing to lose


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda art: (art / "notes.txt").write_text("mine"), "it holds notes.txt, which its manifest.json"),
        (lambda art: (art / "sub").mkdir() or (art / "sub" / "x.bin").write_bytes(b"x"), "it holds sub/x.bin"),
        (lambda art: (art / "manifest.json").write_text(json.dumps({"name": "My App"})), "not a sharp-export artifact"),
        (lambda art: (art / "manifest.json").write_text("{oops"), "not a sharp-export artifact manifest"),
        (lambda art: (art / "manifest.json").unlink(), "it has no manifest.json"),
        (lambda art: os.symlink("/etc", art / "etc"), "symbolic link, etc"),
        (
            lambda art: (art / "manifest.json").write_text(
                (art / "manifest.json").read_text().replace('"sharp-export"', '"other-tool"')
            ),
            "not a sharp-export artifact manifest",
        ),
    ],
    ids=["user-file", "user-file-in-subfolder", "web-app-manifest", "manifest-not-json", "no-manifest", "symlink",
         "other-tool"],
)  # fmt: skip
def test_anything_else_is_never_replaced(damage, reason, tmp_path):
    art = artifact(tmp_path / "art")
    damage(art)
    problem = replace_problem(art, ARTIFACT)
    assert problem is not None and reason in problem, problem
    before = sorted(p.name for p in art.rglob("*"))
    with pytest.raises(Exception, match="not provably a sharp-export artifact"):
        with atomic_directory(art, force=True):
            pass
    assert sorted(p.name for p in art.rglob("*")) == before


def test_a_folder_link_is_never_replaced(tmp_path):
    target = artifact(tmp_path / "art")
    os.symlink(target, tmp_path / "link")
    assert replace_problem(tmp_path / "link") == "it is a symbolic link"


def test_a_folder_changed_during_the_export_is_not_replaced(tmp_path):
    art = artifact(tmp_path / "art")
    with pytest.raises(Exception, match="it holds late.txt"):
        with atomic_directory(art, force=True) as work:
            (work / "manifest.json").write_text("{}")
            (art / "late.txt").write_text("put there while the export ran")
    assert (art / "late.txt").exists() and (art / "model.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_export_removes_temporaries_of_a_killed_export_of_that_path(tmp_path, capsys):
    stale = tmp_path / f"art.tmp-{dead_pid()}-1700000000-k3j9x2_a@{publish._host()}"
    (stale / "model.onnx.data").parent.mkdir()
    (stale / "model.onnx.data").write_bytes(b"gigabytes of a killed export")
    other = tmp_path / f"other.tmp-{dead_pid()}-1700000000-k3j9x2_a@{publish._host()}"  # another path's: left
    other.mkdir()
    artifact(tmp_path / "art")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", other.name]
    assert f"note: removed {stale}" in capsys.readouterr().err
