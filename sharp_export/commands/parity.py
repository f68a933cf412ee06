"""`sharp-export parity`: an artifact against the reference (or a golden bundle); exit code 3 on failure."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sharp_export.commands.export import OneLineCommand, report_errors
from sharp_export.commands.options import model_options
from sharp_export.progress import echo


def _reference_weights(manifest, checkpoint: str | None, seed: int | None) -> tuple[str | None, int | None]:
    """-c/--seed when given, else what the artifact was exported from (checked against its sha256)."""
    from sharp_export.errors import UserInputError

    if checkpoint is not None or seed is not None:
        return checkpoint, seed
    source = manifest.source if manifest is not None else {}
    if source.get("seed") is not None:
        return None, int(source["seed"])
    path = source.get("checkpoint_path")
    if path and Path(path).is_file():
        return path, None
    raise UserInputError(
        "no reference weights: the artifact's checkpoint is not at its recorded path",
        fix="pass -c CHECKPOINT (the one the artifact was exported from) or use --golden DIR",
    )


@click.command("parity", cls=OneLineCommand)
@click.argument("artifact", required=False, type=click.Path(path_type=Path))
@model_options
@click.option(
    "--images", multiple=True, type=click.Path(path_type=Path), help="Images or folders (default: sample photos)."
)
@click.option("--poses", type=click.IntRange(0, 4), default=4, show_default=True, help="Rendered views per image.")
@click.option("--tolerances", type=click.Path(path_type=Path), default=None, help="JSON/TOML overrides per metric.")
@click.option("--lpips-weights", type=click.Path(path_type=Path), default=None, help="Folder with LPIPS weights.")
@click.option("--golden", type=click.Path(path_type=Path), default=None, help="Check ARTIFACT against this bundle.")
@click.option("--write-golden", type=click.Path(path_type=Path), default=None, help="Write a golden bundle and exit.")
@click.option("--report", type=click.Path(path_type=Path), default=Path("parity.json"), show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@report_errors
def command(
    artifact: Path | None,
    preset: str,
    checkpoint: str | None,
    seed: int | None,
    images: tuple[Path, ...],
    poses: int,
    tolerances: Path | None,
    lpips_weights: Path | None,
    golden: Path | None,
    write_golden: Path | None,
    report: Path,
    device: str,
) -> None:
    """Compare ARTIFACT with the reference model: per-attribute Gaussian errors and rendered views.

    Prints one line per attribute and per view and writes the JSON report; exits 3 when anything fails.
    With --write-golden DIR it saves inputs, reference Gaussians and renders instead (no ARTIFACT), and
    `parity ARTIFACT --golden DIR` checks an artifact against such a bundle without PyTorch weights.
    """
    import torch

    from sharp_export.artifact import read_manifest
    from sharp_export.errors import UserInputError
    from sharp_export.parity import harness
    from sharp_export.parity.lpips import load_lpips, lpips_status
    from sharp_export.parity.report import format_table, raise_if_failed, to_json
    from sharp_export.parity.tolerances import load_tolerances
    from sharp_export.parity.views import DEFAULT_POSES
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.reference.preprocess import list_images

    pose_names = DEFAULT_POSES[:poses]
    paths = list_images(list(images)) if images else harness.default_image_paths()

    def reference_infer(loaded):
        def infer(image, disparity_factor):
            with torch.no_grad():
                return loaded.model(image, disparity_factor)

        return infer

    if write_golden is not None:
        if artifact is not None or golden is not None:
            raise UserInputError("--write-golden takes no ARTIFACT and no --golden")
        loaded = build_model(preset, checkpoint, seed)
        inputs = harness.load_inputs(paths, loaded.model.resolution)
        source = {"preset": preset, "label": loaded.source_label, "checkpoint_sha256": loaded.checkpoint_sha256}
        harness.write_golden(write_golden, reference_infer(loaded), inputs, pose_names, loaded.model.resolution, source)
        click.echo(str(write_golden))
        return

    if artifact is None:
        raise UserInputError("no ARTIFACT given", fix="sharp-export parity ARTIFACT_DIR (or --write-golden DIR)")
    from sharp_export.runtime.base import open_runner

    manifest = read_manifest(artifact)
    tols = load_tolerances(manifest.target, manifest.precision, tolerances)
    lpips_model = load_lpips(lpips_weights) if poses else None
    if poses and lpips_model is None:
        echo(lpips_status(lpips_weights).message() + "; the view gate uses PSNR and SSIM only")
    meta = {"artifact": str(artifact), "target": manifest.target, "precision": manifest.precision}
    with open_runner(artifact, device) as runner:
        candidate = runner.infer
        if golden is not None:
            result = harness.check_golden(golden, candidate, tols, lpips_model, meta, max_poses=poses)
        else:
            weights = _reference_weights(manifest, checkpoint, seed)
            preset_name = manifest.source.get("preset", preset)
            loaded = build_model(preset_name, *weights)
            expected = manifest.source.get("checkpoint_sha256")
            if expected and loaded.checkpoint_sha256 != expected:
                raise UserInputError(
                    f"reference checkpoint sha256 {loaded.checkpoint_sha256[:12]} differs from the artifact's "
                    f"{expected[:12]}",
                    fix="pass the checkpoint the artifact was exported from",
                )
            meta["reference"] = loaded.source_label
            inputs = harness.load_inputs(paths, loaded.model.resolution)
            result = harness.run_parity(
                candidate, reference_infer(loaded), inputs, tols, pose_names, lpips_model, loaded.model.resolution, meta
            )
    click.echo(format_table(result))
    report.write_text(json.dumps(to_json(result), indent=2) + "\n")
    echo(f"report: {report} ({'PASS' if result.passed else 'FAIL'})")
    raise_if_failed(result)
