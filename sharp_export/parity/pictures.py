"""`parity --report-dir DIR`: parity.json, one PNG per image and pose, and a static index.html that shows them.

The PNGs show reference | artifact | amplified absolute difference with its colour bar (sharp_export.plots).
The page needs no server and no network: plain HTML and CSS, the table with failing rows first, the pictures
by relative path beside it. Renders are shrunk to at most ``MAX_PANEL_WIDTH`` px per panel (area mean for the
pictures, max for the difference, so that one bad pixel still shows).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharp_export.artifact import OutputKind, atomic_directory
from sharp_export.parity.compare import AttributeResult
from sharp_export.parity.report import ParityReport, to_json
from sharp_export.parity.views import ViewResult
from sharp_export.plots import difference_scale, write_view_comparison

MAX_PANEL_WIDTH = 480
INDEX = "index.html"
REPORT_JSON = "parity.json"
_STATUS_ORDER = {"FAIL": 0, "UNAVAILABLE": 1, "PASS": 2, "INFO": 3}


@dataclass
class ViewPicture:
    image: str  # image name (file stem)
    pose: str
    reference: np.ndarray  # [h, w, 3] float32 sRGB, shrunk
    candidate: np.ndarray  # [h, w, 3]
    difference: np.ndarray  # [h, w] float32, block max of the full-size per-pixel max |reference - candidate|
    max_difference: float  # over the full-size render

    @property
    def view(self) -> str:
        return f"{self.image}:{self.pose}"

    @property
    def file_name(self) -> str:
        return picture_file_name(self.view)


def picture_file_name(view: str) -> str:
    """The PNG of one view ("image:pose") in a report folder."""
    image, _, pose = view.rpartition(":")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{image}__{pose}") + ".png"


def report_folder_files(data: object) -> set[str] | None:
    """The files a report folder's parity.json accounts for (itself, index.html, one PNG per view it lists), or
    None when it is not a sharp-export parity report."""
    if not isinstance(data, dict) or not isinstance(data.get("schema_version"), int):
        return None
    views, attributes = data.get("views"), data.get("attributes")
    if not isinstance(views, list) or not isinstance(attributes, list) or not isinstance(data.get("meta"), dict):
        return None
    names = {v["view"] for v in views if isinstance(v, dict) and isinstance(v.get("view"), str)}
    return {REPORT_JSON, INDEX} | {picture_file_name(view) for view in names}


# What `parity --report-dir DIR --force` may replace: a folder this module wrote, nothing else.
REPORT_FOLDER = OutputKind("parity report folder", REPORT_JSON, report_folder_files)


def _shrink(image: np.ndarray, factor: int, reduce: str) -> np.ndarray:  # [H, W, ...] -> [H/f, W/f, ...]
    if factor == 1:
        return image
    pad = [(0, (-image.shape[0]) % factor), (0, (-image.shape[1]) % factor)] + [(0, 0)] * (image.ndim - 2)
    image = np.pad(image, pad, mode="edge")
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image.reshape(h, factor, w, factor, *image.shape[2:])
    return blocks.max(axis=(1, 3)) if reduce == "max" else blocks.mean(axis=(1, 3))


class PictureCollector:
    """The harness's ``on_views`` sink: keeps a shrunk copy of every (reference, candidate) render pair."""

    def __init__(self, max_width: int = MAX_PANEL_WIDTH):
        self.max_width = max_width
        self.pictures: list[ViewPicture] = []

    def __call__(self, image: str, pose: str, reference, candidate) -> None:  # RenderOutputs, color [H, W, 3]
        ref = np.asarray(reference.color, dtype=np.float32)
        cand = np.asarray(candidate.color, dtype=np.float32)
        difference = np.abs(ref - cand).max(axis=-1)  # NaN stays NaN: shown as the top of the scale below
        difference = np.where(np.isfinite(difference), difference, np.inf)
        factor = max(1, math.ceil(ref.shape[1] / self.max_width))
        self.pictures.append(
            ViewPicture(
                image, pose, _shrink(np.nan_to_num(ref), factor, "mean"), _shrink(np.nan_to_num(cand), factor, "mean"),
                _shrink(difference, factor, "max"), float(difference.max()),
            )
        )  # fmt: skip


