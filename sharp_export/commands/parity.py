"""`sharp-export parity`: an artifact against the reference (or a golden bundle); exit code 3 on failure.

torch, the reference model and the runtimes are imported inside the command: the CLI imports this module for
`sharp-export --help`, which must stay instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sharp_export.artifact import announce_stale, check_output_path
from sharp_export.commands.base import OneLineCommand
from sharp_export.commands.options import max_pixels_option, model_options
from sharp_export.errors import UserInputError
from sharp_export.outputs import FORCE_HINT, ensure_folder
from sharp_export.progress import echo
from sharp_export.registry import all_devices, resolve_artifact

# The default report lives in the artifact's own folder (not listed in its manifest), so checking several
# artifacts from one working folder, or the same one twice in CI, never collides; each run replaces it.
DEFAULT_REPORT = "parity-check.json"


def check_report_path(report: Path, force: bool) -> None:
    """The --report file can be written: its folder exists and takes files, nothing is in the way."""

    if report.is_dir():
        raise UserInputError("--report is a folder; it names the JSON file to write", path=report)
    if report.exists() and not force:
        raise UserInputError("already exists; nothing was overwritten", path=report, fix=FORCE_HINT)
    folder = report.parent if str(report.parent) else Path(".")
    if not folder.is_dir():
        raise UserInputError("the --report folder does not exist", path=folder, fix="create it, or pick another path")
    ensure_folder(folder, "--report")
    announce_stale(folder, report.name)


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
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help=f"JSON report file. Default: ARTIFACT/{DEFAULT_REPORT}, replaced by each run (no --force needed).",
)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for parity.json, one PNG per image and pose (reference | artifact | difference) and index.html.",
)
@click.option("--device", type=click.Choice(list(all_devices())), default="cpu", show_default=True)
@max_pixels_option
@click.option(
    "--force", is_flag=True, help="Replace an existing --report file, --report-dir folder or --write-golden bundle."
)
@click.pass_context
def command(
    ctx: click.Context,
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
    report: Path | None,
    report_dir: Path | None,
    device: str,
    max_pixels: int,
    force: bool,
) -> None:
    """Compare ARTIFACT with the reference model: per-attribute Gaussian errors and rendered views.

    Prints one line per attribute and per view and writes the JSON report; exits 3 when anything fails.
    With --write-golden DIR it saves inputs, reference Gaussians and renders instead (no ARTIFACT), and
    `parity ARTIFACT --golden DIR` checks an artifact against such a bundle without PyTorch weights.
    """
    from sharp_export.parity import harness
    from sharp_export.parity.lpips import load_lpips, lpips_status
    from sharp_export.parity.report import format_table, raise_if_failed, to_json
    from sharp_export.parity.views import DEFAULT_POSES
    from sharp_export.reference.ply import write_atomic
    from sharp_export.reference.preprocess import list_images

    pose_names = DEFAULT_POSES[:poses]
    paths = list_images(list(images)) if images else harness.default_image_paths()
    if write_golden is not None:
        if artifact is not None or golden is not None:
            raise UserInputError("--write-golden takes no ARTIFACT and no --golden")
        check_output_path(write_golden.absolute(), force, harness.GOLDEN)
        written = harness.write_reference_golden(
            write_golden, preset, checkpoint, seed, paths, pose_names, max_pixels=max_pixels, force=force
        )
        click.echo(str(written))
        return
    if artifact is None:
        raise UserInputError("no ARTIFACT given", fix="sharp-export parity ARTIFACT_DIR (or --write-golden DIR)")
    resolved = resolve_artifact(artifact)  # the manifest, read once, and its target row
    manifest = resolved.manifest
    explicit_preset = ctx.get_parameter_source("preset") == click.core.ParameterSource.COMMANDLINE
    if explicit_preset and manifest.source.get("preset") != preset:
        raise UserInputError(
            f"the artifact is preset '{manifest.source.get('preset')}', not '{preset}'",
            path=artifact,
            fix="drop --preset; parity uses the artifact's own preset",
        )
    replace_default = report is None and report_dir is None
    if replace_default:
        report = artifact / DEFAULT_REPORT
    if report is not None:
        check_report_path(report, force or replace_default)
    collector = None
    if report_dir is not None:
        from sharp_export.parity.pictures import REPORT_FOLDER, PictureCollector
        from sharp_export.plots import require_plot

        require_plot("parity --report-dir")
        check_output_path(report_dir.absolute(), force, REPORT_FOLDER)
        collector = PictureCollector()
    tols = resolved.tolerances(tolerances)
    lpips_model = load_lpips(lpips_weights) if poses else None
    if poses and lpips_model is None:
        echo(lpips_status(lpips_weights).message() + "; the view gate uses PSNR and SSIM only")
    result = harness.check_artifact(
        resolved, tolerances=tols, poses=pose_names, lpips_model=lpips_model, device=device, golden=golden,
        image_paths=paths, preset=preset, checkpoint=checkpoint, seed=seed, max_pixels=max_pixels,
        on_views=collector,
    )  # fmt: skip
    click.echo(format_table(result))
    verdict = "PASS" if result.passed else "FAIL"
    if report is not None:
        write_atomic(
            report, [(json.dumps(to_json(result), indent=2) + "\n").encode()], replace=force or replace_default
        )
        echo(f"report: {report} ({verdict})")
    if collector is not None:
        from sharp_export.parity.pictures import write_report_folder

        write_report_folder(result, collector.pictures, report_dir, force)
        echo(f"report: {report_dir / 'index.html'} ({verdict}; {len(collector.pictures)} pictures)")
    raise_if_failed(result)
