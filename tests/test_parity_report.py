"""Parity report: terminal table, strict JSON, and the ParityError gate (exit code 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharp_export.errors import ParityError
from sharp_export.parity import ParityReport, compare_gaussians, compare_views, format_table, raise_if_failed, to_json
from sharp_export.parity.compare import FIELDS
from sharp_export.registry import load_tolerances


@pytest.fixture(scope="module")
def raw(golden_dir) -> dict[str, np.ndarray]:
    data = np.load(golden_dir / "out_square_perturbed.npz")
    return {name: data[name] for name in FIELDS}


@pytest.fixture(scope="module")
def tol():
    return load_tolerances("onnx", "fp32")


def _image() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64] / 64.0
    return np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x * y)], axis=-1)


def _failing_report(raw, tol) -> ParityReport:
    cand = {k: v.astype(np.float64) for k, v in raw.items()}
    cand["opacities"][0, 9] += 2e-3  # 4x the 5e-4 tolerance
    cand["colors"][0, 1, 0] = np.nan
    img = _image()
    views = compare_views([img, img], [img, np.roll(img, 2, axis=0)], tolerances=tol, view_names=["first", "middle"],
                          lpips_unavailable="LPIPS unavailable (put weights in X)")  # fmt: skip
    return ParityReport(compare_gaussians(raw, cand, tol), views, {"target": "onnx", "precision": "fp32"})


def test_passing_report(raw, tol):
    img = _image()
    report = ParityReport(compare_gaussians(raw, raw, tol), compare_views([img], [img], tolerances=tol,
                          lpips_unavailable="LPIPS unavailable (test)"))  # fmt: skip
    assert report.passed and report.failures == []
    assert len(report.unavailable) == 1  # LPIPS: reported, not silently passed
    raise_if_failed(report)  # no exception
    table = format_table(report)
    assert "FAIL" not in table
    assert "UNAVAILABLE" in table and "LPIPS unavailable (test)" in table


def test_table_has_one_line_per_result(raw, tol):
    report = _failing_report(raw, tol)
    lines = format_table(report).splitlines()
    n_results = len(report.attributes) + len(report.views)
    assert lines[0].split()[:2] == ["name", "metric"] and "min tol to pass" in lines[0]
    rows = lines[2 : 2 + n_results]
    assert [r.split()[1] for r in rows if not r.startswith("view")] == [a.metric for a in report.attributes]
    opac = next(r for r in rows if r.startswith("opacities"))
    # one Gaussian off by 2e-3 of 73,728: max 0.002, p99 0, mean 2.71e-08; tolerance 5e-4 on the max
    assert opac.split() == ["opacities", "opacities_abs", "0.002", "0", "2.71e-08", "0.0005", "(max)", "FAIL",
                            "-0.0015", "0.002"]  # fmt: skip
    colors = next(r for r in rows if r.startswith("colors"))
    assert colors.split()[-3:] == ["FAIL", "-", "inf"]  # NaN: no margin, no tolerance would pass
    notes = [line for line in lines if line.startswith("  !")]
    assert any("opacities opacities_abs: max 0.002 > tolerance 0.0005" in n for n in notes)
    assert any("colors colors_abs: 1 NaN/Inf values in the candidate" in n for n in notes)
    assert sum("LPIPS unavailable" in n for n in notes) == 1  # same reason for every view: shown once


def test_json_is_strict_and_complete(raw, tol):
    report = _failing_report(raw, tol)
    doc = to_json(report)
    text = json.dumps(doc, allow_nan=False)  # raises on NaN / Infinity
    back = json.loads(text)
    assert back["passed"] is False and back["schema_version"] == 1
    assert back["failures"] == ["colors.colors_abs", "opacities.opacities_abs", "view middle.psnr_db",
                                "view middle.ssim"]  # fmt: skip
    assert back["unavailable"] == ["lpips"]
    assert back["meta"] == {"target": "onnx", "precision": "fp32"}
    colors = next(a for a in back["attributes"] if a["metric"] == "colors_abs")
    assert colors["n_nonfinite"] == 1 and colors["margin"] is None and colors["min_tolerance_to_pass"] == "inf"
    psnr_first = next(v for v in back["views"] if v["view"] == "first" and v["metric"] == "psnr_db")
    assert psnr_first["value"] == 100.0 and "capped" in psnr_first and psnr_first["margin"] == 55.0
    assert "1.53e-5" in colors["tolerance_note"]
    # The same document from plain lists.
    assert to_json(report.attributes, report.views, report.meta) == doc


def test_raise_if_failed_names_attributes_and_margins(raw, tol):
    report = _failing_report(raw, tol)
    with pytest.raises(ParityError) as info:
        raise_if_failed(report)
    err = info.value
    assert err.exit_code == 3
    text = str(err)
    assert text.startswith("onnx fp32 parity failed: colors.colors_abs, opacities.opacities_abs (margin -0.0015)")
    assert "view middle.psnr_db (margin" in text and "view middle.ssim (margin" in text
    assert "1 NaN/Inf values in the candidate" in text
