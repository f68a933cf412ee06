"""Latency of every artifact (and the eager reference) on the hardware at hand, measured side by side.

Every candidate is opened once in this process and timed interleaved: each round runs one timed pass of
every candidate in turn, so a burst of machine noise lands on all of them rather than on whichever
happened to run at that moment. A pass is the whole photo -> PLY path, timed per stage:

    preprocess   load_image + prepare_input (decode, resize to R x R, disparity factor)
    model        runner.infer: host arrays in, host Gaussians out (device copies included)
    postprocess  unproject_gaussians (NDC x z -> metric camera space)
    ply_write    save_ply, official format, fsync'd to a temporary file
    render       one torch-renderer view, the first pose of rotate_forward (only with render=True)

Rounds continue until every candidate has at least ``min_time_s`` of timed passes and a model-latency
coefficient of variation at or below ``max_cv``, or a hard cap (``max_runs`` rounds, ``max_time_s`` per
phase) is hit; a candidate that did not meet the bound is reported "unstable", never silently averaged.
Memory is measured per pass: on Linux the process's peak-RSS counter (VmHWM) is reset before each pass
through /proc/self/clear_refs, so each candidate's peak is its own even though all share one process.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.progress import echo

SCHEMA = "sharp-export-bench/1"
REFERENCE = "reference"  # the candidate word for the eager PyTorch model
STAGES = ("preprocess", "model", "postprocess", "ply_write", "render")
SHORT = {"preprocess": "pre", "model": "model", "postprocess": "post", "ply_write": "ply", "render": "render"}
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
REFERENCE_PRECISIONS = ("fp32", "bf16")
SETTLE_S = 0.02  # untimed pause before each timed run: lets the previous runtime's spinning threads go idle
MIN_ROUNDS = 3  # rounds before the CV bound may end a phase (fewer only when max_runs is lower)
GB = 1e9


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
_STATUS = Path("/proc/self/status")


def _status_bytes(key: str) -> int | None:
    """A 'VmRSS:  1234 kB' style line of /proc/self/status in bytes, or None off Linux."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets only the peak-RSS counter (Linux >= 4.0), nothing else
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


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
        result.peak = _status_bytes("VmHWM") or rss_bytes()
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


# ---- machine description -------------------------------------------------------------------------------------


