"""Core ML conversion: predictor -> torch.export -> ct.convert (mlprogram) -> MIL checks -> .mlpackage file(s).

Path: ``torch.export.export(strict=False).run_decompositions({})`` -> ``ct.convert(convert_to="mlprogram",
skip_model_load=True)``. coremltools 9.0 is tested up to torch 2.7; with torch 2.13 its ``torch.jit.trace``
path fails on the full model, the ``torch.export`` path works (docs/architecture.md §10.6).

Hazards handled here (docs/architecture.md §10.5, §10.6):

* ``1.0 / x`` would become MIL ``inverse`` = 1/(x + 1e-4) (depth bias up to 1.1 %): lowered to an exact
  ``real_div`` (mil_overrides.py), and the MIL check fails the export if an ``inverse`` is left.
* fp16: ``compute_precision`` is always explicit. fp16 keeps the pinned regions in fp32 (see
  ``PRECISION_PLAN_NOTE``); the five outputs are fp32.
* Rank and size limits: no tensor above rank 4 (GroupNorm lowered on rank 4, the ViT attention is rank 4
  in the reference), no dimension above 16384 (grids [1, C*2, h, w] out, the flatten to (1, N, C) runs
  on the host, the global depth minimum reduces over axes instead of a flattened 4.7M axis).
* Core ML cannot predict on Linux: conversion uses ``skip_model_load=True`` and the checks read the
  MIL program. Parity on Linux is a labelled torch proxy of the fp16 plan; on a Mac the runner runs it.
* ``--weights int8|palettize4|palettize6`` (weights.py): the checked program's weights are compressed
  (coremltools.optimize.coreml), the compressed program is checked again (constexpr ops present and
  counted; region tags do not survive coremltools' reload, so the pinned-region check is the one before).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sharp_export import __version__
from sharp_export.artifact import IOSpec, TensorSpec
from sharp_export.converters.coreml.capture import DEFAULT_PINNED, REGION_TAIL, GridOutputs, export_module
from sharp_export.converters.coreml.choices import COMPUTE_UNIT_NAMES, DEPLOYMENT_TARGETS, SPLITS, WEIGHT_MODES
from sharp_export.converters.coreml.io import ct_inputs_outputs, grid_io_spec
from sharp_export.converters.coreml.mil_checks import check_program, summarize_mil
from sharp_export.converters.coreml.mil_overrides import fp16_op_selector, frontend_overrides
from sharp_export.converters.coreml.split import PIECES, piece_shapes
from sharp_export.converters.coreml.weights import WeightPlan, combine_hashes, compress_mlmodel, program_report
from sharp_export.converters.coreml.weights import weight_plan as make_weight_plan
from sharp_export.errors import TOOLCHAIN_OUTPUT_HINT, ConversionError, MissingDependencyError, UserInputError
from sharp_export.progress import echo, heartbeat, rss_gb
from sharp_export.samples import example_inputs
from sharp_export.targets import missing_packages

IOS_WEIGHT_LIMIT_BYTES = 1 << 30  # iOS refuses to load models whose weights exceed ~1 GB
AUTHOR = "sharp-export (model: Apple ml-sharp)"
LICENSE_NOTE = (
    "Weights: the license of the exported checkpoint (Apple's ml-sharp release: its LICENSE_MODEL); "
    "seeded untrained weights carry no model license. Conversion: sharp-export, Apache-2.0."
)
PRECISION_PLAN_NOTE = (
    "fp16 keeps in fp32: the tail (disparity->depth division and clamps, global depth minimum, reciprocals, "
    "initializer, composer softplus/log/exp/sigmoid/pow) and GroupNorm statistics (squared deviations "
    "overflow fp16 above |x-mean| 256; means over up to 9.4M elements). Measured with the torch proxy "
    "(benchmarks/results/coreml_fp16_proxy.json): tiny golden (perturbed), a tail in fp16 takes the depth error "
    "from 3.0e-3 to 8.0e-3 (means_rel_depth max) and the colour error from 1.2e-4 to 1.9e-3; full size (seeded, "
    "untrained) from 1.0e-6 to 1.3e-3 and 1.8e-5 to 1.8e-3. fp16 GroupNorm raises scales_log max 4.1e-3 -> "
    "4.8e-3 (tiny) and 6.9e-4 -> 9.1e-4 (full). LayerNorm is one MIL op whose fp16 rounding changed nothing "
    "measurable, so it stays fp16 on the Neural Engine."
)


@dataclass
class CoreMLExport:
    files: list[str]  # produced packages, relative to out_dir
    io: IOSpec
    details: dict[str, Any] = field(default_factory=dict)


def _compute_precision(precision: str, pinned: frozenset[str]) -> Any:
    import coremltools as ct

    if precision == "fp32":
        return ct.precision.FLOAT32
    if precision == "fp16":
        return ct.transform.FP16ComputePrecision(op_selector=fp16_op_selector(pinned))
    raise UserInputError(f"Core ML cannot export precision '{precision}'", fix="use --precision fp32 or fp16")


def set_metadata(mlmodel: Any, io: IOSpec, metadata: dict[str, str], description: str) -> None:
    """Author, license, version, description, I/O descriptions and sharp-export's key/values."""

    mlmodel.author = AUTHOR
    mlmodel.license = LICENSE_NOTE
    mlmodel.version = __version__
    mlmodel.short_description = description
    for spec in io.inputs:
        mlmodel.input_description[spec.name] = f"{spec.meaning}; {list(spec.shape)} {spec.dtype}"
    for spec in io.outputs:
        mlmodel.output_description[spec.name] = f"{spec.meaning}; {list(spec.shape)} {spec.dtype}"
    for key, value in metadata.items():
        mlmodel.user_defined_metadata[key] = str(value)


