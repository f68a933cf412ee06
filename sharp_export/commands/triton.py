"""`sharp-export triton`: package an exported artifact as one model of a Triton Inference Server repository.

The work lives in ``sharp_export.triton``; this module parses the flags. It is imported at CLI
start, so it imports nothing heavy at module level (``sharp-export --help`` stays fast).
"""

from __future__ import annotations

from pathlib import Path

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.triton import write_triton_repository


@click.command("triton", cls=OneLineCommand)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "repo_dir",
    metavar="REPO",
    type=click.Path(path_type=Path),
    required=True,
    help="Triton model repository folder (created if missing; other models in it are left alone).",
)
@click.option(
    "--name",
    "model_name",
    default="sharp",
    show_default=True,
    help="Model name: its folder in the repository and the name clients call (letters, digits, _ - .).",
)
@click.option(
    "--max-batch",
    "max_batch",
    type=int,
    default=None,
    help="max_batch_size for Triton's dynamic batcher; only for --dynamic-batch artifacts, 1 up to the "
    "artifact's maximum (default: 8, or that maximum if lower). Fixed-batch artifacts get 0.",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Model instances on each GPU (or on the host with --kind cpu); each holds its own weights.",
)
@click.option(
    "--kind",
    type=click.Choice(["gpu", "cpu"]),
    default=None,
    help="Where the instances run: gpu (the default, and the only choice for a TensorRT plan) or cpu (ONNX only).",
)
@click.option("--force", is_flag=True, help="Replace a model folder that `sharp-export triton` wrote before.")
def command(
    artifact: Path,
    repo_dir: Path,
    model_name: str,
    max_batch: int | None,
    instances: int,
    kind: str | None,
    force: bool,
) -> None:
    """Package an onnx or tensorrt ARTIFACT as one model of a Triton Inference Server repository (-o REPO).

    Triton expects one folder per model: REPO/NAME/config.pbtxt and a numbered version folder,
    REPO/NAME/1/, holding model.plan (platform tensorrt_plan) or model.onnx and its model.onnx.data
    (platform onnxruntime_onnx). The artifact's manifest is copied beside the config as
    sharp_export_manifest.json. The config is checked against Triton's own schema before anything is
    written (needs pip install 'sharp-export[triton]'). Serve with: tritonserver --model-repository REPO

    A TensorRT plan is specific to the GPU model and the TensorRT version it was built with: the Triton
    server must use the same TensorRT as the build (pick the Triton container release that ships it, or
    build the plan inside that container). The version is in the manifest and in config.pbtxt's header.

    Prints the model folder on stdout.
    """

    model_dir = write_triton_repository(
        artifact,
        repo_dir,
        model_name=model_name,
        max_batch_size=max_batch,
        instances=instances,
        kind=kind,
        force=force,
    )
    click.echo(str(model_dir))  # stdout: just the model folder, for scripts
