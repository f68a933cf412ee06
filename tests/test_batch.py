"""`sharp-export batch` on a local Ray (loopback only), the tiny ONNX artifact of the session (seed 0).

Every test that starts Ray watches the processes it spawns and asserts, after the command returned, that each of
them has exited (by pid and start time: a worker that outlived its raylet is reparented and would escape a
look at our children only). The non-Ray parts (listing, plan, manifest) are tested in tests/test_batch_plan.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from catalogue import TEMP_MARKERS, png_header_only
from click.testing import CliRunner
from PIL import Image

from sharp_export.cli import cli

pytest.importorskip("ray")

GOOD = 17
BAD = {  # name -> a fragment of its one-line error
    "zz_junk.jpg": "not an image PIL can read",
    "zz_cut.png": "cannot decode image data",
    "zz_bomb.png": "above the --max-pixels limit",
}


def photo(path: Path, index: int) -> Path:
    """A smooth 64x48 (or 48x64) photo, different for each index; every third with an EXIF focal length."""
    rng = np.random.default_rng(index)
    height, width = (48, 64) if index % 2 == 0 else (64, 48)
    v, u = np.mgrid[0:height, 0:width]
    a, b, c = rng.integers(1, 6, 3)
    pixels = np.stack([u * a + index, v * b, (u + v) * c], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    if index % 3 == 0:
        exif.get_ifd(0x8769)[0x920A] = 20.0 + index  # FocalLength (mm)
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def make_inputs(folder: Path, good: int = GOOD, bad: bool = True) -> list[Path]:
    folder.mkdir(parents=True)
    photos = [photo(folder / f"a{i:02d}.png", i) for i in range(good)]
    if bad:
        (folder / "zz_junk.jpg").write_bytes(b"this is not a JPEG at all")
        whole = photo(folder / "zz_cut.png", 99).read_bytes()
        (folder / "zz_cut.png").write_bytes(whole[: len(whole) // 2])
        (folder / "zz_bomb.png").write_bytes(png_header_only(20000, 20000))
    return photos


class ProcessWatch:
    """Samples this process's descendants while a command runs; ``left()`` lists those still running after it."""

    def __init__(self) -> None:
        self.before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            for process in psutil.Process().children(recursive=True):
                if process.pid not in self.before and process.pid not in self.seen:
                    try:
                        self.seen[process.pid] = process.create_time()
                    except psutil.Error:
                        pass

    def left(self, wait_s: float = 20.0) -> list[int]:
        self.stop.set()
        self.thread.join()
        deadline = time.monotonic() + wait_s
        while True:
            alive = []
            for pid, started in self.seen.items():
                try:
                    process = psutil.Process(pid)
                    if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                        alive.append(pid)
                except psutil.Error:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


@pytest.fixture
def watch() -> Iterator[ProcessWatch]:
    """Ray is shut down by every test, and every process it started is gone afterwards."""
    import ray

    watcher = ProcessWatch()
    yield watcher
    if ray.is_initialized():
        ray.shutdown()
        pytest.fail("the command left Ray running")
    left = watcher.left()
    assert watcher.seen, "no Ray processes were seen: the watch is broken"
    assert left == [], f"processes left running: {[(pid, psutil.Process(pid).name()) for pid in left]}"


def batch(*args: object) -> object:
    return CliRunner().invoke(cli, ["batch", *[str(a) for a in args], "--no-progress"], catch_exceptions=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_rows(out: Path) -> dict[str, dict]:
    return {Path(row["input"]).name: row for row in pq.read_table(out / "manifest.parquet").to_pylist()}


def no_temporaries(out: Path) -> None:
    names = [p.name for p in out.rglob("*") if any(marker in p.name for marker in TEMP_MARKERS)]
    assert names == [] and not (out / ".sharp-batch").exists(), names


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, session_artifact: Path) -> dict:
    """17 photos and 3 bad files through 2 actors (batches of 2), run once for the tests below."""
    import ray

    root = tmp_path_factory.mktemp("batch")
    photos = make_inputs(root / "in")
    watcher = ProcessWatch()
    start = time.perf_counter()
    result = batch(session_artifact, root / "in", "-o", root / "out", "--actors", "2", "--batch-size", "2")
    seconds = time.perf_counter() - start
    assert not ray.is_initialized()
    assert watcher.left() == [] and watcher.seen
    return {"root": root, "photos": photos, "result": result, "seconds": seconds, "out": root / "out"}