def convert_program(
    program: Any,  # region-tagged torch.export.ExportedProgram (capture.export_module)
    io: IOSpec,
    *,
    precision: str,
    deployment_target: str,
    compute_units: str,
    pinned: frozenset[str],
    expect_pinned: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """ct.convert with the frontend overrides; runs the MIL checks. Returns (MLModel, check report)."""
    import coremltools as ct

    inputs, outputs = ct_inputs_outputs(io)
    start = time.perf_counter()
    try:
        with frontend_overrides(), heartbeat("ct.convert"):
            mlmodel = ct.convert(
                program,
                convert_to="mlprogram",
                inputs=inputs,
                outputs=outputs,
                minimum_deployment_target=getattr(ct.target, deployment_target),
                compute_precision=_compute_precision(precision, pinned),
                compute_units=getattr(ct.ComputeUnit, compute_units.upper()),
                skip_model_load=True,
            )
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        message = f"ct.convert failed: {type(error).__name__}: {first}"
        raise ConversionError(message, fix=TOOLCHAIN_OUTPUT_HINT) from error
    seconds = time.perf_counter() - start
    echo(f"    ct.convert (mlprogram, {deployment_target}, {precision}) {seconds:.1f} s, RSS {rss_gb():.1f} GB")
    report = check_program(summarize_mil(mlmodel._mil_program), io, precision, pinned, expect_pinned)
    report["convert_seconds"] = round(seconds, 2)
    if report["problems"]:
        raise ConversionError("the converted MIL program fails its checks: " + "; ".join(report["problems"]))
    echo(f"    MIL checks passed: {report['compute_dtypes']} compute ops, max rank {report['max_rank']}, no inverse")
    return mlmodel, report


def package_weight_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in (package / "Data").rglob("*") if p.is_file())


@dataclass
class _Job:
    """One package to convert: a module returning a tuple, its example inputs and its I/O."""

    name: str  # package file stem
    module: torch.nn.Module
    examples: tuple[torch.Tensor, ...]
    io: IOSpec
    expect_pinned: bool  # whether the program contains pinned regions (tail or GroupNorm)
    default_region: str  # region of ops traced outside every module (capture._region_of)


