"""A Triton Inference Server model repository entry for an exported artifact (not a target: it packages one).

Triton loads models from a repository folder laid out as::

    REPO/<name>/config.pbtxt                 what the server needs: platform, tensors, batching, instances
    REPO/<name>/1/model.plan                 a TensorRT plan (platform tensorrt_plan), or
    REPO/<name>/1/model.onnx [+ .data]       an ONNX model (platform onnxruntime_onnx), weights beside it
    REPO/<name>/sharp_export_manifest.json   the artifact's manifest, for provenance (Triton ignores it)

Choices made here, and why:

* The config is parsed with Triton's own schema (``tritonclient``'s ``model_config_pb2``) before anything is
  written, and the parsed message is compared with the manifest: a typo in this writer fails here, not when
  the server refuses to load the model on a GPU box.
* Batching: a ``--dynamic-batch`` artifact gets ``max_batch_size`` > 0, dims without the batch dimension and
  Triton's dynamic batcher. ``disparity_factor`` has shape ``[batch]``, so without its batch dimension it has
  no dims left; Triton needs non-empty dims, so clients send ``[batch, 1]`` and ``reshape: { shape: [ ] }``
  hands the model ``[batch]`` (Triton's documented pattern). A fixed-batch artifact gets ``max_batch_size: 0``
  and its full shapes, leading 1 included.
* A TensorRT plan only loads on the GPU model it was built for, under the same TensorRT version: the Triton
  server (its container release) must ship the TensorRT recorded in the manifest. The header comment of
  config.pbtxt repeats that version.
* The model folder is built beside its final place and renamed in (``artifact.atomic_directory``), so the
  repository never holds half a model; other models in the repository are never touched. A server polling
  the repository (``--model-control-mode=poll``) may still notice the short-lived ``<name>.tmp-*`` folder:
  write the repository while the server is stopped, or use the default or explicit control modes.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharp_export import __version__
from sharp_export.artifact import (
    MANIFEST_NAME,
    Manifest,
    OutputKind,
    TensorSpec,
    artifact_files,
    atomic_directory,
    check_file_sizes,
    read_manifest,
    replace_problem,
)
from sharp_export.converters.onnx.graph import MAX_DYNAMIC_BATCH
from sharp_export.errors import ConversionError, MissingDependencyError, UserInputError
from sharp_export.progress import echo

CONFIG_NAME = "config.pbtxt"
VERSION_DIR = "1"  # Triton serves the highest numeric version folder; one artifact is one version
MANIFEST_COPY = "sharp_export_manifest.json"  # also the marker --force checks: only our own folders are replaced
DEFAULT_MODEL_NAME = "sharp"
# Default ceiling for the dynamic batcher. SHARP is heavy (activations for one full-size image are GBs), so a
# large batch mostly buys memory pressure; measure with `sharp-export bench --batch ...` and raise --max-batch.
DEFAULT_MAX_BATCH = 8
# How long the batcher may hold a request to gather a batch. One SHARP forward takes tens to hundreds of ms on
# a GPU, so 2 ms of waiting is noise for latency but lets requests that arrive together run as one batch.
MAX_QUEUE_DELAY_US = 2000
KINDS = ("gpu", "cpu")
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
# A model name is a folder name and the name clients call: no separators, no leading dot (hidden) or dash.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ModelFormat:
    """How Triton serves an artifact's main file."""

    platform: str  # Triton's platform string
    filename: str  # default_model_filename: the file's name inside the version folder
    kinds: tuple[str, ...]  # instance kinds this platform can run on


PLAN_FORMAT = ModelFormat("tensorrt_plan", "model.plan", ("gpu",))
ONNX_FORMAT = ModelFormat("onnxruntime_onnx", "model.onnx", ("gpu", "cpu"))


def model_format(manifest: Manifest, artifact: Path | None = None) -> ModelFormat:
    """Triton's platform for the artifact: a TensorRT plan, or an ONNX file (onnx, or tensorrt --no-build)."""
    main = manifest.main_file
    if manifest.target == "tensorrt" and main.endswith(".plan"):
        return PLAN_FORMAT
    if manifest.target in ("onnx", "tensorrt") and main.endswith(".onnx"):
        return ONNX_FORMAT
    supported = "onnx artifacts, and tensorrt artifacts (a .plan, or the TensorRT-ready .onnx of --no-build)"
    if manifest.target in ("onnx", "tensorrt"):
        problem = f"is a {manifest.target} artifact whose main file {main!r} is neither a .plan nor an .onnx"
        raise UserInputError(problem, path=artifact, fix="re-export the artifact")
    raise UserInputError(
        f"is a {manifest.target} artifact; Triton can serve {supported}",
        path=artifact,
        fix="export with `sharp-export onnx` or `sharp-export tensorrt` for Triton",
    )


