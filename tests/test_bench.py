"""`sharp-export bench` on the tiny preset: real timings of the reference and a tiny ONNX artifact, on CPU.

One ONNX artifact is exported per module (about 20 s on 2 cores); every bench run is capped to a few
passes so the file stays under a minute. The numbers are real measurements, so the tests check their
shape and internal consistency (ordering, ratios, sums), not their size.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sharp_export import bench
from sharp_export.cli import cli
from sharp_export.env import ISA_FLAGS

FAST = ["--min-time", "0", "--max-runs", "2", "--warmup", "0"]  # a few seconds per candidate


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory):
    """The coffee sample shrunk to 150 x 100: the model input stays 384 x 384, but renders get 16x cheaper."""
    from PIL import Image

    from sharp_export.samples import sample_image_path

    path = tmp_path_factory.mktemp("photo") / "coffee_small.png"
    Image.open(sample_image_path("coffee")).convert("RGB").resize((150, 100), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny_onnx"
    result = invoke("onnx", "--preset", "tiny", "--seed", "0", "-o", out, "--no-parity")
    assert result.exit_code == 0, result.output
    return out


def cpu_flags() -> set[str] | None:
    """The first processor's flags in /proc/cpuinfo, read here rather than through sharp_export.env; None off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", text, flags=re.MULTILINE)
    return set(match.group(1).split()) if match else None


def check_candidate(row: dict, render: bool) -> None:
    """Real numbers: positive stage latencies, ordered percentiles, stages adding up to the pass."""
    assert row["n_runs"] >= 1
    stages = [s for s in bench.STAGES if s != "render" or render]
    assert set(row["stages_s"]) == set(stages) | {"total"}
    for stage in stages + ["total"]:
        stats = row["stages_s"][stage]
        assert stats["n"] == row["n_runs"]
        assert stats["min"] > 0, (row["label"], stage)
        assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    for index in range(row["n_runs"]):
        parts = sum(row["runs_s"][stage][index] for stage in stages)
        total = row["runs_s"]["total"][index]
        # Only two device syncs (no-ops on CPU) and a few assignments lie outside the stages.
        assert parts <= total and total - parts < 0.02 + 0.02 * total, (row["label"], parts, total)
    assert row["memory"]["rss_run_peak_gb"] >= 0 and row["memory"]["rss_open_gb"] >= 0