def _jobs(
    model: torch.nn.Module, image: torch.Tensor, disparity_factor: torch.Tensor, split: str, precision: str
) -> list[_Job]:
    resolution = int(image.shape[-1])
    grid_io = grid_io_spec(resolution)
    if split == "none":
        return [_Job("model", GridOutputs(model), (image, disparity_factor), grid_io, True, REGION_TAIL)]
    shapes = piece_shapes(model, image, disparity_factor)
    known = {t.name: t for t in (*grid_io.inputs, *grid_io.outputs)}
    # Tensors between pieces are fp16 activations in an fp16 program anyway: fp16 I/O loses nothing there.
    between = "float16" if precision == "fp16" else "float32"

    def spec(name: str) -> TensorSpec:
        return known.get(name) or TensorSpec(name, shapes[name], between, "activation passed between pieces")

    jobs = []
    for piece in PIECES:
        io = IOSpec(tuple(spec(n) for n in piece.inputs), tuple(spec(n) for n in piece.outputs))
        examples = tuple(
            image if n == "image" else disparity_factor if n == "disparity_factor" else torch.zeros(shapes[n])
            for n in piece.inputs
        )
        pinned_inside = piece.name == "gaussians"  # the tail and every GroupNorm live in the last piece
        jobs.append(_Job(piece.name, piece.module(model), examples, io, pinned_inside, piece.default_region))
    return jobs


def compress_program(mlmodel: Any, plan: WeightPlan, io: IOSpec, precision: str) -> tuple[Any, dict[str, Any]]:
    """Compress a converted, checked MLModel's weights; check the result again. Returns (MLModel, report)."""
    with heartbeat(f"compress weights ({plan.mode})"):
        try:
            compressed, seconds = compress_mlmodel(mlmodel, plan)
        except Exception as error:
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise ConversionError(f"weight compression ({plan.mode}) failed: {type(error).__name__}: {first}",
                                  fix=TOOLCHAIN_OUTPUT_HINT) from error  # fmt: skip
    report = program_report(compressed._mil_program, plan)
    summary = summarize_mil(compressed._mil_program)
    summary.has_regions = False  # coremltools rebuilt the program from its proto: the region tags are gone
    checks = check_program(summary, io, precision, frozenset())
    problems = checks.pop("problems")
    if report["compressed_tensors"] == 0:
        problems.append(f"--weights {plan.mode} compressed no weight")
    if problems:
        raise ConversionError("the compressed MIL program fails its checks: " + "; ".join(problems))
    report.update(compress_seconds=round(seconds, 2), mil_checks=checks)
    echo(f"    compressed {report['compressed_tensors']} weights ({plan.mode}: {report['compressed_op_types']}) in "
         f"{seconds:.1f} s, RSS {rss_gb():.1f} GB; MIL checks passed again")  # fmt: skip
    return compressed, report


