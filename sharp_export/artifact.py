"""Self-describing artifact directories: native files + ``manifest.json`` + ``export.log``, written atomically.

An artifact is built in a tagged ``<out>.tmp-<pid>-<start>-<random>@<host>`` folder beside the final path and
published (``reference/publish.py``) only when everything, manifest last, is written. Any exception
(KeyboardInterrupt and SIGTERM included) deletes the temp directory, so a crashed or interrupted export never leaves
something that looks like an artifact; one killed outright (SIGKILL, power cut) leaves a tagged folder that the next
export to that path removes. ``--force`` replaces only a folder that provably holds nothing but a sharp-export
artifact (``replace_problem``); golden bundles and Triton model folders follow the same rule (``OutputKind``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sharp_export import __version__
from sharp_export.errors import UserInputError, output_error
from sharp_export.progress import echo
from sharp_export.reference.hashing import sha256_file
from sharp_export.reference.publish import publish_folder, sweep_stale, temp_folder

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOG_NAME = "export.log"
PARITY_NAME = "parity.json"  # the export's own parity report
TOOL_NAME = "sharp-export"

_REQUIRED_KEYS = ("schema_version", "tool", "source", "target", "precision", "options", "io", "files", "created")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. A string dimension (``"batch"``) is dynamic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
    meaning: str  # units and meaning, e.g. "linear RGB in (0, 1)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "meaning": self.meaning}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TensorSpec:
        return TensorSpec(data["name"], tuple(data["shape"]), data["dtype"], data.get("meaning", ""))


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> IOSpec:
        return IOSpec(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    @property
    def dynamic_batch(self) -> bool:
        return isinstance(self.inputs[0].shape[0], str)


def raw_io_spec(resolution: int, batch: int | str, dtype: str = "float32") -> IOSpec:
    """The I/O of the raw predictor: image + disparity_factor in, five Gaussian attributes (NDC x z) out."""
    n = 2 * (resolution // 2) ** 2  # two layers of Gaussians on a half-resolution grid
    return IOSpec(
        inputs=(
            TensorSpec("image", (batch, 3, resolution, resolution), "float32", "RGB, sRGB values in [0, 1], CHW"),
            TensorSpec("disparity_factor", (batch,), "float32", "f_px / original image width (pixels/pixels)"),
        ),
        outputs=(
            TensorSpec("mean_vectors", (batch, n, 3), dtype, "NDC x z: (x_ndc*z, y_ndc*z, z), z in disparity units"),
            TensorSpec("singular_values", (batch, n, 3), dtype, "scales (standard deviations, not log), NDC x z"),
            TensorSpec("quaternions", (batch, n, 4), dtype, "rotation wxyz, not normalised"),
            TensorSpec("colors", (batch, n, 3), dtype, "linear RGB in (0, 1)"),
            TensorSpec("opacities", (batch, n), dtype, "opacity in (0, 1)"),
        ),
    )


def preprocessing_description(resolution: int) -> dict[str, Any]:
    """How a user must prepare inputs so that the artifact sees what the reference model saw."""
    return {
        "resolution": resolution,
        "resize": f"bilinear, align_corners=True, both axes to {resolution}x{resolution} (no aspect kept, no padding)",
        "value_range": "uint8 RGB / 255 -> float32 in [0, 1] (sRGB values, not linearised), layout [B, 3, H, W]",
        "disparity_factor": "f_px / W with f_px the focal length in pixels of the ORIGINAL image and W its width",
        "postprocessing": "raw NDC x z Gaussians; unproject with the original intrinsics, cx = W/2, cy = H/2",
    }


@dataclass
class Manifest:
    """Everything needed to trust, run and reproduce an artifact. Serialised as manifest.json."""

    source: dict[str, Any]  # preset, checkpoint_sha256, seed, label, untrained
    target: str
    precision: str
    options: dict[str, Any]  # dynamic_batch, calibration and target options (opset, ...)
    io: IOSpec
    preprocessing: dict[str, Any]
    environment: dict[str, Any]
    conversion: dict[str, Any] = field(default_factory=dict)  # converter details: exporter, timings, opset found
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> {sha256, size}
    parity: dict[str, Any] = field(default_factory=lambda: {"status": "pending"})
    reproduce: str = ""
    main_file: str = ""  # relative path of the native model file
    tool: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["io"] = self.io.to_dict()
        # Identity first, bulky environment and file lists last: easier to read by eye.
        order = ["schema_version", "tool", "created", "target", "precision", "source", "options", "main_file", "io",
                 "preprocessing", "parity", "conversion", "reproduce", "files", "environment"]  # fmt: skip
        return {key: data[key] for key in order}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["io"] = IOSpec.from_dict(data["io"])
        known = set(Manifest.__dataclass_fields__)
        return Manifest(**{k: v for k, v in data.items() if k in known})


def hash_files(directory: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``directory`` except the manifest itself, by relative path."""
    result: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != MANIFEST_NAME:
            result[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return result


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Hash every file, stamp tool and time, and write manifest.json (call it last)."""

    manifest.tool = {"name": TOOL_NAME, "version": __version__}
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.files = hash_files(directory)
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """Load and validate ``<directory>/manifest.json``; a clear error for anything that is not an artifact."""
    directory = Path(directory)
    fix = "pass a directory written by `sharp-export <target> -o DIR`"
    if not directory.exists():
        raise UserInputError("does not exist", path=directory, fix=fix)
    if not directory.is_dir():
        raise UserInputError("is a file, not an artifact directory", path=directory, fix=fix)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise UserInputError(f"is not a sharp-export artifact (no {MANIFEST_NAME})", path=directory, fix=fix)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"is not valid JSON ({error})", path=path, fix="re-export the artifact") from None
    missing = [k for k in _REQUIRED_KEYS if k not in data] if isinstance(data, dict) else list(_REQUIRED_KEYS)
    if missing:
        raise UserInputError(f"is missing manifest keys {missing}", path=path, fix="re-export the artifact")
    if data["schema_version"] != SCHEMA_VERSION:
        raise UserInputError(
            f"has manifest schema_version {data['schema_version']}, this sharp-export reads {SCHEMA_VERSION}",
            path=path,
            fix="re-export with this version or install the version that wrote it",
        )
    problem = _manifest_problem(data)
    if problem is not None:
        raise UserInputError(f"has a malformed manifest ({problem})", path=path, fix="re-export the artifact")
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as error:
        raise UserInputError(f"has a malformed manifest ({error!r})", path=path, fix="re-export the artifact") from None


def _safe_relative(name: object) -> bool:
    """A path inside the artifact: relative, no '..' (a hostile manifest must not point outside)."""
    if not isinstance(name, str) or not name:
        return False
    parts = Path(name).parts
    return not Path(name).is_absolute() and ".." not in parts


def _manifest_problem(data: dict[str, Any]) -> str | None:
    """The first field a runner relies on that has the wrong type, or None."""
    for key, kind in (("target", str), ("precision", str), ("source", dict), ("options", dict), ("files", dict)):
        if not isinstance(data[key], kind):
            return f"'{key}' is a {type(data[key]).__name__}, expected a {kind.__name__}"
    preprocessing = data.get("preprocessing")
    if not isinstance(preprocessing, dict) or not isinstance(preprocessing.get("resolution"), int):
        return "'preprocessing.resolution' is missing or not an integer"
    io = data["io"]
    if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list):
        return "'io' lacks its inputs and outputs lists"
    for spec in io["inputs"] + io["outputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or "name" not in spec:
            return f"'io' entry {str(spec)[:60]!r} lacks a name or shape"
    for rel, info in data["files"].items():
        if not _safe_relative(rel):
            return f"file entry {rel!r} is not a relative path inside the artifact"
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("sha256"), str)
            or not isinstance(info.get("size"), int)
        ):
            return f"file entry {rel!r} lacks its sha256 or size"
    main = data.get("main_file", "")
    if main and not _safe_relative(main):
        return f"main_file {main!r} is not a relative path inside the artifact"
    return None


def check_file_sizes(directory: Path, manifest: Manifest) -> None:
    """Cheap pre-load check: every listed file exists with its recorded size (catches truncated copies)."""
    if manifest.main_file and not (directory / manifest.main_file).exists():
        raise UserInputError(
            f"the model file {manifest.main_file} named by the manifest is missing",
            path=directory,
            fix="copy the whole directory",
        )
    for rel, info in manifest.files.items():
        path = directory / rel
        if not path.is_file():
            raise UserInputError(
                f"listed in the manifest but missing: {rel}", path=directory, fix="copy the whole directory"
            )
        if path.stat().st_size != info["size"]:
            raise UserInputError(
                f"{rel} has {path.stat().st_size} bytes, the manifest says {info['size']} (truncated copy?)",
                path=directory,
                fix="copy the whole directory again",
            )


def verify_files(directory: str | Path, manifest: Manifest | None = None) -> dict[str, dict[str, Any]]:
    """Re-hash every file listed in the manifest (read here unless given); raise naming each missing or changed
    file."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    problems = []
    for rel, info in manifest.files.items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel} missing")
        elif (found := sha256_file(path)) != info["sha256"]:
            problems.append(f"{rel} sha256 {found[:12]}... != manifest {info['sha256'][:12]}...")
    if problems:
        raise UserInputError(
            "files do not match the manifest: " + "; ".join(problems), path=directory, fix="re-copy or re-export"
        )
    return manifest.files