def test_reference_alone_reports_real_numbers_and_flags_instability(tmp_path):
    report_path = tmp_path / "ref.json"
    # --max-cv far below any real spread: the run must end at the cap and say UNSTABLE, not hide it.
    result = invoke(
        "bench", "reference", "--preset", "tiny", "--seed", "0", "--max-cv", "1e-9", *FAST, "--json", report_path
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["schema"] == bench.SCHEMA
    (row,) = report["candidates"]
    check_candidate(row, render=False)
    assert row["n_runs"] == 2 and report["phases"]["pipeline"]["stopped_by"] == "max-runs"
    assert row["ratio_model_p50"] == 1.0 and row["ratio_total_p50"] == 1.0
    assert row["stable"] is False and "max-cv" in row["stability"]
    assert "UNSTABLE" in result.stdout
    assert row["throughput"]["1"]["images_per_s"] > 0
    assert row["target"] == "torch" and row["weights"]["seed"] == 0
    cpu = report["machine"]["cpu"]
    assert cpu["torch_threads"] == torch.get_num_threads()
    flags = cpu_flags()
    if flags is None:
        assert cpu["isa"] is None
    else:
        assert cpu["isa"] == {flag: flag in flags for flag in ISA_FLAGS}
        # torch's own CPU dispatch probe, independent of /proc/cpuinfo, must agree with the flags reported.
        capability = torch.backends.cpu.get_cpu_capability()
        assert cpu["isa"]["avx2"] or capability not in ("AVX2", "AVX512"), (capability, cpu["isa"])
        assert cpu["isa"]["avx512f"] or capability != "AVX512", (capability, cpu["isa"])
    assert "--preset tiny --seed 0" in report["command"]
    assert report["machine"]["packages"]["torch"]


def test_reference_and_onnx_side_by_side(onnx_artifact, small_photo, tmp_path):
    report_path, markdown, plot = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    args = [
        "bench",
        "reference",
        onnx_artifact,
        *FAST,
        "--images",
        small_photo,
        "--batch",
        "1,2",
        "--json",
        report_path,
    ]
    args += ["--markdown", markdown] + (["--plot", plot] if bench.plot_available() else [])
    # No --preset / --seed: both come from the artifact's manifest (tiny, seed 0).
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    reference, artifact = report["candidates"]
    for row in (reference, artifact):
        check_candidate(row, render=False)
    assert reference["preset"] == artifact["preset"] == "tiny" and reference["weights"]["seed"] == 0
    assert reference["ratio_model_p50"] == 1.0
    expected = artifact["stages_s"]["model"]["p50"] / reference["stages_s"]["model"]["p50"]
    assert math.isclose(artifact["ratio_model_p50"], expected)
    # The artifact is fixed batch 1: batch 2 is skipped and says why; the reference takes any batch.
    assert artifact["throughput"]["2"] == {"skipped": "fixed batch 1"}
    assert reference["throughput"]["2"]["images_per_s"] > 0 and reference["throughput"]["2"]["latency_s"]["n"] >= 1
    assert "skip: fixed batch 1" in result.stdout
    assert artifact["parity"] == "skipped" and artifact["target"] == "onnx"
    assert len(artifact["manifest_sha256"]) == 64 and reference["manifest_sha256"] is None
    assert report["fastest_passing_artifact"] is None  # exported with --no-parity, no --check
    text = markdown.read_text()
    assert "| reference |" in text and "| tiny_onnx |" in text and "skip: fixed batch 1" in text
    if bench.plot_available():
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_and_render_without_a_reference_candidate(onnx_artifact, small_photo, tmp_path):
    # --check builds the reference from the artifact's own weights (seed 0) even when it is not timed.
    report_path = tmp_path / "c.json"
    result = invoke(
        "bench", onnx_artifact, "--warmup", "0", "--max-runs", "1", "--min-time", "0", "--images", small_photo,
        "--render", "--check", "--poses", "1", "--json", report_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    (artifact,) = report["candidates"]
    check_candidate(artifact, render=True)
    assert artifact["stable"] is False and "1 run" in artifact["stability"]  # one run cannot show its spread
    assert artifact["ratio_model_p50"] == 1.0
    assert artifact["check"]["status"] == "passed", artifact["check"]
    assert artifact["check"]["poses"] == ["first"] and artifact["check"]["images"] == ["coffee_small"]
    assert report["fastest_passing_artifact"] == str(onnx_artifact)
    assert "fastest passing artifact: tiny_onnx" in result.stdout
    assert "skipped / check passed" in result.stdout


def test_bad_batch_list_is_one_line():
    result = invoke("bench", "reference", "--batch", "0,x")
    assert_one_line_error(result, 2, "--batch", "batch size 0")
    result = invoke("bench", "reference", "--batch", "1,x")
    assert_one_line_error(result, 2, "'x'")


def test_out_of_range_flag_is_one_line():
    assert_one_line_error(invoke("bench", "reference", "--max-cv", "0"), 2, "--max-cv")
    assert_one_line_error(invoke("bench", "reference", "--warmup", "-1"), 2, "--warmup")


def test_missing_artifact_is_one_line_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_artifact"
    result = invoke("bench", "reference", missing, "--preset", "tiny", "--seed", "0")
    line = assert_one_line_error(result, 1, str(missing))
    assert "does not exist" in line


def test_mixed_presets_are_refused_before_building(onnx_artifact):
    # --preset sharp with a tiny artifact: refused before the full-size model would be built.
    start = time.perf_counter()
    result = invoke("bench", "reference", onnx_artifact, "--preset", "sharp", "--seed", "0")
    assert_one_line_error(result, 1, "different presets")
    assert time.perf_counter() - start < 10


def test_missing_matplotlib_is_one_line_before_measuring(monkeypatch, tmp_path):
    real = importlib.util.find_spec  # matplotlib made unfindable, whichever bench module asks for it

    def find_spec(name, *args):
        return None if name == "matplotlib" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = invoke("bench", "reference", "--preset", "tiny", "--seed", "0", "--plot", tmp_path / "p.png")
    assert_one_line_error(result, 2, "matplotlib", "pip install 'sharp-export[bench]'")


def test_parse_batches_and_stats():
    assert bench.parse_batches("4, 1,2,2") == (1, 2, 4)
    for bad in ("", "1,,2", "0", "-3", "two"):
        with pytest.raises(ValueError):
            bench.parse_batches(bad)
    stats = bench.Stats.of([0.3, 0.1, 0.2, 0.4])
    assert stats.n == 4 and math.isclose(stats.mean, 0.25) and stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    single = bench.Stats.of([0.5]).to_dict()
    assert single["std"] is None and single["cv"] is None and single["p99"] == 0.5


@pytest.mark.parametrize("method", ["vmhwm-reset", "sampled"])
def test_rss_peak_sees_a_transient_allocation(method):
    if method == "vmhwm-reset" and bench.memory_method() != method:
        pytest.skip("peak-RSS reset (/proc/self/clear_refs) not available here")
    with bench.track_rss_peak(method) as peak:
        block = np.ones(200_000_000 // 8)  # 200 MB, touched
        time.sleep(0.05)
        del block
    assert peak.delta > 150e6, peak
