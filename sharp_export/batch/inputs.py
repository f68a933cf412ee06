"""INPUT of `sharp-export batch`: a folder, a glob or a list file, local or on any pyarrow filesystem (s3://, gs://,
hdfs://, file://), listed once by the driver.

* a folder: every file under it (recursive) with an image suffix (``IMAGE_SUFFIXES``);
* a glob (``photos/*.jpg``, ``s3://bucket/shoot/**/*.png``): ``*``, ``?`` and ``[...]`` match within one folder
  name, ``**`` any number of folders; matches keep only image suffixes, as a folder does;
* a list file (any file without an image suffix): one path or URI per line, blank lines and ``#`` comments skipped,
  relative local paths relative to the list's folder; every entry is taken as given. An entry that does not exist
  is not an error of the job: it becomes a failed row of the manifest;
* a single image file.

The listing gives each file's size and modification time, which a rerun compares with the manifest without
reading the files again. Outputs mirror the input tree: ``<base>/a/b/photo.jpg`` -> ``OUTPUT/a/b/photo.ply``,
where base is the folder, the glob's folder before its first wildcard, or the deepest folder holding every
entry of a list.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from sharp_export.errors import UserInputError
from sharp_export.reference.preprocess import IMAGE_SUFFIXES

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class InputFile:
    uri: str  # as the user sees it: an absolute local path or scheme://bucket/key (the manifest's `input`)
    path: str  # the path on the filesystem, which Ray's reader reports back with each file's bytes
    size: int
    mtime_ns: int | None  # None where the filesystem does not say
    output: str  # the output file, relative to OUTPUT (posix separators)


@dataclass
class Inputs:
    filesystem: pafs.FileSystem
    files: list[InputFile]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (uri, why): list entries that cannot be read
    total: int = 0  # images in INPUT before --limit


def _open(spec: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path on it, URI prefix) of a local path or a URI; a local path is made absolute."""
    if "://" not in spec or spec.startswith("file://"):
        local = spec[len("file://") :] if spec.startswith("file://") else spec
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local)), ""
    try:
        filesystem, path = pafs.FileSystem.from_uri(spec)
    except (pa.ArrowException, OSError, ValueError, NotImplementedError) as error:
        raise UserInputError(
            f"cannot open this location ({str(error).splitlines()[0]})",
            path=spec,
            fix="pass a local path or a URI that pyarrow can open (s3://, gs://, hdfs://), with its credentials set",
        ) from None
    return filesystem, path, spec.split("://", 1)[0] + "://"


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _glob_matches(parts: list[str], pattern: list[str]) -> bool:
    """``parts`` (folder names and file name) against ``pattern``'s parts; ``**`` is any number of folders."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_matches(parts[skip:], pattern[1:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_matches(parts[1:], pattern[1:])


def _listing(filesystem: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    return [info for info in infos if info.type == pafs.FileType.File]


def _glob(filesystem: pafs.FileSystem, pattern: str) -> tuple[str, list[pafs.FileInfo]]:
    """(base folder, image files matching ``pattern``)."""
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS))
    base = "/".join(parts[:first]) or "/"
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        return base, []
    found = []
    for info in _listing(filesystem, base):
        relative = posixpath.relpath(info.path, base).split("/")
        if _glob_matches(relative, parts[first:]) and _is_image(info.path):
            found.append(info)
    return base, found


def _list_file(
    filesystem: pafs.FileSystem, path: str, prefix: str, spec: str
) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo], list[tuple[str, str]]]:
    """(filesystem of the entries, their URI prefix, FileInfo of each entry that is a file, (uri, why) of others)."""
    with filesystem.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserInputError(
            "is neither an image (by its suffix) nor a list file of UTF-8 lines",
            path=spec,
            fix=f"image suffixes are {', '.join(IMAGE_SUFFIXES)}; a list file holds one path or URI per line",
        ) from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise UserInputError("the list file names no images", path=spec, fix="one image path or URI per line")
    folder = posixpath.dirname(path)
    opened = []
    for entry in entries:
        if "://" not in entry and not prefix and not os.path.isabs(os.path.expanduser(entry)):
            entry = os.path.join(folder, entry)  # relative to the list file's folder
        opened.append(_open(entry))
    kinds = {(fs.type_name, entry_prefix) for fs, _, entry_prefix in opened}
    if len(kinds) > 1:
        shown = ", ".join(sorted(p or "local" for _, p in kinds))
        raise UserInputError(f"the list mixes file systems ({shown})", path=spec, fix="one list per file system")
    entry_fs, _, entry_prefix = opened[0]
    infos = entry_fs.get_file_info([entry_path for _, entry_path, _ in opened])
    good, bad = [], []
    for info in infos:
        uri = entry_prefix + info.path
        if info.type == pafs.FileType.File:
            good.append(info)
        else:
            why = "is a folder, not an image file" if info.type == pafs.FileType.Directory else "input not found"
            bad.append((uri, why))
    return entry_fs, entry_prefix, good, bad


def _output_name(path: str, base: str, suffix: str) -> str:
    relative = posixpath.relpath(path, base)
    stem = posixpath.splitext(relative)[0]
    return stem + suffix


def resolve_inputs(spec: str, suffix: str, limit: int | None = None) -> Inputs:
    """List INPUT (see the module docstring), sorted by path; ``limit`` keeps the first N images."""
    filesystem, path, prefix = _open(spec)
    missing: list[tuple[str, str]] = []
    if any(c in path for c in GLOB_CHARACTERS) and filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        base, infos = _glob(filesystem, path)
        where = f"no images match {spec}"
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UserInputError("input not found", path=spec, fix="pass an existing folder, glob, list file or image")
        if info.type == pafs.FileType.Directory:
            base, infos = path, [i for i in _listing(filesystem, path) if _is_image(i.path)]
            where = f"no images found in {spec}"
        elif _is_image(path):
            base, infos, where = posixpath.dirname(path), [info], ""
        else:
            filesystem, prefix, infos, missing = _list_file(filesystem, path, prefix, spec)
            base = posixpath.commonpath([posixpath.dirname(i.path) for i in infos]) if infos else "/"
            where = ""
    if not infos and not missing:
        raise UserInputError(where, fix=f"folders and globs are searched for {', '.join(IMAGE_SUFFIXES)}")
    infos = sorted(infos, key=lambda i: i.path)
    total = len(infos) + len(missing)
    if limit is not None:
        infos = infos[:limit]
        missing = missing[: max(0, limit - len(infos))]
    files = [
        InputFile(
            uri=prefix + info.path,
            path=info.path,
            size=int(info.size),
            mtime_ns=int(info.mtime_ns) if info.mtime_ns is not None else None,
            output=_output_name(info.path, base, suffix),
        )
        for info in infos
    ]
    return Inputs(filesystem, files, missing, total)


def output_collisions(inputs: Inputs, out_dir: Path) -> None:
    """Refuse, before any work, two inputs that would write one output (``a.jpg`` and ``a.png`` in one folder)."""
    owner: dict[str, str] = {}
    for item in inputs.files:
        other = owner.setdefault(item.output, item.uri)
        if other != item.uri:
            raise UserInputError(
                f"{other} and {item.uri} would both be written to {out_dir / item.output}",
                fix="rename one of them, or run them with different -o folders",
            )