def test_twenty_images_two_actors_write_what_run_writes(first_run: dict, session_artifact: Path, monkeypatch) -> None:
    import torch

    result, out = first_run["result"], first_run["out"]
    assert result.exit_code == 1, result.output  # the highest exit code of the failures (bad inputs: 1)
    assert "error: 3 of 20 inputs failed" in result.stderr, result.stderr
    for name, fragment in BAD.items():
        assert any("FAILED:" in line and name in line and fragment in line for line in result.stderr.splitlines())
    assert re.search(r"written\s+17\n", result.stdout) and re.search(r"failures\s+3\n", result.stdout)
    rows = manifest_rows(out)
    assert len(rows) == 20 and {r["status"] for r in rows.values()} == {"ok", "failed"}
    artifact_sha = sha256(session_artifact / "manifest.json")
    for path in first_run["photos"]:
        row = rows[path.name]
        target = out / f"{path.stem}.ply"
        assert row["status"] == "ok" and row["output"] == target.name and row["written"], row
        assert row["input_sha256"] == sha256(path) and row["input_size"] == path.stat().st_size
        assert row["output_sha256"] == sha256(target) and row["output_size"] == target.stat().st_size
        assert row["artifact_sha256"] == artifact_sha and row["format"] == "official" and row["exit_code"] == 0
        assert all(row[f"{stage}_s"] > 0 for stage in ("decode", "model", "postprocess", "write")), row
    for name, fragment in BAD.items():
        row = rows[name]
        assert row["status"] == "failed" and fragment in row["error"] and row["output"] is None, row
        assert row["exit_code"] == 1 and "\n" not in row["error"] and row["input_sha256"] is not None
    assert len({row["worker"] for row in rows.values()}) == 2  # both actors worked
    expected = [f"a{i:02d}.ply" for i in range(GOOD)] + ["manifest.parquet"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    no_temporaries(out)

    # `run` in this process, at the actors' thread count (1): the same bytes, file for file.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["run", session_artifact, *first_run["photos"], "-o", first_run["root"] / "run"]
        ran = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert ran.exit_code == 0, ran.output
    for path in first_run["photos"]:
        assert (out / f"{path.stem}.ply").read_bytes() == (first_run["root"] / "run" / f"{path.stem}.ply").read_bytes()


def test_rerun_recomputes_nothing(first_run: dict, session_artifact: Path) -> None:
    out = first_run["out"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    start = time.perf_counter()
    watcher = ProcessWatch()
    result = batch(session_artifact, first_run["root"] / "in", "-o", out, "--actors", "2")
    seconds = time.perf_counter() - start
    assert watcher.left() == [] and not watcher.seen  # Ray was not even started
    assert result.exit_code == 0, result.output
    assert "17 already done, 3 failed before" in result.stdout and "nothing to do" in result.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert seconds < first_run["seconds"] / 2, (seconds, first_run["seconds"])


def test_force_redoes_and_replaces_atomically(first_run: dict, session_artifact: Path, watch: ProcessWatch) -> None:
    out = first_run["out"]
    rows_before = manifest_rows(out)
    old = {name: (out / name).stat().st_ino for name in ("a00.ply", "a01.ply", "a02.ply")}
    data = {name: (out / name).read_bytes() for name in old}
    result = batch(session_artifact, first_run["root"] / "in", "-o", out, "--force", "--limit", "2")
    assert result.exit_code == 0, result.output
    rows = manifest_rows(out)
    assert len(rows) == 20
    for name in ("a00", "a01"):  # the first two (sorted): redone, replaced by a new file with the same bytes
        assert (out / f"{name}.ply").stat().st_ino != old[f"{name}.ply"]
        assert (out / f"{name}.ply").read_bytes() == data[f"{name}.ply"]
        assert rows[f"{name}.png"]["finished"] > rows_before[f"{name}.png"]["finished"]
    assert (out / "a02.ply").stat().st_ino == old["a02.ply"]  # beyond --limit: untouched
    assert {k: v for k, v in rows.items() if k not in ("a00.png", "a01.png")} == {
        k: v for k, v in rows_before.items() if k not in ("a00.png", "a01.png")
    }
    no_temporaries(out)


def test_an_actor_killed_mid_run_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path, session_artifact: Path, watch: ProcessWatch
) -> None:
    photos = make_inputs(tmp_path / "in", good=12, bad=False)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_the_first_actor_that_finished_an_image() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for journal in (out / ".sharp-batch").glob("journal-*.jsonl"):
                pid = int(journal.name.split("-")[1])
                if pid != os.getpid() and '"status": "ok"' in journal.read_text():
                    os.kill(pid, signal.SIGKILL)  # mid-batch: two more images of its batch of three to go
                    killed.append(pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_first_actor_that_finished_an_image, daemon=True)
    killer.start()
    result = batch(session_artifact, tmp_path / "in", "-o", out, "--actors", "2", "--batch-size", "3")
    killer.join()
    assert killed, "no actor was killed"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert result.exit_code == 0, result.output
    processes = int(re.search(r"actors\s+2 \((\d+) processes", result.stdout).group(1))
    assert processes >= 3, result.stdout  # Ray started a replacement
    rows = manifest_rows(out)
    assert len(rows) == 12 and all(row["status"] == "ok" for row in rows.values()), rows
    for path in photos:
        target = out / f"{path.stem}.ply"
        assert rows[path.name]["output_sha256"] == sha256(target)
    host = socket.gethostname()
    by_killed = [name for name, row in rows.items() if row["worker"] == f"{host}:{killed[0]}"]
    assert 1 <= len(by_killed) < 12  # its first image stands (never written again), the rest were redone
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{p.stem}.ply" for p in photos] + ["manifest.parquet"])
    no_temporaries(out)