def cpu_info() -> dict[str, Any]:
    """CPU model, cores, thread settings, ISA flags and load average (what changes CPU latency)."""
    model: str | None = None
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    model = model or platform.processor() or platform.machine()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "isa": {flag: flag in flags for flag in ISA_FLAGS} if flags else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _nvidia_driver() -> str | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def cuda_info() -> dict[str, Any]:
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "device_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_gb": round(props.total_memory / GB, 2),
        "driver": _nvidia_driver(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def machine_info(device: str) -> dict[str, Any]:
    from sharp_export.env import environment_report

    report = environment_report()
    return {
        "python": report["python"],
        "platform": report["platform"],
        "cpu": cpu_info(),
        "cuda": cuda_info() if device == "cuda" else None,
        "packages": report["packages"],
        "onnxruntime_providers": report.get("onnxruntime_providers"),
    }


# ---- candidates ----------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    latencies: list[float] = field(default_factory=list)  # seconds per timed batch
    rss_peaks: list[int] = field(default_factory=list)  # bytes above the RSS at the start of each run
    skipped: str | None = None  # why this batch size was not measured


@dataclass
class Candidate:
    """One thing to time: the eager reference or an artifact, with its open runner and what was measured."""

    name: str  # as given on the command line: "reference" or the artifact path
    label: str  # short name for tables
    kind: str  # "reference" or "artifact"
    runner: Any  # sharp_export.runtime.base.Runner, open
    resolution: int
    target: str  # "torch" for the reference, else the manifest's target
    precision: str
    preset: str | None
    fixed_batch: int | None  # None: any batch size
    parity_status: str  # the manifest's parity status ("reference" for the reference)
    manifest_sha256: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # weights: seed / checkpoint sha256 / label
    options: dict[str, Any] = field(default_factory=dict)  # the manifest's options (some pick tolerance rows)
    rss_open_bytes: int = 0  # RSS growth while building / opening it
    passes: list[dict[str, float]] = field(default_factory=list)  # stage -> seconds, plus "total"
    pass_rss_peaks: list[int] = field(default_factory=list)  # bytes above the RSS at each pass's start
    cuda_peaks: list[int] = field(default_factory=list)  # torch.cuda.max_memory_allocated per pass
    batches: dict[int, BatchResult] = field(default_factory=dict)
    check: dict[str, Any] | None = None

    def supports_batch(self, size: int) -> bool:
        return self.fixed_batch is None or self.fixed_batch == size

    def close(self) -> None:
        self.runner.close()


def manifest_sha256(artifact: Path) -> str:
    from sharp_export.artifact import MANIFEST_NAME

    return hashlib.sha256((Path(artifact) / MANIFEST_NAME).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelChoice:
    """The reference model options as given (``preset_given``: --preset was on the command line)."""

    preset: str = "sharp"
    checkpoint: str | None = None
    seed: int | None = None
    precision: str = "fp32"
    preset_given: bool = True


def _reference_weights(choice: ModelChoice, manifests: list[Any]) -> tuple[str | None, int | None]:
    """-c / --seed when given, else the weights the first artifact was exported from."""
    if choice.checkpoint is not None or choice.seed is not None:
        return choice.checkpoint, choice.seed
    for manifest in manifests:
        source = manifest.source
        if source.get("seed") is not None:
            return None, int(source["seed"])
        path = source.get("checkpoint_path")
        if path and Path(path).is_file():
            return str(path), None
    return None, None  # build_model then says that no weights were given


def _check_same_weights(loaded: Any, name: str, source: dict[str, Any]) -> None:
    if source.get("checkpoint_sha256"):
        if loaded.checkpoint_sha256 != source["checkpoint_sha256"]:
            raise UserInputError(
                f"--check needs the reference weights the artifact was exported from: its checkpoint sha256 is "
                f"{source['checkpoint_sha256'][:12]}, the reference has {loaded.source_label}",
                path=name,
                fix="pass -c with that checkpoint",
            )
    elif source.get("seed") is not None and (loaded.seed != source["seed"] or loaded.checkpoint_sha256):
        raise UserInputError(
            f"--check needs the reference weights the artifact was exported from (seed {source['seed']}), "
            f"the reference has {loaded.source_label}",
            path=name,
            fix=f"pass --seed {source['seed']}",
        )


def open_candidates(
    names: Sequence[str], choice: ModelChoice, device: str, *, check: bool = False
) -> tuple[list[Candidate], Any]:
    """Validate every candidate first (no model built before all paths are known good), then open them.

    Returns the open candidates and the reference ``LoadedModel`` used by ``check`` (None without one).
    """
    from sharp_export.artifact import read_manifest

    if not names:
        raise UserInputError("no candidates", fix="pass artifact directories and/or the word 'reference'")
    seen: set[str] = set()
    manifests: dict[str, Any] = {}
    for name in names:
        key = name if name == REFERENCE else str(Path(name).resolve())
        if key in seen:
            raise UserInputError(f"candidate '{name}' is given twice")
        seen.add(key)
        if name != REFERENCE:
            manifest = read_manifest(name)  # UserInputError naming the path when it is not an artifact
            batch = manifest.io.inputs[0].shape[0]
            if isinstance(batch, int) and batch != 1:
                raise UserInputError(
                    f"artifact has fixed batch {batch}; bench times photo -> PLY at batch 1",
                    path=name,
                    fix="export with --dynamic-batch, or without a batch size",
                )
            manifests[name] = manifest
    if choice.precision not in REFERENCE_PRECISIONS:
        raise UserInputError(f"unknown reference precision '{choice.precision}'", fix="use fp32 or bf16")

    presets = {str(m.source.get("preset")) for m in manifests.values()}
    wants_reference = REFERENCE in names or check
    preset = choice.preset
    if wants_reference and not choice.preset_given and len(presets) == 1:
        preset = next(iter(presets))
    if wants_reference:
        presets.add(preset)
    if len(presets) > 1:
        raise UserInputError(
            f"candidates use different presets ({', '.join(sorted(presets))}); bench compares like with like",
            fix="benchmark one preset at a time" + ("" if choice.preset_given else ", or pass --preset"),
        )
    if check and not manifests:
        raise UserInputError("--check compares artifacts with the reference, but no artifact was given")

    from sharp_export.pipeline import resolve_device

    torch_device = resolve_device(device)  # UserInputError when cuda / mps is not there
    candidates: list[Candidate] = []
    reference_model = None
    try:
        if wants_reference:
            reference_model, opened = _open_reference(choice, preset, list(manifests.values()), torch_device)
            if check:
                for name, manifest in manifests.items():
                    _check_same_weights(reference_model, name, manifest.source)
            if REFERENCE in names:
                candidates.append(opened)
            else:
                opened.close()
        for name in names:
            if name == REFERENCE:
                continue
            candidates.append(_open_artifact(name, manifests[name], device))
    except BaseException:
        for candidate in candidates:
            candidate.close()
        raise
    order = {name: index for index, name in enumerate(names)}
    candidates.sort(key=lambda c: order[c.name])
    _label_candidates(candidates)
    return candidates, reference_model


def _open_reference(choice: ModelChoice, preset: str, manifests: list[Any], device: torch.device) -> tuple[Any, Any]:
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.runtime.torch_runner import TorchRunner

    checkpoint, seed = _reference_weights(choice, manifests)
    gc.collect()
    before = rss_bytes()
    loaded = build_model(preset, checkpoint, seed, device=device, precision=choice.precision)
    runner = TorchRunner(loaded, device=str(device)).open()
    candidate = Candidate(
        name=REFERENCE,
        label=REFERENCE,
        kind="reference",
        runner=runner,
        resolution=int(loaded.model.resolution),
        target="torch",
        precision=choice.precision if choice.precision == "fp32" else f"{choice.precision}-autocast",
        preset=preset,
        fixed_batch=None,
        parity_status=REFERENCE,
        source={"seed": loaded.seed, "checkpoint_sha256": loaded.checkpoint_sha256, "label": loaded.source_label},
        rss_open_bytes=max(0, rss_bytes() - before),
    )
    echo(f"bench: reference: preset '{preset}', {loaded.source_label}, {choice.precision} on {device}")
    return loaded, candidate


def _open_artifact(name: str, manifest: Any, device: str) -> Candidate:
    from sharp_export.runtime.base import open_runner

    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    runner = open_runner(name, device).open()
    batch = manifest.io.inputs[0].shape[0]
    candidate = Candidate(
        name=name,
        label=Path(name).name or name,
        kind="artifact",
        runner=runner,
        resolution=int(manifest.preprocessing["resolution"]),
        target=manifest.target,
        precision=manifest.precision,
        preset=manifest.source.get("preset"),
        fixed_batch=batch if isinstance(batch, int) else None,
        parity_status=str(manifest.parity.get("status", "unknown")),
        manifest_sha256=manifest_sha256(Path(name)),
        source={k: manifest.source.get(k) for k in ("seed", "checkpoint_sha256", "label")},
        options=dict(manifest.options),
        rss_open_bytes=max(0, rss_bytes() - before),
    )
    echo(
        f"bench: {candidate.label}: {manifest.target} {manifest.precision}, parity {candidate.parity_status} "
        f"({time.perf_counter() - start:.1f} s to open)"
    )
    return candidate


def _label_candidates(candidates: list[Candidate]) -> None:
    """Short labels, falling back to the path as given where two artifacts share a directory name."""
    counts: dict[str, int] = {}
    for candidate in candidates:
        counts[candidate.label] = counts.get(candidate.label, 0) + 1
    for candidate in candidates:
        if counts[candidate.label] > 1:
            candidate.label = candidate.name


# ---- timing --------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    """Wait for queued device work, so a host clock around it measures the work itself."""
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def timed_pass(candidate: Candidate, image_path: Path, settings: Settings, ply_path: Path) -> dict[str, float]:
    """One photo -> PLY pass with the seconds of each stage and of the whole pass ("total")."""
    from sharp_export.reference.gaussians import SceneMeta, unproject_gaussians
    from sharp_export.reference.ply import save_ply
    from sharp_export.reference.preprocess import load_image, prepare_input

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
    save_ply(scene, meta, ply_path, format="official")
    seconds["ply_write"] = time.perf_counter() - mark
    if settings.render:
        from sharp_export.reference.render import make_trajectory, render_scene

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
    from sharp_export.reference.preprocess import load_image, prepare_input

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


# ---- parity check --------------------------------------------------------------------------------------------


def _failure_names(report: Any) -> list[str]:
    names = []
    for result in report.failures:
        if hasattr(result, "attribute"):
            names.append(f"{result.attribute}.{result.metric}")
        else:
            names.append(f"view {result.view}.{result.metric}")
    return names


def check_candidates(
    candidates: Sequence[Candidate],
    reference: Any,
    images: Sequence[Path],
    device: str,
    poses: int = 4,
) -> None:
    """Re-run parity of every artifact against the fp32 reference on the benchmark images; fills ``.check``.

    ``poses`` views of each image (the first ``poses`` of parity's default poses) are rendered and compared.
    The reference outputs and renders are computed once per image and shared by all artifacts.
    """
    from sharp_export.parity import harness
    from sharp_export.parity.lpips import load_lpips, lpips_status
    from sharp_export.parity.report import ParityReport
    from sharp_export.parity.tolerances import load_tolerances
    from sharp_export.parity.views import DEFAULT_POSES, render_views
    from sharp_export.reference.gaussians import Gaussians3D, unproject_gaussians

    artifacts = [c for c in candidates if c.kind == "artifact"]
    if not artifacts:
        return
    pose_names = tuple(DEFAULT_POSES[:poses])
    torch_device = torch.device(device)

    def reference_infer(image: torch.Tensor, factor: torch.Tensor) -> Gaussians3D:  # [1, 3, R, R], [1]
        with torch.no_grad():  # no autocast: parity is always against the fp32 reference
            out = reference.model(image.to(torch_device), factor.to(torch_device))
        return Gaussians3D(*(t.float().cpu() for t in out))

    lpips_model = load_lpips() if pose_names else None
    lpips_note = None if lpips_model is not None else lpips_status().message()
    reports: dict[str, Any] = {}
    tolerances: dict[str, Any] = {}
    for candidate in artifacts:
        try:
            tolerances[candidate.name] = load_tolerances(
                candidate.target, candidate.precision, options=candidate.options
            )
            reports[candidate.name] = ParityReport(meta={"target": candidate.target, "precision": candidate.precision})
        except UserInputError as error:
            candidate.check = {"status": "error", "reason": error.one_line()}
    resolution = int(reference.model.resolution)
    inputs = harness.load_inputs(list(images), resolution)
    for number, item in enumerate(inputs, start=1):
        echo(f"bench check: [{number}/{len(inputs)}] {item.name}: reference + {len(reports)} artifact(s) ...")
        raw_reference = reference_infer(item.image, item.disparity_factor)
        reference_scene = unproject_gaussians(raw_reference, item.meta, resolution)
        reference_views = render_views(reference_scene, item.meta, pose_names)
        for candidate in artifacts:
            if candidate.name not in reports:
                continue
            raw = candidate.runner.infer(item.image, item.disparity_factor)
            attributes, views = harness.compare_scene(
                item, raw_reference, raw, tolerances[candidate.name], pose_names, lpips_model, resolution,
                reference_views=reference_views,
            )  # fmt: skip
            reports[candidate.name].attributes += attributes
            reports[candidate.name].views += views
    for candidate in artifacts:
        if candidate.name in reports:
            report = reports[candidate.name]
            candidate.check = {
                "status": "passed" if report.passed else "failed",
                "failures": _failure_names(report),
                "images": [item.name for item in inputs],
                "poses": list(pose_names),
                "lpips": "used" if lpips_model is not None else lpips_note,
            }


# ---- the report ----------------------------------------------------------------------------------------------


def _stats_or_none(values: Sequence[float]) -> dict[str, Any] | None:
    return Stats.of(values).to_dict() if len(values) else None


def candidate_report(candidate: Candidate, settings: Settings) -> dict[str, Any]:
    stages = [s for s in STAGES if s != "render" or settings.render]
    model = [p["model"] for p in candidate.passes]
    total_timed = sum(p["total"] for p in candidate.passes)
    stable, reason = stability(model, total_timed, settings)
    throughput: dict[str, Any] = {}
    for size in settings.batches:
        result = candidate.batches.get(size)
        if result is None or result.skipped is not None or not result.latencies:
            throughput[str(size)] = {"skipped": result.skipped if result is not None else "not measured"}
            continue
        timed = sum(result.latencies)
        # Batch 1 reuses the pipeline passes, so it shares their verdict (min-time counts whole passes).
        ok, why = (stable, reason) if size == 1 else stability(result.latencies, timed, settings)
        throughput[str(size)] = {
            "images_per_s": size * len(result.latencies) / timed,
            "latency_s": Stats.of(result.latencies).to_dict(),
            "stable": ok,
            "stability": why,
            "rss_run_peak_gb": max(result.rss_peaks) / GB if result.rss_peaks else None,
        }
    run_peak = max(candidate.pass_rss_peaks) if candidate.pass_rss_peaks else 0
    return {
        "name": candidate.name,
        "label": candidate.label,
        "kind": candidate.kind,
        "target": candidate.target,
        "precision": candidate.precision,
        "preset": candidate.preset,
        "resolution": candidate.resolution,
        "batch": "any" if candidate.fixed_batch is None else candidate.fixed_batch,
        "runner": type(candidate.runner).__name__,
        "runner_threads": getattr(candidate.runner, "intra_op_threads", None) or torch.get_num_threads(),
        "manifest_sha256": candidate.manifest_sha256,
        "weights": candidate.source,
        "parity": candidate.parity_status,
        "check": candidate.check,
        "n_runs": len(candidate.passes),
        "stable": stable,
        "stability": reason,
        "stages_s": {stage: _stats_or_none([p[stage] for p in candidate.passes]) for stage in stages + ["total"]},
        "throughput": throughput,
        "memory": {
            "rss_open_gb": candidate.rss_open_bytes / GB,
            "rss_run_peak_gb": run_peak / GB,
            "rss_peak_estimate_gb": (candidate.rss_open_bytes + run_peak) / GB,
            "cuda_max_allocated_gb": max(candidate.cuda_peaks) / GB if candidate.cuda_peaks else None,
        },
        "runs_s": {stage: [round(p[stage], 6) for p in candidate.passes] for stage in stages + ["total"]},
    }


def passing(row: dict[str, Any]) -> bool:
    """An artifact row that passed parity: the --check result when there is one, else its manifest's."""
    if row["kind"] != "artifact":
        return False
    if row.get("check"):
        return row["check"].get("status") == "passed"
    return row["parity"] == "passed"


def build_report(
    candidates: Sequence[Candidate],
    settings: Settings,
    phases: dict[str, Phase],
    images: Sequence[Path],
    machine: dict[str, Any],
    command: str,
) -> dict[str, Any]:
    rows = [candidate_report(c, settings) for c in candidates]
    first = rows[0]["stages_s"]
    for row in rows:
        for stage in ("model", "total"):
            base, mine = first[stage], row["stages_s"][stage]
            row[f"ratio_{stage}_p50"] = mine["p50"] / base["p50"] if base and mine and base["p50"] else None
    winners = [row for row in rows if passing(row)]
    fastest = min(winners, key=lambda row: row["stages_s"]["model"]["p50"])["name"] if winners else None
    machine = {**machine, "cpu": {**machine["cpu"], "loadavg_end": cpu_info()["loadavg"]}}
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings.to_dict(),
        "images": [str(p) for p in images],
        "machine": machine,
        "memory_method": {
            "vmhwm-reset": "per pass: /proc/self/clear_refs resets the process peak RSS (VmHWM); peak - RSS at start",
            "sampled": "per pass: RSS sampled every 2 ms; highest sample - RSS at start (may miss short peaks)",
        }[memory_method()]
        + "; rss_open_gb is the RSS growth while opening the candidate (weights, sessions); cuda_max_allocated_gb "
        "is torch's allocator only (ONNX Runtime and TensorRT allocate outside it)",
        "timing": "host clock around each stage; the device is synchronised before and after the model call; "
        "model time includes host<->device copies; ratios are p50 / the first candidate's p50",
        "phases": {name: phase.to_dict() for name, phase in phases.items()},
        "ratio_base": rows[0]["name"],
        "fastest_passing_artifact": fastest,
        "candidates": rows,
    }


# ---- text, markdown and plot output --------------------------------------------------------------------------


def _sec(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _parity_cell(row: dict[str, Any]) -> str:
    text = "-" if row["kind"] == "reference" else row["parity"]
    if row.get("check"):
        text += f" / check {row['check']['status']}"
    return text


def table_rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """(latency rows, throughput + memory rows), header first, as plain strings."""
    render = report["settings"]["render"]
    stage_names = [s for s in STAGES if s != "render" or render]
    head = ["candidate", "target", "precision", "parity", "n", "model p50", "p90", "p99", "mean", "std", "cv"]
    head += ["x first"] + [SHORT[s] for s in stage_names if s != "model"] + ["total", "status"]
    latency = [head]
    batches = report["settings"]["batches"]
    memory = [["candidate"] + [f"img/s b={b}" for b in batches] + ["RSS open GB", "RSS run GB", "CUDA GB"]]
    fastest = report["fastest_passing_artifact"]
    for row in report["candidates"]:
        stages = row["stages_s"]
        model = stages["model"]
        ratio = row["ratio_model_p50"]
        name = row["label"] + (" *" if row["name"] == fastest else "")
        latency.append(
            [name, row["target"], row["precision"], _parity_cell(row), str(row["n_runs"]), _sec(model["p50"]),
             _sec(model["p90"]), _sec(model["p99"]), _sec(model["mean"]), _sec(model["std"]),
             "-" if model["cv"] is None else f"{model['cv']:.3f}", "-" if ratio is None else f"{ratio:.2f}"]
            + [_sec(stages[s]["p50"]) for s in stage_names if s != "model"]
            + [_sec(stages["total"]["p50"]), "stable" if row["stable"] else "UNSTABLE"]
        )  # fmt: skip
        cells = [row["label"]]
        for b in batches:
            entry = row["throughput"][str(b)]
            if "skipped" in entry:
                cells.append(f"skip: {entry['skipped']}")
            else:
                cells.append(f"{entry['images_per_s']:.3g}" + ("" if entry["stable"] else " (unstable)"))
        mem = row["memory"]
        cuda = mem["cuda_max_allocated_gb"]
        cells += [f"{mem['rss_open_gb']:.3f}", f"{mem['rss_run_peak_gb']:.3f}", "-" if cuda is None else f"{cuda:.3f}"]
        memory.append(cells)
    return latency, memory


def _plain(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _machine_line(report: dict[str, Any]) -> str:
    machine = report["machine"]
    cpu = machine["cpu"]
    text = (
        f"{report['settings']['device']}; CPU {cpu['model']}, {cpu['cores_available']} cores, torch threads "
        f"{cpu['torch_threads']}, load {', '.join(f'{x:.2f}' for x in cpu['loadavg'] or [])}"
    )
    if machine.get("cuda"):
        cuda = machine["cuda"]
        text += f"; GPU {cuda['device_name']} (driver {cuda['driver']}, CUDA {cuda['cuda_runtime']})"
    return text


def _notes(report: dict[str, Any]) -> list[str]:
    notes = [
        "seconds, batch 1; model p90/p99/mean/std/cv over n timed passes; the stage columns (pre = load + "
        "preprocess, post = unprojection, ply = PLY write, render = one torch view) and total are p50s",
        "'x first' = model p50 / the first candidate's; parity = the manifest's status"
        + (" / --check on these images" if report["settings"]["check"] else ""),
    ]
    fastest = report["fastest_passing_artifact"]
    if fastest:
        row = next(r for r in report["candidates"] if r["name"] == fastest)
        notes.append(
            f"* fastest passing artifact: {row['label']} (model p50 {_sec(row['stages_s']['model']['p50'])} s)"
        )
    else:
        notes.append(
            "no artifact has a passing parity status" + ("" if report["settings"]["check"] else " (try --check)")
        )
    for row in report["candidates"]:
        if not row["stable"]:
            notes.append(f"UNSTABLE {row['label']}: {row['stability']} when the cap stopped the runs")
    return notes


def format_text(report: dict[str, Any]) -> str:
    latency, memory = table_rows(report)
    return "\n".join(
        [f"machine: {_machine_line(report)}", "", _plain(latency), "", _plain(memory), ""] + _notes(report)
    )


def format_markdown(report: dict[str, Any]) -> str:
    latency, memory = table_rows(report)
    parts = [
        "# sharp-export bench",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {_machine_line(report)}",
        f"- images: {', '.join(Path(p).name for p in report['images'])}",
        f"- created: {report['created']}",
        "",
        "## Latency per stage (batch 1, photo -> PLY)",
        "",
        _markdown(latency),
        "",
        "## Throughput and memory",
        "",
        _markdown(memory),
        "",
    ]
    parts += [f"- {note}" for note in _notes(report)]
    return "\n".join(parts) + "\n"


def plot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def require_plot() -> None:
    if not plot_available():
        raise MissingDependencyError("matplotlib", "bench", "--plot")


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """PNG: stacked p50 stage bars per candidate (left) and the model latency distribution (right)."""
    require_plot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["candidates"]
    labels = [row["label"] for row in rows]
    stage_names = [s for s in STAGES if s != "render" or report["settings"]["render"]]
    figure = Figure(figsize=(12, 1.6 + 0.6 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    bars, spread = figure.subplots(1, 2, width_ratios=[3, 2])
    left = np.zeros(len(rows))
    for stage in stage_names:
        widths = np.array([row["stages_s"][stage]["p50"] for row in rows])
        bars.barh(labels, widths, left=left, label=stage)
        left += widths
    bars.invert_yaxis()
    bars.set_xlabel("seconds (p50 per stage, batch 1)")
    bars.set_title("photo -> PLY, stacked stages")
    bars.legend(loc="lower right", fontsize="small")
    for index, row in enumerate(rows):
        values = np.asarray(row["runs_s"]["model"])
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        spread.scatter(values, index + jitter, s=10, alpha=0.6, color="tab:blue")
        model = row["stages_s"]["model"]
        for key, marker in (("p50", "|"), ("p90", "4"), ("p99", "x")):
            spread.scatter(
                [model[key]], [index], marker=marker, s=160, color="black", label=key if index == 0 else None
            )
    spread.set_yticks(range(len(rows)), labels)
    spread.legend(loc="lower right", fontsize="small")
    spread.invert_yaxis()
    spread.set_xlabel("seconds")
    spread.set_title(f"model latency, {report['settings']['device']} (n per candidate: {rows[0]['n_runs']})")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