def _convert_job(
    job: _Job, out_dir: Path, *, precision: str, deployment_target: str, compute_units: str,
    pinned: frozenset[str], metadata: dict[str, str], description: str, weights: WeightPlan | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Export, convert, check, (compress, check,) tag and save one package; returns its details."""
    start = time.perf_counter()
    with heartbeat(f"torch.export {job.name}"):
        program, graph_info = export_module(job.module, job.examples, job.default_region)
    export_s = time.perf_counter() - start
    echo(f"    torch.export {job.name} {export_s:.1f} s ({graph_info['region_op_counts']} ops by region)")
    mlmodel, report = convert_program(
        program, job.io, precision=precision, deployment_target=deployment_target, compute_units=compute_units,
        pinned=pinned, expect_pinned=job.expect_pinned,
    )  # fmt: skip
    # The exported program holds its own graph and weight references; drop it before writing the package.
    del program
    gc.collect()
    compression = None
    if weights is not None:
        compressed, compression = compress_program(mlmodel, weights, job.io, precision)
        del mlmodel
        gc.collect()
        mlmodel = compressed
    set_metadata(mlmodel, job.io, metadata, description)
    file = f"{job.name}.mlpackage"
    start = time.perf_counter()
    with heartbeat(f"save {file}"):
        mlmodel.save(str(out_dir / file))
    save_s = time.perf_counter() - start
    del mlmodel
    gc.collect()
    weights_bytes = package_weight_bytes(out_dir / file)
    echo(f"    saved {file} ({weights_bytes / 1e9:.3f} GB of weights) in {save_s:.1f} s, RSS {rss_gb():.1f} GB")
    details = {
        "file": file,
        "io": job.io.to_dict(),
        "graph": graph_info,
        "mil_checks": {k: v for k, v in report.items() if k != "problems"},
        "export_seconds": round(export_s, 2),
        "save_seconds": round(save_s, 2),
        "weights_bytes": weights_bytes,
    }
    if compression is not None:
        details["weight_compression"] = compression
    return details


def convert_model(
    model: torch.nn.Module,  # eval-mode predictor
    image: torch.Tensor,  # [1, 3, R, R] example
    disparity_factor: torch.Tensor,  # [1] example
    out_dir: Path,
    *,
    precision: str = "fp32",
    deployment_target: str = "iOS17",
    compute_units: str = "all",
    split: str = "none",
    metadata: dict[str, str] | None = None,
    weights: str = "none",
) -> CoreMLExport:
    """Convert the predictor into ``out_dir``: model.mlpackage, or one package per piece. ConversionError on failure.

    ``weights``: none | int8 | palettize4 | palettize6 weight compression (weights.py), on every package.
    """
    import coremltools as ct

    if split not in SPLITS:
        raise UserInputError(f"unknown split '{split}'", fix=f"use --split {'|'.join(SPLITS)}")
    if deployment_target not in DEPLOYMENT_TARGETS:
        raise UserInputError(
            f"unknown deployment target '{deployment_target}'", fix=f"use {'|'.join(DEPLOYMENT_TARGETS)}"
        )
    if compute_units not in COMPUTE_UNIT_NAMES:
        raise UserInputError(f"unknown compute units '{compute_units}'", fix=f"use {'|'.join(COMPUTE_UNIT_NAMES)}")
    if weights not in WEIGHT_MODES:
        raise UserInputError(f"unknown weights mode '{weights}'", fix=f"use --weights {'|'.join(WEIGHT_MODES)}")
    compression = make_weight_plan(weights)
    pinned = DEFAULT_PINNED if precision == "fp16" else frozenset()
    resolution = int(image.shape[-1])
    plan = "fp32 everywhere" if precision == "fp32" else "fp16 except " + ", ".join(sorted(pinned)) + " (fp32)"
    info = {
        "sharp_export.precision_plan": plan,
        "sharp_export.compute_units": compute_units,
        "sharp_export.deployment_target": deployment_target,
        "sharp_export.weights": weights,
        "sharp_export.outputs": "rank-4 grids [1, C*2, h, w]; flatten on the host: n = layer*h*w + row*w + col",
    }
    pieces = []
    jobs = _jobs(model, image, disparity_factor, split, precision)
    for index, job in enumerate(jobs):
        piece = "" if split == "none" else f" (piece {index + 1}/{len(jobs)}: {job.name}; chain the pieces in order)"
        description = (
            f"SHARP (one image -> 3D Gaussians), {precision}, {resolution}x{resolution} input: raw Gaussian grids "
            f"in NDC x z; unproject with the original intrinsics.{piece}"
        )
        meta = {**(metadata or {}), **info, "sharp_export.split": split, "sharp_export.piece": job.name}
        pieces.append(
            _convert_job(job, Path(out_dir), precision=precision, deployment_target=deployment_target,
                         compute_units=compute_units, pinned=pinned, metadata=meta, description=description,
                         weights=compression)
        )  # fmt: skip
    largest = max(p["weights_bytes"] for p in pieces)
    ios = deployment_target.startswith("iOS")
    if ios and largest > IOS_WEIGHT_LIMIT_BYTES:
        echo(f"    note: {largest / 1e9:.2f} GB of weights in one package exceed iOS's ~1 GB limit (macOS loads it);"
             " --split components keeps each piece under it")  # fmt: skip
    files = [p["file"] for p in pieces]
    details = {
        "exporter": f"torch.export (non-strict) + coremltools {ct.__version__} mlprogram, torch {torch.__version__}",
        "coremltools": ct.__version__,
        "deployment_target": deployment_target,
        "compute_units": compute_units,
        "split": split,
        "precision_plan": {"pinned_fp32": sorted(pinned), "note": PRECISION_PLAN_NOTE if pinned else "fp32"},
        "ios_weight_limit_exceeded": bool(ios and largest > IOS_WEIGHT_LIMIT_BYTES),
        "host_postprocess": "flatten grids [1, C*2, h, w] -> [1, N, C] (coreml_runner.grids_to_gaussians)",
        "files": files,
        "weights": _weights_summary(compression, pieces),
    }
    if split == "none":
        details.update({k: v for k, v in pieces[0].items() if k not in ("file", "io")})
    else:
        details["pieces"] = pieces
    return CoreMLExport(files, grid_io_spec(resolution), details)


def _weights_summary(plan: WeightPlan | None, pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """manifest["conversion"]["weights"]: mode, config, compressed tensors and weight bytes of every package."""
    sizes = {p["file"]: p["weights_bytes"] for p in pieces}
    if plan is None:
        return {"mode": "none", "weights_bytes": sizes}
    reports = [p["weight_compression"] for p in pieces]
    hashes = [h for r in reports for h in r.pop("tensor_hashes")]  # only the digest goes to the manifest
    kinds: dict[str, int] = {}
    for report in reports:
        for kind, count in report["compressed_op_types"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    return {
        **plan.to_dict(),
        "compressed_tensors": sum(r["compressed_tensors"] for r in reports),
        "compressed_tensors_per_package": {p["file"]: p["weight_compression"]["compressed_tensors"] for p in pieces},
        "compressed_op_types": kinds,
        "compressed_elements": sum(r["compressed_elements"] for r in reports),
        # Digest of every compressed weight as the package expands it; the torch proxy reports the same digest
        # when it ran with exactly these values (weights.tensor_hash).
        "digest": combine_hashes(hashes),
        "weights_bytes": sizes,
    }


def convert_coreml(
    loaded: Any,  # sharp_export.reference.checkpoint.LoadedModel
    out_dir: str | Path,
    precision: str = "fp32",
    deployment_target: str = "iOS17",
    compute_units: str = "all",
    split: str = "none",
    weights: str = "none",
) -> CoreMLExport:
    """Library entry point without the artifact pipeline: write the package(s) into ``out_dir``."""

    if missing_packages({"coremltools": "coremltools"}) is not None:
        raise MissingDependencyError("coremltools", "coreml", "the Core ML export")
    model = loaded.model.eval()
    example = example_inputs(int(model.resolution), 1)
    metadata = {
        "sharp_export.tool_version": __version__,
        "sharp_export.preset": loaded.preset,
        "sharp_export.precision": precision,
        "sharp_export.checkpoint_sha256": loaded.checkpoint_sha256 or "",
        "sharp_export.source": loaded.source_label,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return convert_model(
        model, example.image, example.disparity_factor, out, precision=precision, deployment_target=deployment_target,
        compute_units=compute_units, split=split, metadata=metadata, weights=weights,
    )  # fmt: skip