def artifact_max_batch(manifest: Manifest) -> int | None:
    """The largest batch the artifact accepts, or None for a fixed-batch (batch 1) artifact."""
    if not manifest.io.dynamic_batch:
        return None
    if model_format(manifest) is PLAN_FORMAT:
        profile = (manifest.conversion.get("tensorrt") or {}).get("batch_profile")
        if profile:
            # Triton's batcher sends any batch from 1 up to max_batch_size, so the plan's profile must start at 1.
            if int(profile[0]) != 1:
                raise UserInputError(
                    f"the plan's batch profile {list(profile)} starts at {profile[0]}; Triton sends batches from 1 up",
                    fix="rebuild the plan with a profile that starts at batch 1",
                )
            return int(profile[2])
    # ONNX artifacts (and a plan without a recorded profile) accept what the exporter's Dim("batch") allows.
    return MAX_DYNAMIC_BATCH


def resolve_max_batch(manifest: Manifest, requested: int | None, artifact: Path | None = None) -> int:
    """Triton's max_batch_size: 0 for a fixed-batch artifact, else 1..the artifact's maximum (default 8)."""
    highest = artifact_max_batch(manifest)
    if highest is None:
        if requested:
            raise UserInputError(
                f"--max-batch {requested}: this artifact was exported with a fixed batch of 1, so Triton cannot "
                "batch requests (max_batch_size stays 0)",
                path=artifact,
                fix="re-export with --dynamic-batch, or leave out --max-batch",
            )
        return 0
    if requested is None:
        return min(DEFAULT_MAX_BATCH, highest)
    if requested < 1 or requested > highest:
        where = "its TensorRT batch profile" if model_format(manifest) is PLAN_FORMAT else "the ONNX export"
        raise UserInputError(
            f"--max-batch {requested} is outside the batches this artifact accepts (1..{highest}, from {where})",
            path=artifact,
            fix=f"pass --max-batch between 1 and {highest}",
        )
    return requested


def tensor_dims(spec: TensorSpec, batched: bool) -> tuple[list[int], list[int] | None]:
    """Triton ``dims`` for a tensor, and the ``reshape`` shape it needs (None: no reshape).

    With ``batched`` (max_batch_size > 0) Triton adds the batch dimension itself, so it is left out. A tensor
    that is only ``[batch]`` then has no dims; Triton needs at least one, so it is declared ``[1]`` and
    reshaped to ``[]`` (the model still sees ``[batch]``). Any other string dimension is variable: -1.
    """
    shape = spec.shape[1:] if batched else spec.shape
    dims = [d if isinstance(d, int) else -1 for d in shape]
    if not dims:
        return [1], []
    return dims, None


def triton_dtype(spec: TensorSpec) -> str:
    try:
        return _TRITON_DTYPES[spec.dtype]
    except KeyError:
        raise UserInputError(
            f"tensor {spec.name!r} has dtype {spec.dtype}; this writer maps only {sorted(_TRITON_DTYPES)}",
            fix="export with --precision fp32 or fp16",
        ) from None


def check_model_name(name: str) -> None:
    if not _SAFE_NAME.fullmatch(name) or name.endswith(".") or len(name) > 128:
        raise UserInputError(
            f"--name {name!r} is not a safe model name: it is a folder in the repository and the name clients call",
            fix="use letters, digits, '_', '-' and '.', starting with a letter, digit or '_'",
        )