def _rows(report: ParityReport) -> list[AttributeResult | ViewResult]:
    """Every gated or informative line, failing first (stable within a status)."""
    items = list(report.attributes) + list(report.views)
    return sorted(items, key=lambda r: _STATUS_ORDER.get(r.status, 9))


def _number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def _row_cells(r: AttributeResult | ViewResult) -> list[str]:
    if isinstance(r, AttributeResult):
        value = f"max {_number(r.max)}, p99 {_number(r.p99)}"
        tolerance = "-" if r.tolerance is None else f"{_number(r.tolerance)} ({r.statistic})"
        return [r.attribute, r.metric, value, tolerance, r.status, _number(r.margin)]
    tolerance = "-" if r.tolerance is None else f"{'>=' if r.bound == 'min' else '<='} {_number(r.tolerance)}"
    return [f"view {r.view}", r.metric, _number(r.value), tolerance, r.status, _number(r.margin)]


def _table(rows: list[AttributeResult | ViewResult]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("name", "metric", "value", "tolerance", "status", "margin"))
    body = []
    for r in rows:
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _row_cells(r))
        note = f' title="{html.escape(r.message)}"' if r.message else ""
        body.append(f'<tr class="{r.status.lower()}"{note}>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
tr.fail td { background: #fdd; font-weight: bold; } tr.unavailable td { background: #fff3cd; }
tr.info td { color: #777; }
.verdict-fail { color: #b00; } .verdict-pass { color: #070; }
section { margin-bottom: 2em; } img { max-width: 100%; border: 1px solid #ddd; }
"""


def render_index(report: ParityReport, pictures: list[ViewPicture]) -> str:
    """The static page: verdict, facts, the whole table (failing first), then each view's picture and rows."""
    verdict = "PASS" if report.passed else "FAIL"
    meta = report.meta
    what = " ".join(str(meta[k]) for k in ("target", "precision") if meta.get(k))
    facts = "".join(
        f"<li>{html.escape(key)}: {html.escape(str(meta[key]))}</li>"
        for key in ("artifact", "reference", "golden", "tolerance_profile")
        if meta.get(key)
    )
    by_view: dict[str, list[ViewResult]] = {}
    for v in report.views:
        by_view.setdefault(v.view, []).append(v)

    def view_rank(picture: ViewPicture) -> int:
        return min((_STATUS_ORDER.get(v.status, 9) for v in by_view.get(picture.view, [])), default=9)

    sections = []
    for picture in sorted(pictures, key=view_rank):
        rows = by_view.get(picture.view, [])
        status = "FAIL" if any(not v.passed for v in rows) else "PASS"
        sections.append(
            f'<section id="{html.escape(picture.file_name)}"><h3 class="verdict-{status.lower()}">'
            f"{html.escape(picture.view)}: {status}, largest difference {_number(picture.max_difference)}</h3>"
            f'<img src="{html.escape(picture.file_name)}" alt="reference, artifact and difference for '
            f'{html.escape(picture.view)}">{_table(_rows(ParityReport(views=rows)))}</section>'
        )
    failures = ", ".join(report.failure_names) or "none"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>parity {verdict}: {html.escape(what)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>sharp-export parity: <span class="verdict-{verdict.lower()}">{verdict}</span> '
        f"{html.escape(what)}</h1><ul>{facts}<li>failures: {html.escape(failures)}</li></ul>"
        f"<h2>Checks, failing first</h2>{_table(_rows(report))}"
        f"<h2>Views: reference | artifact | amplified difference</h2>{''.join(sections)}"
        "</body></html>\n"
    )


def write_report_folder(report: ParityReport, pictures: list[ViewPicture], folder: Path, force: bool) -> Path:
    """parity.json, the PNGs and index.html, built in a temporary folder and moved into place (atomic)."""
    with atomic_directory(folder, force=force, kind=REPORT_FOLDER) as work:
        (work / REPORT_JSON).write_text(json.dumps(to_json(report), indent=2) + "\n")
        for picture in pictures:
            title = f"{picture.view}  (colour bar: 0 .. {difference_scale(picture.difference):.3g})"
            write_view_comparison(
                picture.reference, picture.candidate, picture.difference, work / picture.file_name, title
            )
        (work / INDEX).write_text(render_index(report, pictures))
    return folder
