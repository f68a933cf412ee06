"""Parity reports: a plain-text table for the terminal, a JSON document for parity.json, and the gate.

Every gated line shows the observed statistic, the tolerance, PASS/FAIL, the margin and the minimum
tolerance that would have passed (Polygraphy's "minimum required tolerance"), so a failing export says
by how much it failed and a passing one says how much headroom it had.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sharp_export.errors import ParityError
from sharp_export.parity.compare import AttributeResult
from sharp_export.parity.metrics import PSNR_CAP_DB
from sharp_export.parity.views import ViewResult

SCHEMA_VERSION = 1


@dataclass
class ParityReport:
    """Everything one parity run found."""

    attributes: list[AttributeResult] = field(default_factory=list)
    views: list[ViewResult] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # target, precision, artifact, environment, ...

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.attributes) and all(v.passed for v in self.views)

    @property
    def failures(self) -> list[AttributeResult | ViewResult]:
        return [r for r in self.attributes if not r.passed] + [v for v in self.views if not v.passed]

    @property
    def failure_names(self) -> list[str]:
        """'attribute.metric' or 'view pose.metric' of each failure (parity.json's "failures")."""
        return [_failure_name(r) for r in self.failures]

    @property
    def unavailable(self) -> list[ViewResult]:
        return [v for v in self.views if v.status == "UNAVAILABLE"]


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def _attribute_row(r: AttributeResult) -> list[str]:
    tol = "-" if r.tolerance is None else f"{_num(r.tolerance)} ({r.statistic})"
    return [r.attribute, r.metric, _num(r.max), _num(r.p99), _num(r.mean), tol, r.status, _num(r.margin),
            _num(r.required)]  # fmt: skip


def _view_row(v: ViewResult) -> list[str]:
    tol = "-" if v.tolerance is None else f"{'>=' if v.bound == 'min' else '<='} {_num(v.tolerance)}"
    value = _num(v.value)
    if v.metric == "ssim" and v.value is not None and math.isfinite(v.value):
        value = f"{v.value:.5f}"  # SSIM lives just below 1: 3 significant digits would print 0.99995 as 1
    return [f"view {v.view}", v.metric, value, "", "", tol, v.status, _num(v.margin), value]


def format_table(results: ParityReport | Sequence[AttributeResult | ViewResult]) -> str:
    """One line per attribute metric and per view metric, then the failure and unavailability messages."""
    items = list(results.attributes) + list(results.views) if isinstance(results, ParityReport) else list(results)
    header = ["name", "metric", "max/value", "p99", "mean", "tolerance", "status", "margin", "min tol to pass"]
    rows = [_attribute_row(r) if isinstance(r, AttributeResult) else _view_row(r) for r in items]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    notes = [r.message for r in items if r.message and (not r.passed or getattr(r, "status", "") == "UNAVAILABLE")]
    # An UNAVAILABLE message is the same for every view: show it once.
    out += [f"  ! {m}" for m in dict.fromkeys(notes)]
    return "\n".join(out)


def _json_float(x: float | None) -> float | str | None:
    """JSON has no NaN/Inf: NaN -> null, +-inf -> "inf" / "-inf"."""
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def _attribute_json(r: AttributeResult) -> dict:
    return {
        "attribute": r.attribute,
        "metric": r.metric,
        "max": _json_float(r.max),
        "p99": _json_float(r.p99),
        "mean": _json_float(r.mean),
        "tolerance": _json_float(r.tolerance),
        "statistic": r.statistic,
        "status": r.status,
        "passed": r.passed,
        "margin": _json_float(r.margin),
        "ratio": _json_float(r.ratio),
        "min_tolerance_to_pass": _json_float(r.required),
        "n_nonfinite": r.n_nonfinite,
        "message": r.message,
        "tolerance_note": r.note,
    }


def _view_json(v: ViewResult) -> dict:
    value = v.value
    capped = v.metric == "psnr_db" and value is not None and math.isinf(value) and value > 0
    if capped:
        value = PSNR_CAP_DB
    doc = {
        "view": v.view,
        "metric": v.metric,
        "value": _json_float(value),
        "tolerance": _json_float(v.tolerance),
        "bound": v.bound,
        "status": v.status,
        "passed": v.passed,
        "margin": _json_float(PSNR_CAP_DB - v.tolerance if capped and v.tolerance is not None else v.margin),
        "message": v.message,
        "tolerance_note": v.note,
    }
    if capped:
        doc["capped"] = f"identical images: PSNR is infinite, written as {PSNR_CAP_DB:g} dB"
    return doc


def to_json(
    results: Sequence[AttributeResult] | ParityReport,
    views: Sequence[ViewResult] = (),
    meta: Mapping | None = None,
) -> dict:
    """The parity.json document (strict JSON: no NaN or Infinity)."""
    if isinstance(results, ParityReport):
        report = results
    else:
        report = ParityReport(list(results), list(views), dict(meta or {}))
    return {
        "schema_version": SCHEMA_VERSION,
        "passed": report.passed,
        "failures": report.failure_names,
        "unavailable": sorted({v.metric for v in report.unavailable}),
        "meta": dict(report.meta),
        "attributes": [_attribute_json(r) for r in report.attributes],
        "views": [_view_json(v) for v in report.views],
    }


def _failure_name(r: AttributeResult | ViewResult) -> str:
    if isinstance(r, AttributeResult):
        return f"{r.attribute}.{r.metric}"
    return f"view {r.view}.{r.metric}"


def raise_if_failed(report: ParityReport) -> None:
    """ParityError (exit code 3) naming every failing attribute / view and its margin."""
    if report.passed:
        return
    parts = []
    for r in report.failures:
        margin = "" if math.isnan(r.margin) else f" (margin {r.margin:.3g})"
        parts.append(f"{_failure_name(r)}{margin}")
    target = report.meta.get("target")
    precision = report.meta.get("precision")
    what = f"{target} {precision} " if target and precision else ""
    detail = "; ".join(m for m in (r.message for r in report.failures) if m)
    raise ParityError(
        f"{what}parity failed: {', '.join(parts)}. {detail}",
        fix="see the parity table; override a tolerance only once the difference is understood",
    )
