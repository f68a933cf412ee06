"""The parity harness: an artifact against the reference model (or a golden bundle), on real photos.

For each image: the same preprocessing feeds the artifact's runner and the reference; raw Gaussians are
compared attribute by attribute; both scenes are unprojected and rendered at fixed poses of the reference's
rotate_forward trajectory and compared with PSNR / SSIM / LPIPS. A golden bundle stores the inputs, the
reference Gaussians and the reference renders, so a Mac can check a Core ML artifact without weights.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sharp_export import __version__
from sharp_export.artifact import TOOL_NAME, OutputKind, atomic_directory
from sharp_export.errors import UserInputError
from sharp_export.parity.compare import compare_gaussians
from sharp_export.parity.report import ParityReport
from sharp_export.parity.views import DEFAULT_POSES, compare_renders, render_views
from sharp_export.pipeline import load_photo, require_finite
from sharp_export.progress import echo
from sharp_export.reference.checkpoint import build_model
from sharp_export.reference.gaussians import (
    GAUSSIAN_FIELDS,
    Gaussians3D,
    SceneMeta,
    find_non_finite,
    unproject_gaussians,
)
from sharp_export.reference.preprocess import DEFAULT_MAX_PIXELS, prepare_input
from sharp_export.reference.render import RenderOutput
from sharp_export.runtime.torch_runner import TorchRunner
from sharp_export.samples import sample_image_path

if TYPE_CHECKING:
    from sharp_export.registry import ResolvedArtifact

GOLDEN_INDEX = "golden.json"
GOLDEN_ARRAYS = "golden.npz"
GOLDEN_SCHEMA = 1
GOLDEN_KEYS = ("resolution", "poses", "images", "source")
DEFAULT_SAMPLES = ("coffee", "chelsea")  # real photos from scikit-image; two keep a full-size run near 10 min


def _golden_files(index: Any) -> set[str] | None:
    """The files a golden index accounts for (itself and its arrays), or None when it is not our index."""
    if not isinstance(index, dict) or index.get("schema_version") != GOLDEN_SCHEMA:
        return None
    tool = index.get("tool", {"name": TOOL_NAME})  # bundles written before the index named its tool lack the key
    if not isinstance(tool, dict) or tool.get("name") != TOOL_NAME or any(k not in index for k in GOLDEN_KEYS):
        return None
    return {GOLDEN_INDEX, GOLDEN_ARRAYS}


GOLDEN = OutputKind("golden bundle", GOLDEN_INDEX, _golden_files)

# (image [1, 3, R, R], disparity_factor [1]) -> raw Gaussians
InferFn = Callable[[torch.Tensor, torch.Tensor], Gaussians3D]
# (image name, pose, reference render, candidate render): sees every rendered view pair (parity --report-dir)
ViewSink = Callable[[str, str, RenderOutput, RenderOutput], None]


@dataclasses.dataclass
class ParityInput:
    name: str  # image file stem, used to label every line of the report
    image: torch.Tensor  # [1, 3, R, R] float32 in [0, 1]
    disparity_factor: torch.Tensor  # [1]
    meta: SceneMeta
    source: str = ""  # the image file (or bundle entry) named in errors; the name when empty

    def checked(self, gaussians: Gaussians3D, producer: str, artifact: bool) -> Gaussians3D:
        """``gaussians`` (raw outputs for this input) once they are known to be finite (``require_finite``)."""
        require_finite(_as_torch(gaussians), self.source or self.name, producer=producer, artifact=artifact)
        return gaussians


def default_image_paths() -> list[Path]:

    return [sample_image_path(name) for name in DEFAULT_SAMPLES]


def load_inputs(paths: Sequence[Path], resolution: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[ParityInput]:
    inputs = []
    for path in paths:
        image = load_photo(path, max_pixels)
        tensor, factor = prepare_input(image, resolution)
        meta = SceneMeta(image.f_px, image.width, image.height)
        inputs.append(ParityInput(Path(path).stem, tensor, factor, meta, source=str(path)))
    return inputs


def _as_torch(gaussians: Any) -> Gaussians3D:
    return Gaussians3D(*(torch.as_tensor(np.asarray(t), dtype=torch.float32) for t in gaussians))


def _label(results: list, name: str, field: str) -> list:
    return [dataclasses.replace(r, **{field: f"{name}:{getattr(r, field)}"}) for r in results]


def compare_scene(
    item: ParityInput,
    reference: Gaussians3D,  # raw reference outputs [1, N, C]
    candidate: Gaussians3D,  # raw candidate outputs [1, N, C]
    tolerances: dict,
    poses: Sequence[str],
    lpips_model: Any,
    resolution: int,
    reference_views: list | None = None,  # precomputed (golden bundle) renders of the reference
    on_views: ViewSink | None = None,
) -> tuple[list, list]:
    """Attribute lines and view lines for one image, labelled with its name."""
    attributes = compare_gaussians(reference, candidate, tolerances, space="raw")
    views: list = []
    if poses:
        ref_scene = unproject_gaussians(_as_torch(reference), item.meta, resolution)
        cand_scene = unproject_gaussians(_as_torch(candidate), item.meta, resolution)
        if reference_views is None:
            reference_views = render_views(ref_scene, item.meta, poses)
        candidate_views = render_views(cand_scene, item.meta, poses, trajectory_from=ref_scene)
        views = compare_renders(reference_views, candidate_views, lpips_model, tolerances)
        if on_views is not None:
            for (pose, ref_render), (_, cand_render) in zip(reference_views, candidate_views, strict=True):
                on_views(item.name, pose, ref_render, cand_render)
    return _label(attributes, item.name, "attribute"), _label(views, item.name, "view")


def run_parity(
    candidate: InferFn,
    reference: InferFn,
    inputs: Sequence[ParityInput],
    tolerances: dict,
    poses: Sequence[str] = DEFAULT_POSES,
    lpips_model: Any = None,
    resolution: int = 1536,
    meta: dict | None = None,
    on_views: ViewSink | None = None,
) -> ParityReport:
    report = ParityReport(meta=dict(meta or {}))
    for index, item in enumerate(inputs, start=1):
        echo(f"[{index}/{len(inputs)}] {item.name}: artifact, reference, {len(poses)} views ...")
        cand = item.checked(candidate(item.image, item.disparity_factor), "the artifact", artifact=True)
        ref = item.checked(reference(item.image, item.disparity_factor), "the reference model", artifact=False)
        attributes, views = compare_scene(
            item, ref, cand, tolerances, poses, lpips_model, resolution, on_views=on_views
        )
        report.attributes += attributes
        report.views += views
    return report


def run_parity_shared(
    candidates: Mapping[str, InferFn],
    reference: InferFn,
    inputs: Sequence[ParityInput],
    tolerances: Mapping[str, dict],
    poses: Sequence[str] = DEFAULT_POSES,
    lpips_model: Any = None,
    resolution: int = 1536,
    metas: Mapping[str, dict] | None = None,
    prefix: str = "",
) -> dict[str, ParityReport]:
    """Several candidates (name -> infer) against one reference: one report per name, as ``run_parity`` makes.

    The reference runs, and renders its views, once per image; every candidate is compared with those. A
    candidate with non-finite outputs fails its report (``run_parity`` raises instead: it has one candidate).
    ``tolerances`` and ``metas`` are per name; ``prefix`` starts each progress line.
    """
    reports = {name: ParityReport(meta=dict((metas or {}).get(name, {}))) for name in candidates}
    for index, item in enumerate(inputs, start=1):
        echo(f"{prefix}[{index}/{len(inputs)}] {item.name}: reference + {len(candidates)} artifact(s) ...")
        ref = item.checked(reference(item.image, item.disparity_factor), "the reference model", artifact=False)
        ref_views = None
        if poses:
            ref_views = render_views(unproject_gaussians(_as_torch(ref), item.meta, resolution), item.meta, poses)
        for name, candidate in candidates.items():
            cand = candidate(item.image, item.disparity_factor)
            # Side by side, one artifact's NaN must not stop the others: its attribute rows fail (compare_gaussians
            # counts NaN/Inf values) and its views, which would render garbage, are left out.
            finite = find_non_finite(_as_torch(cand)) is None
            attributes, views = compare_scene(
                item, ref, cand, tolerances[name], poses if finite else (), lpips_model, resolution,
                reference_views=ref_views if finite else None,
            )  # fmt: skip
            reports[name].attributes += attributes
            reports[name].views += views
    return reports


def write_golden(
    directory: Path,
    reference: InferFn,
    inputs: Sequence[ParityInput],
    poses: Sequence[str],
    resolution: int,
    source: dict,
    force: bool = False,
) -> Path:
    """Save inputs, reference Gaussians and reference renders (atomically) for checks without weights."""

    arrays: dict[str, np.ndarray] = {}
    images = []
    for item in inputs:
        echo(f"golden: {item.name} ...")
        raw = item.checked(reference(item.image, item.disparity_factor), "the reference model", artifact=False)
        arrays[f"{item.name}/image"] = item.image.numpy()
        arrays[f"{item.name}/disparity_factor"] = item.disparity_factor.numpy()
        for field, value in zip(GAUSSIAN_FIELDS, raw, strict=True):
            arrays[f"{item.name}/{field}"] = np.asarray(value, dtype=np.float32)
        scene = unproject_gaussians(_as_torch(raw), item.meta, resolution)
        for pose, render in render_views(scene, item.meta, poses):
            for part in ("color", "depth", "alpha"):
                arrays[f"{item.name}/render/{pose}/{part}"] = getattr(render, part).numpy()
        images.append({"name": item.name, **dataclasses.asdict(item.meta)})
    index = {
        "schema_version": GOLDEN_SCHEMA,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "resolution": resolution,
        "poses": list(poses),
        "images": images,
        "source": source,
    }
    with atomic_directory(directory.absolute(), force=force, kind=GOLDEN) as work:
        np.savez(work / GOLDEN_ARRAYS, **arrays)
        (work / GOLDEN_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return directory


def read_golden(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    index_path = directory / GOLDEN_INDEX
    if not index_path.is_file():
        raise UserInputError(
            f"not a golden bundle (no {GOLDEN_INDEX})", path=directory, fix="make one with `parity --write-golden DIR`"
        )
    fix = "write the bundle again with `parity --write-golden DIR`"
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"is not valid JSON ({error})", path=index_path, fix=fix) from None
    if not isinstance(index, dict) or index.get("schema_version") != GOLDEN_SCHEMA:
        found = index.get("schema_version") if isinstance(index, dict) else None
        raise UserInputError(f"golden bundle schema {found}, expected {GOLDEN_SCHEMA}", path=index_path, fix=fix)
    missing = [k for k in GOLDEN_KEYS if k not in index]
    if missing:
        raise UserInputError(f"golden index lacks {missing}", path=index_path, fix=fix)
    arrays_path = directory / GOLDEN_ARRAYS
    if not arrays_path.is_file():
        raise UserInputError(f"golden bundle has no {GOLDEN_ARRAYS}", path=directory, fix=fix)
    try:
        with np.load(arrays_path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserInputError(f"cannot read the golden arrays ({error})", path=arrays_path, fix=fix) from None
    expected = [
        f"{image.get('name')}/{field}"
        for image in index["images"]
        for field in ("image", "disparity_factor", *GAUSSIAN_FIELDS)
    ] + [
        f"{image.get('name')}/render/{pose}/{part}"
        for image in index["images"]
        for pose in index["poses"]
        for part in ("color", "depth", "alpha")
    ]
    absent = [key for key in expected if key not in arrays]
    if absent:
        raise UserInputError(
            f"golden arrays lack {len(absent)} entries (first: {absent[0]})", path=arrays_path, fix=fix
        )
    return index, arrays


def check_golden(
    directory: Path,
    candidate: InferFn,
    tolerances: dict,
    lpips_model: Any = None,
    meta: dict | None = None,
    max_poses: int | None = None,
    artifact_input: tuple[int | str | None, str | None] | None = None,  # (resolution, preset) of the artifact
    on_views: ViewSink | None = None,
) -> ParityReport:
    """An artifact against a golden bundle: no reference weights or reference model needed."""

    index, arrays = read_golden(directory)
    if artifact_input is not None and artifact_input[0] != index["resolution"]:
        preset = index["source"].get("preset") if isinstance(index["source"], dict) else None
        raise UserInputError(
            f"the golden bundle holds {index['resolution']} px inputs (preset '{preset}'), the artifact takes "
            f"{artifact_input[0]} px (preset '{artifact_input[1]}')",
            path=directory,
            fix="use a bundle written with the artifact's preset",
        )
    expected_shape = (1, 3, index["resolution"], index["resolution"])
    for image in index["images"]:
        found = tuple(arrays[f"{image['name']}/image"].shape)
        if found != expected_shape:
            raise UserInputError(
                f"golden image '{image['name']}' has shape {found}, its index says {expected_shape}",
                path=directory,
                fix="write the bundle again with `parity --write-golden DIR`",
            )
    poses = index["poses"][:max_poses] if max_poses is not None else index["poses"]
    report = ParityReport(meta={**(meta or {}), "golden": str(directory), "golden_source": index["source"]})
    for number, image in enumerate(index["images"], start=1):
        name = image["name"]
        echo(f"[{number}/{len(index['images'])}] {name}: artifact vs golden, {len(poses)} views ...")
        item = ParityInput(
            name,
            torch.from_numpy(arrays[f"{name}/image"]),
            torch.from_numpy(arrays[f"{name}/disparity_factor"]),
            SceneMeta(image["f_px"], image["width"], image["height"]),
            source=f"{directory / GOLDEN_ARRAYS} ({name})",
        )
        reference = Gaussians3D(*(torch.from_numpy(arrays[f"{name}/{f}"]) for f in GAUSSIAN_FIELDS))
        item.checked(reference, "the golden bundle's reference", artifact=False)
        views = [
            (
                pose,
                RenderOutput(
                    *(torch.from_numpy(arrays[f"{name}/render/{pose}/{p}"]) for p in ("color", "depth", "alpha"))
                ),
            )
            for pose in poses
        ]
        cand = item.checked(candidate(item.image, item.disparity_factor), "the artifact", artifact=True)
        attributes, view_results = compare_scene(
            item, reference, cand, tolerances, poses, lpips_model, index["resolution"], reference_views=views,
            on_views=on_views,
        )  # fmt: skip
        report.attributes += attributes
        report.views += view_results
    return report


# ---- what `sharp-export parity` does, as functions ----------------------------------------------------------


def reference_weights(manifest: Any, checkpoint: str | None, seed: int | None) -> tuple[str | None, int | None]:
    """-c/--seed when given, else what the artifact was exported from (its checkpoint path or seed)."""
    source = manifest.source if manifest is not None else {}
    if seed is not None and source.get("checkpoint_sha256"):
        raise UserInputError(
            f"the artifact was exported from a checkpoint (sha256 {source['checkpoint_sha256'][:12]}), "
            f"so --seed {seed} would compare it with other weights",
            fix="drop --seed (parity then uses the artifact's checkpoint), or pass that checkpoint with -c",
        )
    if seed is not None and source.get("seed") is not None and int(source["seed"]) != seed:
        raise UserInputError(
            f"the artifact was exported from seed {source['seed']}, so --seed {seed} would compare it with "
            "other weights",
            fix=f"drop --seed, or pass --seed {source['seed']}",
        )
    if checkpoint is not None or seed is not None:
        return checkpoint, seed
    if source.get("seed") is not None:
        return None, int(source["seed"])
    path = source.get("checkpoint_path")
    if path and Path(path).is_file():
        return path, None
    raise UserInputError(
        "no reference weights: the artifact's checkpoint is not at its recorded path",
        fix="pass -c CHECKPOINT (the one the artifact was exported from) or use --golden DIR",
    )


def write_reference_golden(
    directory: Path,
    preset: str,
    checkpoint: str | None,
    seed: int | None,
    image_paths: Sequence[Path],
    poses: Sequence[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    force: bool = False,
) -> Path:
    """Build the reference model and write a golden bundle of it on ``image_paths``."""

    loaded = build_model(preset, checkpoint, seed)
    resolution = int(loaded.model.resolution)
    inputs = load_inputs(image_paths, resolution, max_pixels)
    source = {"preset": preset, "label": loaded.source_label, "checkpoint_sha256": loaded.checkpoint_sha256}
    with TorchRunner(loaded) as reference:
        return write_golden(directory, reference.infer, inputs, poses, resolution, source, force=force)


def check_artifact(
    artifact: ResolvedArtifact,
    *,
    tolerances: dict,
    poses: Sequence[str],
    lpips_model: Any,
    device: str = "cpu",
    golden: Path | None = None,
    image_paths: Sequence[Path] = (),
    preset: str = "sharp",
    checkpoint: str | None = None,
    seed: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_views: ViewSink | None = None,
) -> ParityReport:
    """An artifact (its manifest read once by ``registry.resolve_artifact``) against a golden bundle (``golden``),
    else against the reference model of its own preset (``preset`` when its manifest names none) on ``image_paths``.

    The reference weights are -c/--seed when given, else the artifact's own source; a checkpoint whose
    sha256 differs from the artifact's is refused.
    """

    manifest = artifact.manifest
    meta: dict[str, Any] = {
        "artifact": str(artifact.path),
        "target": manifest.target,
        "precision": manifest.precision,
        "tolerance_profile": artifact.tolerance_profile,
    }
    with artifact.runner(device) as runner:
        if golden is not None:
            wanted = (artifact.resolution, manifest.source.get("preset"))
            return check_golden(
                golden, runner.infer, tolerances, lpips_model, meta, len(poses), wanted, on_views=on_views
            )
        loaded = build_model(manifest.source.get("preset", preset), *reference_weights(manifest, checkpoint, seed))
        if int(loaded.model.resolution) != artifact.resolution:
            raise UserInputError(
                f"the artifact takes {artifact.resolution} px inputs, but the reference model of preset "
                f"'{loaded.preset}' takes {int(loaded.model.resolution)} px: its manifest is inconsistent",
                path=artifact.path,
                fix="export the artifact again",
            )
        expected = manifest.source.get("checkpoint_sha256")
        if expected and loaded.checkpoint_sha256 != expected:
            raise UserInputError(
                f"reference checkpoint sha256 {loaded.checkpoint_sha256[:12]} differs from the artifact's "
                f"{expected[:12]}",
                path=loaded.checkpoint_path,
                fix="pass the checkpoint the artifact was exported from",
            )
        meta["reference"] = loaded.source_label
        resolution = int(loaded.model.resolution)
        inputs = load_inputs(image_paths or default_image_paths(), resolution, max_pixels)
        with TorchRunner(loaded) as reference:
            return run_parity(
                runner.infer, reference.infer, inputs, tolerances, poses, lpips_model, resolution, meta, on_views
            )