def _quote(text: str) -> str:
    """A protobuf text-format string literal (manifest strings may hold quotes or newlines)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _list(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _comment(text: str) -> str:
    """One comment line; control characters (a newline would end the comment) become spaces."""
    return "# " + "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text).rstrip()


def _tensor_block(spec: TensorSpec, batched: bool) -> list[str]:
    dims, reshape = tensor_dims(spec, batched)
    shape = ", ".join(str(d) for d in spec.shape)
    lines = [
        "  {",
        "    " + _comment(f"{spec.name}: [{shape}] {spec.dtype}; {spec.meaning}"),
        f"    name: {_quote(spec.name)}",
        f"    data_type: {triton_dtype(spec)}",
        f"    dims: {_list(dims)}",
    ]
    if reshape is not None:
        lines.append("    " + _comment("Triton needs non-empty dims: clients send [batch, 1], the model gets [batch]"))
        lines.append(f"    reshape: {{ shape: {_list(reshape)} }}")
    lines.append("  }")
    return lines


def _tensor_list(field: str, specs: tuple[TensorSpec, ...], batched: bool) -> list[str]:
    lines = [f"{field} ["]
    for index, spec in enumerate(specs):
        block = _tensor_block(spec, batched)
        if index < len(specs) - 1:
            block[-1] += ","
        lines += block
    lines.append("]")
    return lines


def _provenance(manifest: Manifest) -> dict[str, str]:
    """What the config records about the artifact (also shown by the server's model-config endpoint)."""
    source = manifest.source
    return {
        "sharp_export.target": manifest.target,
        "sharp_export.precision": manifest.precision,
        "sharp_export.preset": str(source.get("preset")),
        "sharp_export.checkpoint_sha256": str(source.get("checkpoint_sha256") or "none"),
        "sharp_export.weights": str(source.get("label") or ""),
        "sharp_export.exported_with": f"sharp-export {manifest.tool.get('version', '?')}",
    }


def triton_config(
    manifest: Manifest,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    max_batch_size: int | None = None,
    instances: int = 1,
    kind: str | None = None,
    artifact: Path | None = None,
) -> str:
    """The ``config.pbtxt`` text that serves the artifact described by ``manifest``.

    ``max_batch_size`` None picks the default (8 capped at the artifact's maximum; 0 for a fixed-batch
    artifact); ``kind`` None is "gpu". ``artifact`` only names the folder in error messages.
    """

    check_model_name(model_name)
    fmt = model_format(manifest, artifact)
    kind = kind or "gpu"
    if kind not in KINDS:
        raise UserInputError(f"--kind {kind!r} is not one of {list(KINDS)}")
    if kind not in fmt.kinds:
        raise UserInputError(
            f"--kind {kind}: a TensorRT plan runs only on the GPU it was built for",
            path=artifact,
            fix="use --kind gpu, or package an ONNX artifact for CPU instances",
        )
    if instances < 1:
        raise UserInputError(f"--instances {instances}: at least one model instance is needed", fix="pass 1 or more")
    batch = resolve_max_batch(manifest, max_batch_size, artifact)
    batched = batch > 0
    source = manifest.source
    weights = source.get("label") or ("untrained seeded weights" if source.get("untrained") else "checkpoint")
    header = [
        f"Triton model configuration for SHARP, written by `sharp-export triton` (sharp-export {__version__})",
        f"from an artifact exported by sharp-export {manifest.tool.get('version', '?')}; its manifest is "
        f"{MANIFEST_COPY} beside this file",
        f"artifact: {manifest.target} {manifest.precision}, preset {source.get('preset')!r}, {weights}; "
        f"checkpoint sha256 {source.get('checkpoint_sha256') or 'none'}",
        "inputs are preprocessed as the manifest's 'preprocessing' says; outputs are raw NDC x z Gaussians",
    ]
    if fmt is PLAN_FORMAT:
        trt = manifest.conversion.get("tensorrt") or {}
        header.append(
            f"TensorRT plan built with TensorRT {trt.get('tensorrt_version', '?')} on {trt.get('gpu_name') or '?'} "
            f"(compute capability {trt.get('gpu_compute_capability') or '?'}): the server must run this TensorRT "
            "version on this GPU model"
        )
    lines = [_comment(text) for text in header]
    lines += [
        f"name: {_quote(model_name)}",
        f"platform: {_quote(fmt.platform)}",
        f"default_model_filename: {_quote(fmt.filename)}",
    ]
    if batched:
        lines.append(_comment("Triton adds the batch dimension itself: the dims below leave it out"))
    else:
        lines.append(_comment("0: the artifact has a fixed batch of 1, so the dims below are full shapes"))
    lines.append(f"max_batch_size: {batch}")
    lines += _tensor_list("input", manifest.io.inputs, batched)
    lines += _tensor_list("output", manifest.io.outputs, batched)
    if batched:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: {_list([batch])}",
            "  " + _comment(f"{MAX_QUEUE_DELAY_US} us of waiting is small next to one forward (tens to 100s of ms)"),
            f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
            "}",
        ]
    lines += [
        _comment("count instances on each GPU (kind gpu) or on the host (kind cpu)"),
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: KIND_{kind.upper()}",
        "  }",
        "]",
    ]
    for key, value in _provenance(manifest).items():
        lines.append(f"parameters {{ key: {_quote(key)} value {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def _model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf module; tritonclient ships it in its grpc package."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        # tritonclient without its grpc extra raises RuntimeError from tritonclient.grpc's __init__.
        raise MissingDependencyError(
            "tritonclient[grpc]", "triton", "checking config.pbtxt against Triton's schema"
        ) from None
    return model_config_pb2


def config_problems(config: Any, manifest: Manifest) -> list[str]:
    """Where a parsed ModelConfig differs from what the manifest says (platform, batching, tensors)."""
    pb2 = _model_config_pb2()
    fmt = model_format(manifest)
    problems = []
    if config.platform != fmt.platform:
        problems.append(f"platform is {config.platform!r}, the artifact needs {fmt.platform!r}")
    if config.default_model_filename != fmt.filename:
        problems.append(f"default_model_filename is {config.default_model_filename!r}, expected {fmt.filename!r}")
    batched = config.max_batch_size > 0
    if batched != manifest.io.dynamic_batch:
        problems.append(
            f"max_batch_size {config.max_batch_size} but the artifact "
            + ("has a dynamic batch (needs > 0)" if manifest.io.dynamic_batch else "has a fixed batch (needs 0)")
        )
    for field, specs in (("input", manifest.io.inputs), ("output", manifest.io.outputs)):
        found = list(getattr(config, field))
        names = [t.name for t in found]
        if names != [s.name for s in specs]:
            problems.append(f"{field} names are {names}, the manifest says {[s.name for s in specs]}")
            continue
        for tensor, spec in zip(found, specs, strict=True):
            dims, reshape = tensor_dims(spec, batched)
            if list(tensor.dims) != dims:
                problems.append(f"{field} {spec.name!r} has dims {list(tensor.dims)}, expected {dims}")
            dtype = pb2.DataType.Name(tensor.data_type)
            if dtype != triton_dtype(spec):
                problems.append(f"{field} {spec.name!r} has data_type {dtype}, expected {triton_dtype(spec)}")
            has_reshape = tensor.HasField("reshape")
            if (reshape is not None) != has_reshape or (has_reshape and list(tensor.reshape.shape) != reshape):
                got = list(tensor.reshape.shape) if has_reshape else None
                problems.append(f"{field} {spec.name!r} has reshape {got}, expected {reshape}")
    return problems


def validate_config(text: str, manifest: Manifest | None = None, *, path: Path | None = None) -> Any:
    """Parse ``text`` with Triton's ModelConfig schema; with ``manifest``, also compare it with the artifact.

    Returns the parsed ``ModelConfig`` message. A parse error or a mismatch is a ConversionError naming the
    line or field; tritonclient missing is a MissingDependencyError.
    """
    pb2 = _model_config_pb2()
    from google.protobuf import text_format

    config = pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        number = error.GetLine()
        lines = text.splitlines()
        where = f" (line {number}: {lines[number - 1].strip()!r})" if number and 0 < number <= len(lines) else ""
        raise ConversionError(
            f"{CONFIG_NAME} does not parse with Triton's ModelConfig schema: {error}{where}",
            path=path,
            fix="if sharp-export wrote this text it is a bug: report it with the artifact's manifest.json",
        ) from None
    if manifest is not None:
        problems = config_problems(config, manifest)
        if problems:
            raise ConversionError(
                f"{CONFIG_NAME} parses but does not match the artifact's manifest: " + "; ".join(problems),
                path=path,
                fix="this is a bug in sharp-export's Triton writer: report it with the artifact's manifest.json",
            )
    return config


def model_files(manifest: Manifest, fmt: ModelFormat) -> list[tuple[str, str]]:
    """(artifact-relative source, name in the version folder) for every file the model needs.

    An ONNX model refers to its external weights by file name (``<model file>.data``), so that file keeps its
    name; the model file itself gets Triton's default name.
    """
    files = [(manifest.main_file, fmt.filename)]
    if fmt is ONNX_FORMAT:
        data = manifest.main_file + ".data"
        if data in manifest.files:
            files.append((data, Path(data).name))
    return files


def place_file(source: Path, target: Path) -> str:
    """Hard-link ``source`` to ``target`` (same file system: instant, no extra GBs), else copy it.

    Artifacts are never edited in place (a re-export replaces the whole folder), so sharing the inode is safe.
    Returns "linked" or "copied".
    """
    try:
        os.link(source, target)
        return "linked"
    except OSError:
        # Another file system, a file system without hard links, or protected_hardlinks: copy instead.
        shutil.copyfile(source, target)
        return "copied"


def _model_folder_files(data: Any) -> set[str] | None:
    """The files our manifest copy accounts for in a model folder: itself, the config and the model files."""
    listed = artifact_files(data)
    if listed is None:
        return None
    names = {Path(rel).name for rel in listed} | {fmt.filename for fmt in (ONNX_FORMAT, PLAN_FORMAT)}
    return {MANIFEST_COPY, CONFIG_NAME} | {f"{VERSION_DIR}/{name}" for name in names}


MODEL_FOLDER = OutputKind("Triton model folder", MANIFEST_COPY, _model_folder_files)


def _check_model_dir(final: Path, force: bool) -> None:
    """Refuse to overwrite: only a model folder this writer made may be replaced, and only with force."""
    if final.parent.exists() and not final.parent.is_dir():
        raise UserInputError(
            "is a file; a Triton model repository is a folder", path=final.parent, fix="choose another -o folder"
        )
    if not final.exists():
        return
    if not final.is_dir():
        raise UserInputError("is a file in the way of the model folder", path=final, fix="remove it or pass --name")
    if not force:
        raise UserInputError(
            "a model folder with this name already exists in the repository",
            path=final,
            fix="pass --force to replace it, or --name for another model name",
        )
    problem = replace_problem(final, MODEL_FOLDER)
    if problem is not None:
        raise UserInputError(
            f"exists and is not provably a model folder written by `sharp-export triton` ({problem}); --force "
            "replaces only those, so nothing was touched",
            path=final,
            fix="pass --name for another model name, or remove the folder yourself",
        )


def write_triton_repository(
    artifact_dir: str | Path,
    repo_dir: str | Path,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    max_batch_size: int | None = None,
    instances: int = 1,
    kind: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``repo_dir/<model_name>/`` (config.pbtxt, 1/<model file>, the manifest copy); returns that folder.

    Everything is checked first (artifact file sizes, the config against Triton's schema and the manifest);
    the folder is then built beside its final place and renamed in, so a failure leaves the repository as it
    was. Other models in ``repo_dir`` are left alone.
    """
    artifact_dir = Path(artifact_dir)
    check_model_name(model_name)
    manifest = read_manifest(artifact_dir)
    fmt = model_format(manifest, artifact_dir)
    check_file_sizes(artifact_dir, manifest)
    text = triton_config(
        manifest,
        model_name=model_name,
        max_batch_size=max_batch_size,
        instances=instances,
        kind=kind,
        artifact=artifact_dir,
    )
    config = validate_config(text, manifest, path=artifact_dir)
    final = Path(repo_dir).absolute() / model_name
    _check_model_dir(final, force)
    if manifest.parity.get("status") == "failed":  # never shipped unawares (non-finite outputs included)
        failures = "; ".join(manifest.parity.get("failures", [])) or "see its parity.json"
        echo(f"warning: {artifact_dir}: this artifact FAILED parity when exported ({failures}); packaged anyway")
    echo(
        f"triton: {manifest.target} {manifest.precision} artifact {artifact_dir} -> model '{model_name}' "
        f"({fmt.platform}, max_batch_size {config.max_batch_size}, {instances} x {(kind or 'gpu').upper()})"
    )
    with atomic_directory(final, force=force, kind=MODEL_FOLDER) as workdir:
        version = workdir / VERSION_DIR
        version.mkdir()
        for rel, name in model_files(manifest, fmt):
            how = place_file(artifact_dir / rel, version / name)
            echo(f"    {how} {rel} -> {VERSION_DIR}/{name}")
        shutil.copyfile(artifact_dir / MANIFEST_NAME, workdir / MANIFEST_COPY)
        # The config last: a server that autodetects models sees a config only once the files are there.
        (workdir / CONFIG_NAME).write_text(text)
    echo(f"    wrote {CONFIG_NAME}; serve with: tritonserver --model-repository {final.parent}")
    if fmt is PLAN_FORMAT:
        version_text = (manifest.conversion.get("tensorrt") or {}).get("tensorrt_version", "?")
        echo(f"    note: the plan needs TensorRT {version_text} in the server and the GPU model it was built on")
    return final
