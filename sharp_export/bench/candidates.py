"""The candidates: the eager reference and artifacts, validated together, then opened once each.

A ``Candidate`` carries its open runner and everything measured on it (``measuring`` fills the passes and
batches, ``check`` the parity column); ``open_candidates`` refuses a bad set before any model is built.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sharp_export.artifact import MANIFEST_NAME
from sharp_export.errors import UserInputError
from sharp_export.pipeline import resolve_device
from sharp_export.progress import echo, rss_bytes
from sharp_export.reference.checkpoint import build_model
from sharp_export.registry import ResolvedArtifact, resolve_artifact
from sharp_export.runtime.torch_runner import TorchRunner

REFERENCE = "reference"  # the candidate word for the eager PyTorch model
REFERENCE_PRECISIONS = ("fp32", "bf16")


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
    options: dict[str, Any] = field(default_factory=dict)  # the manifest's options
    tolerance_profile: str | None = None  # the rows that gate an artifact (its precision and options)
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
    if not names:
        raise UserInputError("no candidates", fix="pass artifact directories and/or the word 'reference'")
    seen: set[str] = set()
    artifacts: dict[str, ResolvedArtifact] = {}
    for name in names:
        key = name if name == REFERENCE else str(Path(name).resolve())
        if key in seen:
            raise UserInputError(f"candidate '{name}' is given twice")
        seen.add(key)
        if name != REFERENCE:
            artifact = resolve_artifact(name)  # UserInputError naming the path when it is not an artifact
            batch = artifact.manifest.io.inputs[0].shape[0]
            if isinstance(batch, int) and batch != 1:
                raise UserInputError(
                    f"artifact has fixed batch {batch}; bench times photo -> PLY at batch 1",
                    path=name,
                    fix="export with --dynamic-batch, or without a batch size",
                )
            artifacts[name] = artifact
    manifests = {name: artifact.manifest for name, artifact in artifacts.items()}
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
            candidates.append(_open_artifact(name, artifacts[name], device))
    except BaseException:
        for candidate in candidates:
            candidate.close()
        raise
    order = {name: index for index, name in enumerate(names)}
    candidates.sort(key=lambda c: order[c.name])
    _label_candidates(candidates)
    return candidates, reference_model


def _open_reference(choice: ModelChoice, preset: str, manifests: list[Any], device: torch.device) -> tuple[Any, Any]:

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


def _open_artifact(name: str, artifact: ResolvedArtifact, device: str) -> Candidate:
    """``name``: as given on the command line (the candidate's key in the report)."""
    manifest = artifact.manifest
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    runner = artifact.runner(device).open()
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
        tolerance_profile=artifact.tolerance_profile,
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
