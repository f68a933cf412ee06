"""Measuring: the settings, the statistics, each pass's memory peak, and the interleaved timed rounds.

``measure`` runs the phases (module docstring of ``sharp_export.bench`` for what one pass times);
``stability`` is the verdict on a series of latencies that both the rounds and the report use.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export.bench.candidates import BatchResult, Candidate
from sharp_export.progress import echo, hwm_rss_bytes, rss_bytes
from sharp_export.reference.gaussians import SceneMeta, unproject_gaussians
from sharp_export.reference.ply import save_ply
from sharp_export.reference.preprocess import load_image, prepare_input
from sharp_export.reference.render import make_trajectory, render_scene

STAGES = ("preprocess", "model", "postprocess", "ply_write", "render")
SETTLE_S = 0.02  # untimed pause before each timed run: lets the previous runtime's spinning threads go idle
MIN_ROUNDS = 3  # rounds before the CV bound may end a phase (fewer only when max_runs is lower)


# ---- settings and parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"  # cpu, cuda or mps
    batches: tuple[int, ...] = (1,)  # batch sizes for the throughput phase (1 reuses the pipeline passes)
    warmup: int = 1  # untimed passes per candidate before each phase
    min_time_s: float = 5.0  # timed seconds each candidate must accumulate per phase
    max_cv: float = 0.05  # std / mean of the latency that counts as stable
    max_runs: int = 30  # hard cap on rounds per phase
    max_time_s: float = 600.0  # hard cap on wall seconds per phase (checked after each round)
    render: bool = False
    check: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "batches": list(self.batches),
            "warmup": self.warmup,
            "min_time_s": self.min_time_s,
            "max_cv": self.max_cv,
            "max_runs": self.max_runs,
            "max_time_s": self.max_time_s,
            "render": self.render,
            "check": self.check,
            "settle_s": SETTLE_S,
            "min_rounds": MIN_ROUNDS,
        }


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), sorted and de-duplicated; ValueError with a one-line reason otherwise."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ValueError(f"'{text}' is not a comma-separated list of batch sizes (e.g. 1,2,4)")
    sizes = []
    for part in parts:
        try:
            size = int(part)
        except ValueError:
            raise ValueError(f"'{part}' in '{text}' is not an integer batch size (e.g. 1,2,4)") from None
        if size < 1:
            raise ValueError(f"batch size {size} in '{text}' must be at least 1")
        sizes.append(size)
    return tuple(sorted(set(sizes)))


# ---- statistics ----------------------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Stats:
    """Summary of one series of seconds (or bytes); std and cv are NaN for a single value."""

    n: int
    mean: float
    std: float
    cv: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @staticmethod
    def of(values: Sequence[float]) -> Stats:
        data = np.asarray(values, dtype=np.float64)
        if data.size == 0:
            raise ValueError("no values to summarise")
        mean = float(data.mean())
        std = float(data.std(ddof=1)) if data.size > 1 else math.nan
        cv = std / mean if data.size > 1 and mean > 0 else math.nan
        p50, p90, p99 = (float(v) for v in np.percentile(data, [50, 90, 99]))
        return Stats(int(data.size), mean, std, cv, float(data.min()), p50, p90, p99, float(data.max()))

    def to_dict(self) -> dict[str, Any]:
        return {key: _finite_or_none(getattr(self, key)) if key != "n" else self.n for key in self.__dataclass_fields__}


# ---- memory --------------------------------------------------------------------------------------------------

_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> bool:
    """Lower the process's peak RSS (VmHWM) to its current RSS; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets only the peak-RSS counter (Linux >= 4.0), nothing else
    except OSError:
        return False
    return hwm_rss_bytes() is not None


def memory_method() -> str:
    if _reset_peak():
        return "vmhwm-reset"
    return "sampled"


@dataclass
class RssPeak:
    start: int  # bytes resident when the block started
    peak: int = 0  # bytes, highest resident size seen during the block

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)