@dataclass(frozen=True)
class OutputKind:
    """A folder sharp-export writes and may replace with ``--force``: its name for messages, the JSON file that
    proves it is ours, and the files that JSON accounts for (``accounted(data)``: None when the JSON is not ours)."""

    noun: str
    marker: str
    accounted: Callable[[Any], set[str] | None]


def artifact_files(data: Any) -> set[str] | None:
    """The files an artifact manifest accounts for (its listed files, itself, our log and parity report)."""
    if not isinstance(data, dict) or not isinstance(data.get("schema_version"), int):
        return None
    tool, files = data.get("tool"), data.get("files")
    if not isinstance(tool, dict) or tool.get("name") != TOOL_NAME or not isinstance(files, dict):
        return None
    return {rel for rel in files if _safe_relative(rel)} | {MANIFEST_NAME, LOG_NAME, PARITY_NAME}


ARTIFACT = OutputKind("artifact", MANIFEST_NAME, artifact_files)


def replace_problem(final: Path, kind: OutputKind = ARTIFACT) -> str | None:
    """Why ``--force`` must not delete the existing folder ``final``, or None when it provably holds nothing but a
    sharp-export ``kind``: its marker parses as ours, and every file in it is one the marker accounts for.

    An empty folder may be replaced (nothing is lost); a symbolic link anywhere is never ours.
    """
    if final.is_symlink():
        return "it is a symbolic link"
    files: list[str] = []
    for folder, dirs, names in os.walk(final, followlinks=False):
        for name in dirs + names:
            path = Path(folder, name)
            if path.is_symlink():
                return f"it holds a symbolic link, {path.relative_to(final).as_posix()}"
        files += [Path(folder, name).relative_to(final).as_posix() for name in names]
    if not files:
        return None
    if kind.marker not in files:
        return f"it has no {kind.marker}"
    try:
        accounted = kind.accounted(json.loads((final / kind.marker).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        accounted = None
    if accounted is None:
        return f"its {kind.marker} is not a sharp-export {kind.noun} manifest"
    strangers = sorted(set(files) - accounted)
    if strangers:
        more = f" and {len(strangers) - 1} more files" if len(strangers) > 1 else ""
        return f"it holds {strangers[0]}{more}, which its {kind.marker} does not list"
    return None


def check_output_path(final: Path, force: bool, kind: OutputKind = ARTIFACT) -> None:
    """Refuse to overwrite: an existing ``kind`` folder needs --force; anything else is never replaced."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink():
        raise UserInputError(
            "is a symbolic link; an output is never written through one", path=final, fix="choose another output path"
        )
    if not final.is_dir():
        raise UserInputError(
            f"is an existing file, not a folder; {'an' if kind.noun[0] in 'aeiou' else 'a'} {kind.noun} is a folder "
            "and a file is never replaced",
            path=final,
            fix="choose another output path",
        )
    if not force:
        raise UserInputError(
            "already exists", path=final, fix="pass --force to replace it, or choose another output directory"
        )
    problem = replace_problem(final, kind)
    if problem is not None:
        raise UserInputError(
            f"exists and is not provably a sharp-export {kind.noun} ({problem}); --force replaces only a folder "
            f"that holds nothing but a sharp-export {kind.noun}, so nothing was touched",
            path=final,
            fix="choose another output path, or move the folder away yourself",
        )


def announce_stale(folder: Path, base: str | None = None) -> None:
    """Remove temporaries of ours left in ``folder`` by dead processes (``publish.sweep_stale``), one line each."""
    for stale in sweep_stale(folder, base):
        echo(stale.note())


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, force: bool = False, kind: OutputKind = ARTIFACT) -> Iterator[Path]:
    """Yield a tagged temp directory beside ``final``; publish it on success, delete it on any failure.

    Without ``force`` exactly one of several writers of ``final`` wins (``publish.publish_folder``); with it, an
    existing folder is replaced only if it is provably a sharp-export ``kind`` (checked before the work and again
    before the swap, as the folder may change meanwhile). Temporaries of ``final`` left by dead processes go first.
    """
    final = Path(final).absolute()
    check_output_path(final, force, kind)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        announce_stale(final.parent, final.name)
        tmp = temp_folder(final)
    except OSError as error:
        converted = output_error(error, final, "cannot create the output folder", "nothing was written")
        if converted is None:
            raise
        raise converted from None
    try:
        yield tmp
        check_output_path(final, force, kind)
        publish_folder(tmp, final, replace=force)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and _is_write_fault(error, tmp):
            kept = f"the existing {kind.noun} is unchanged" if final.exists() else "nothing was left at that path"
            converted = output_error(error, final, outcome=kept)
            if converted is not None:
                raise converted from None
        raise


def _is_write_fault(error: OSError, workdir: Path) -> bool:
    """A failed write into the artifact being built (not, say, a checkpoint that cannot be read)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return error.filename is None or str(error.filename).startswith(str(workdir))
