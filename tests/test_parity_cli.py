"""`sharp-export parity` end to end on a tiny ONNX artifact: pass, damaged weights (exit 3), golden bundles."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sharp_export.cli import cli
from sharp_export.contract import ExportRequest
from sharp_export.export import run_export


@pytest.fixture(scope="module")
def artifact(golden_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "tiny_onnx"
    request = ExportRequest(
        target="onnx",
        output=out,
        preset="tiny",
        checkpoint=golden_dir / "weights_perturbed.safetensors",
        options={"external_data": "always"},
    )
    return run_export(request)


@pytest.fixture(scope="module")
def image(golden_dir):
    return str(golden_dir / "input_640x480.png")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_artifact_passes_and_report_is_written(artifact, image, tmp_path):
    report = tmp_path / "parity.json"
    result = invoke("parity", artifact, "--images", image, "--poses", "1", "--report", report)
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["passed"] and document["failures"] == []
    psnr = [v for v in document["views"] if v["metric"] == "psnr_db"]
    assert len(psnr) == 1 and psnr[0]["value"] > 60  # measured 108 dB (fp32 ORT vs torch)
    gated = {a["metric"] for a in document["attributes"] if a["status"] != "INFO"}
    assert {"means_rel_depth", "scales_log", "quat_angle_deg", "colors_abs", "opacities_abs"} <= gated


def damaged_copy(artifact, tmp_path):
    """A copy whose first initializer (in model.onnx.data) is scaled by 1.5: same size, wrong numbers."""
    copy = tmp_path / "damaged"
    shutil.copytree(artifact, copy)
    model = onnx.load(str(copy / "model.onnx"), load_external_data=False)
    # Pick the patch-embedding conv weight of the patch ViT: every Gaussian depends on it.
    init = next(i for i in model.graph.initializer if "patch_encoder.patch_embed.proj.weight" in i.name)
    entries = {e.key: e.value for e in init.external_data}
    offset, length = int(entries["offset"]), int(entries["length"])
    with open(copy / entries["location"], "r+b") as handle:
        handle.seek(offset)
        values = np.frombuffer(handle.read(length), dtype=np.float32) * 1.5
        handle.seek(offset)
        handle.write(values.astype(np.float32).tobytes())
    return copy


def test_damaged_weights_fail_with_exit_code_3(artifact, image, tmp_path):
    damaged = damaged_copy(artifact, tmp_path)
    result = invoke("parity", damaged, "--images", image, "--poses", "1", "--report", tmp_path / "p.json")
    assert result.exit_code == 3, result.output
    assert "parity failed" in result.output and "mean_vectors.means_rel_depth" in result.output
    assert not json.loads((tmp_path / "p.json").read_text())["passed"]


def test_golden_bundle_checks_without_weights(artifact, image, golden_dir, tmp_path):
    bundle = tmp_path / "golden"
    weights = golden_dir / "weights_perturbed.safetensors"
    made = invoke(
        "parity", "--preset", "tiny", "-c", weights, "--images", image, "--poses", "2", "--write-golden", bundle
    )
    assert made.exit_code == 0, made.output
    assert (bundle / "golden.json").is_file() and (bundle / "golden.npz").is_file()

    good = invoke("parity", artifact, "--golden", bundle, "--report", tmp_path / "g.json")
    assert good.exit_code == 0, good.output
    views = {v["view"] for v in json.loads((tmp_path / "g.json").read_text())["views"]}
    assert views == {"input_640x480:first", "input_640x480:quarter"}

    bad = invoke("parity", damaged_copy(artifact, tmp_path), "--golden", bundle, "--report", tmp_path / "b.json")
    assert bad.exit_code == 3, bad.output


def test_usage_errors_are_one_line(tmp_path):
    result = invoke("parity", tmp_path / "missing")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "does not exist" in result.output
    result = invoke("parity", "--write-golden", tmp_path / "g", "--golden", tmp_path)
    assert result.exit_code == 1 and "--write-golden takes no ARTIFACT" in result.output


def test_default_report_goes_into_the_artifact_and_each_run_replaces_it(artifact, image, tmp_path, monkeypatch):
    from sharp_export.artifact import verify_files
    from sharp_export.commands.parity import DEFAULT_REPORT

    monkeypatch.chdir(tmp_path)  # a CI job's working folder: nothing may land here
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    for _ in range(2):  # the same artifact twice, as CI reruns do: no "already exists"
        result = invoke("parity", copy, "--images", image, "--poses", "0")
        assert result.exit_code == 0, result.output
        assert f"report: {copy / DEFAULT_REPORT} (PASS)" in result.output
    assert json.loads((copy / DEFAULT_REPORT).read_text())["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    verify_files(copy)  # the report is not one of the artifact's files: run --verify still passes


@pytest.fixture(scope="module")
def failing_report(artifact, image, tmp_path_factory):
    """`parity --report-dir` on the damaged artifact, 2 poses; a PSNR floor of 120 dB fails the views too (they
    differ by at most 0.014, far above 120 dB's 1e-6), so the page has failing views as well as failing attributes."""
    pytest.importorskip("matplotlib", reason="parity --report-dir draws with matplotlib (the bench extra)")
    tmp_path = tmp_path_factory.mktemp("report")
    tolerances = tmp_path / "tol.json"
    tolerances.write_text(json.dumps({"psnr_min_db": 120.0}))
    folder = tmp_path / "report"
    damaged = damaged_copy(artifact, tmp_path)
    args = ("parity", damaged, "--images", image, "--poses", "2", "--tolerances", tolerances, "--report-dir", folder)
    return invoke(*args), folder, args


def test_report_dir_has_pictures_and_a_page_with_failures_first(failing_report):
    from PIL import Image

    result, folder, args = failing_report
    assert result.exit_code == 3, result.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["index.html", "input_640x480__first.png", "input_640x480__quarter.png", "parity.json"]
    document = json.loads((folder / "parity.json").read_text())
    assert not document["passed"] and "input_640x480:mean_vectors.means_rel_depth" in document["failures"]
    assert "view input_640x480:first.psnr_db" in document["failures"]
    for name in names[1:3]:
        with Image.open(folder / name) as picture:
            assert picture.format == "PNG" and picture.width > 2 * picture.height  # three panels side by side
    page = (folder / "index.html").read_text()
    assert "http" not in page  # nothing fetched from a network
    rows = re.findall(r'<tr class="(\w+)"', page.split("<h2>Views")[0])
    assert rows[0] == "fail" and rows.index("pass") > max(i for i, r in enumerate(rows) if r == "fail")
    again = invoke(*args)
    assert again.exit_code == 1 and "already exists" in again.output  # --force replaces it


def test_parity_page_in_chromium(failing_report):
    from chromium_page import browser_page, png_pixels, require_chromium, save_screenshot

    require_chromium()
    result, folder, _ = failing_report
    assert result.exit_code == 3, result.output
    with browser_page(1100, 900) as page:
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto((folder / "index.html").as_uri())
        page.wait_for_load_state("load")
        loaded = page.evaluate("() => Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        first_row = page.evaluate("() => document.querySelector('table tbody tr').innerText")
        heading = page.evaluate("() => document.querySelector('h3').innerText")
        shot = png_pixels(page.screenshot(full_page=True))
    assert loaded == [True, True]
    assert "FAIL" in first_row and "FAIL" in heading
    assert all(url.startswith("file://") for url in requests), requests  # no server, no network
    assert shot.std() > 20  # the page rendered (text, table colours, pictures)
    save_screenshot(shot, "parity-report.png")