@contextlib.contextmanager
def track_rss_peak(method: str) -> Iterator[RssPeak]:
    """Peak RSS of this process during the block, exact with 'vmhwm-reset', else sampled every 2 ms."""
    result = RssPeak(start=rss_bytes())
    if method == "vmhwm-reset" and _reset_peak():
        yield result
        result.peak = hwm_rss_bytes() or rss_bytes()
        return
    stop = threading.Event()
    highest = [result.start]

    def sample() -> None:
        while not stop.wait(0.002):
            highest[0] = max(highest[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.peak = max(highest[0], rss_bytes())


# ---- timing --------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    """Wait for queued device work, so a host clock around it measures the work itself."""
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def timed_pass(candidate: Candidate, image_path: Path, settings: Settings, ply_path: Path) -> dict[str, float]:
    """One photo -> PLY pass with the seconds of each stage and of the whole pass ("total")."""

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    image = load_image(image_path)
    tensor, disparity_factor = prepare_input(image, candidate.resolution)  # [1, 3, R, R], [1] on the host
    mark = time.perf_counter()
    seconds["preprocess"] = mark - start
    synchronize(settings.device)
    model_start = time.perf_counter()
    raw = candidate.runner.infer(tensor, disparity_factor)  # Gaussians3D [1, N, C] on the host
    synchronize(settings.device)
    mark = time.perf_counter()
    seconds["model"] = mark - model_start
    meta = SceneMeta(f_px=image.f_px, width=image.width, height=image.height)
    scene = unproject_gaussians(raw, meta, candidate.resolution)
    seconds["postprocess"] = time.perf_counter() - mark
    mark = time.perf_counter()
    save_ply(scene, meta, ply_path, format="official", replace=True)  # the same scratch file every pass
    seconds["ply_write"] = time.perf_counter() - mark
    if settings.render:
        mark = time.perf_counter()
        camera = make_trajectory(scene, meta, kind="rotate_forward", num_frames=60)[0]
        render_scene(scene, camera, backend="torch", eps2d=0.0)
        seconds["render"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return seconds


def batch_inputs(
    prepared: Sequence[tuple[torch.Tensor, torch.Tensor]],  # per image: [1, 3, R, R], [1]
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # [B, 3, R, R], [B]
    """A batch of ``size`` prepared images, cycling through them."""
    chosen = [prepared[i % len(prepared)] for i in range(size)]
    return torch.cat([c[0] for c in chosen]).contiguous(), torch.cat([c[1] for c in chosen]).contiguous()


def timed_batch(candidate: Candidate, image: torch.Tensor, factor: torch.Tensor, device: str) -> float:
    """Seconds of one model call on a prepared batch: image [B, 3, R, R], factor [B]."""
    synchronize(device)
    start = time.perf_counter()
    candidate.runner.infer(image, factor)
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Phase:
    """How one phase of rounds ended."""

    name: str
    rounds: int
    stopped_by: str  # "stable", "max-runs" or "max-time"
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "stopped_by": self.stopped_by, "wall_s": round(self.wall_s, 3)}


def stability(latencies: Sequence[float], timed_s: float, settings: Settings) -> tuple[bool, str]:
    """(stable, reason): CV at or below max_cv with at least two runs, and min_time_s of timed runs."""
    if len(latencies) < 2:
        return False, f"{len(latencies)} run: no spread to judge"
    cv = Stats.of(latencies).cv
    if not cv <= settings.max_cv:
        return False, f"cv {cv:.3f} > max-cv {settings.max_cv:g}"
    if timed_s < settings.min_time_s:
        return False, f"{timed_s:.1f} s timed < min-time {settings.min_time_s:g} s"
    return True, f"cv {cv:.3f} <= {settings.max_cv:g}"


def run_rounds(
    name: str,
    candidates: Sequence[Candidate],
    step: Callable[[Candidate, int, bool], tuple[float, float]],
    settings: Settings,
) -> Phase:
    """Warm up, then timed rounds (one run of every candidate each, in order) until stable or capped.

    ``step(candidate, run_index, timed) -> (latency_s, wall_s)``; the latency judges stability, the wall
    seconds count towards min_time_s.
    """
    for index in range(settings.warmup):
        for candidate in candidates:
            step(candidate, index, False)
        echo(f"bench {name}: warmup {index + 1}/{settings.warmup} done")
    latencies: dict[str, list[float]] = {c.name: [] for c in candidates}
    walls: dict[str, float] = {c.name: 0.0 for c in candidates}
    start = time.perf_counter()
    rounds = 0
    min_rounds = min(MIN_ROUNDS, settings.max_runs)
    while True:
        parts = []
        for candidate in candidates:
            time.sleep(SETTLE_S)
            latency, wall = step(candidate, rounds, True)
            latencies[candidate.name].append(latency)
            walls[candidate.name] += wall
            parts.append(f"{candidate.label} {latency:.4g} s")
        rounds += 1
        elapsed = time.perf_counter() - start
        echo(f"bench {name}: round {rounds}/{settings.max_runs}: {', '.join(parts)} ({elapsed:.0f} s elapsed)")
        stable = all(stability(latencies[c.name], walls[c.name], settings)[0] for c in candidates)
        if stable and rounds >= min_rounds:
            return Phase(name, rounds, "stable", elapsed)
        if rounds >= settings.max_runs:
            return Phase(name, rounds, "max-runs", elapsed)
        if elapsed >= settings.max_time_s:
            return Phase(name, rounds, "max-time", elapsed)


def measure(candidates: Sequence[Candidate], images: Sequence[Path], settings: Settings) -> dict[str, Phase]:
    """The pipeline phase (batch 1, every stage), then one model-only phase per batch size above 1."""

    method = memory_method()
    phases: dict[str, Phase] = {}
    on_cuda = settings.device == "cuda"
    with tempfile.TemporaryDirectory(prefix="sharp-bench-") as scratch:
        plys = {c.name: Path(scratch) / f"candidate{i}.ply" for i, c in enumerate(candidates)}

        def pipeline_step(candidate: Candidate, index: int, timed: bool) -> tuple[float, float]:
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            with track_rss_peak(method) as peak:
                seconds = timed_pass(candidate, images[index % len(images)], settings, plys[candidate.name])
            if timed:
                candidate.passes.append(seconds)
                candidate.pass_rss_peaks.append(peak.delta)
                if on_cuda:
                    candidate.cuda_peaks.append(int(torch.cuda.max_memory_allocated()))
            return seconds["model"], seconds["total"]

        phases["pipeline"] = run_rounds("batch 1 photo->PLY", candidates, pipeline_step, settings)

    for size in settings.batches:
        for candidate in candidates:
            if size == 1:
                candidate.batches[1] = BatchResult(latencies=[p["model"] for p in candidate.passes])
            elif not candidate.supports_batch(size):
                candidate.batches[size] = BatchResult(skipped=f"fixed batch {candidate.fixed_batch}")
        if size == 1:
            continue
        able = [c for c in candidates if c.supports_batch(size)]
        if not able:
            continue
        inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for resolution in {c.resolution for c in able}:
            prepared = [prepare_input(load_image(path), resolution) for path in images]
            inputs[resolution] = batch_inputs(prepared, size)
        for candidate in able:
            candidate.batches[size] = BatchResult()

        def batch_step(
            candidate: Candidate, index: int, timed: bool, size: int = size, inputs: dict = inputs
        ) -> tuple[float, float]:
            image, factor = inputs[candidate.resolution]
            with track_rss_peak(method) as peak:
                seconds = timed_batch(candidate, image, factor, settings.device)
            if timed:
                candidate.batches[size].latencies.append(seconds)
                candidate.batches[size].rss_peaks.append(peak.delta)
            return seconds, seconds

        phases[f"batch{size}"] = run_rounds(f"batch {size} model", able, batch_step, settings)
    return phases
