"""The end of a batch run: what it did, how fast, and the table printed for it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from sharp_export.batch.manifest import STAGES


@dataclass
class Summary:
    images: int  # in INPUT (after --limit)
    skipped: int  # done by an earlier run (manifest and file agree)
    failed_before: int  # failed in an earlier run on the same input; not retried (--retry-failed)
    ok: int  # written (or found published by an earlier attempt) in this run
    failed: int
    artifact: str
    artifact_sha256: str
    actors: str  # "2" or "1-4"
    seconds: float  # from the dataset's start to its last row (Ray start-up excluded, actor start-up included)
    ray_start_s: float
    workers: int = 0  # actor processes that wrote journals (more than --actors: Ray restarted some)
    rows: list[dict[str, Any]] = field(default_factory=list)  # this run's rows

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    @property
    def images_per_hour(self) -> float | None:
        return self.processed / self.seconds * 3600.0 if self.seconds > 0 and self.processed else None

    @property
    def steady_images_per_hour(self) -> float | None:
        """Between the first and the last finished image: the rate once the actors are up (start-up excluded)."""
        times = sorted(row["finished"] for row in self.rows if row["finished"] is not None)
        if len(times) < 3 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0]) * 3600.0

    def stage_p50(self) -> dict[str, float | None]:
        """Median seconds of each stage over this run's written images."""
        written = [row for row in self.rows if row["status"] == "ok" and row["written"]]
        return {stage: _median([row[f"{stage}_s"] for row in written]) for stage in STAGES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "skipped": self.skipped, "failed_before": self.failed_before, "ok": self.ok,
            "failed": self.failed,
            "artifact": self.artifact, "artifact_sha256": self.artifact_sha256, "actors": self.actors,
            "workers": self.workers, "seconds": round(self.seconds, 3), "ray_start_s": round(self.ray_start_s, 3),
            "images_per_hour": _round(self.images_per_hour),
            "steady_images_per_hour": _round(self.steady_images_per_hour),
            "stage_p50_s": {stage: _round(value, 4) for stage, value in self.stage_p50().items()},
        }  # fmt: skip


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def format_table(summary: Summary) -> str:
    """The table printed at the end of a run (stdout)."""

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    p50 = summary.stage_p50()
    if summary.processed == 0:
        head = f"{summary.images:,} ({summary.skipped:,} already done, {summary.failed_before:,} failed before)"
        lines = [
            ("images", head),
            ("this run", "nothing to do (--force redoes every image, --retry-failed the failed)"),
        ]
        lines.append(("artifact", f"{summary.artifact} (sha256 {summary.artifact_sha256[:12]})"))
        width = max(len(name) for name, _ in lines)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)
    lines = [
        ("images", f"{summary.images:,} ({summary.skipped:,} already done, {summary.processed:,} this run)"),
        ("written", f"{summary.ok:,}"),
        (
            "failures",
            f"{summary.failed:,}"
            + (
                f" (and {summary.failed_before:,} from earlier runs, not retried: --retry-failed)"
                if summary.failed_before
                else ""
            ),
        ),
        ("images per hour", f"{rate(summary.images_per_hour)} (steady: {rate(summary.steady_images_per_hour)})"),
        ("time", f"{summary.seconds:.1f} s, plus {summary.ray_start_s:.1f} s to start Ray"),
        ("actors", f"{summary.actors} ({summary.workers} processes; more means Ray restarted some)"),
        ("p50 per stage", ", ".join(f"{s} {v:.3f} s" for s, v in p50.items() if v is not None) or "-"),
        ("artifact", f"{summary.artifact} (sha256 {summary.artifact_sha256[:12]})"),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)
