"""The actor of `sharp-export batch`: opens the model once, then turns batches of image bytes into scene files.

Ray Data calls ``SceneWriter(...)`` once per actor (a restarted actor runs it again) and then
``writer(batch)`` with ``{"bytes": [...], "path": [...]}``. Each image goes through the one pipeline of `run`
and `predict` (``load_image_bytes`` -> ``gaussians_for_loaded`` -> ``save_ply``), so its file is byte for byte
the one `run` writes. The actor decodes, infers and writes itself: only the image bytes (a few MB) come to it
through Ray's object store, and only a manifest row (a few hundred bytes) goes back, never the 28 MB input
tensor or the 66 MB scene of a full-size image.

A bad image is a failed row and the batch goes on. An output that cannot be written (full disk, read-only
folder) raises: every later image would fail the same way, so the job stops (its rows so far are kept).

No torch at module level: Ray imports this module in the driver to pickle the class.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharp_export.batch.manifest import SCHEMA, WRITING, Journal, new_row, worker_name
from sharp_export.batch.plan import Work, identity
from sharp_export.errors import OutputError, SharpExportError, output_error
from sharp_export.reference.hashing import sha256_file


@dataclass(frozen=True)
class ModelSpec:
    """What each actor opens: an artifact folder, or the reference model (preset + weights + precision)."""

    artifact: str | None  # None: the reference model
    device: str  # "cpu" or "cuda" (the GPU Ray gave this actor)
    preset: str = "sharp"
    checkpoint: str | None = None  # a local path every node can read
    seed: int | None = None
    precision: str = "fp32"


@dataclass(frozen=True)
class JobSpec:
    out_dir: str  # a folder every node can write (local, or a shared mount on a cluster)
    format: str
    y_up: bool
    max_pixels: int
    threads: int  # OMP / intra-op threads of each actor (its --cpus-per-actor)
    artifact: str  # the manifest's `artifact` label
    artifact_sha256: str


def open_model(spec: ModelSpec) -> tuple[Any, int, str, bool]:
    """(opened runner, input resolution, producer for error messages, whether it is an artifact)."""
    if spec.artifact is not None:
        from sharp_export.registry import resolve_artifact

        resolved = resolve_artifact(spec.artifact)
        manifest = resolved.manifest
        runner = resolved.runner(spec.device).open()
        producer = f"artifact {spec.artifact} ({manifest.target} {manifest.precision})"
        return runner, int(manifest.preprocessing["resolution"]), producer, True
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.runtime.torch_runner import TorchRunner

    loaded = build_model(spec.preset, spec.checkpoint, spec.seed, device=spec.device, precision=spec.precision)
    weights = Path(loaded.checkpoint_path).name if loaded.checkpoint_path else f"seed {loaded.seed}"
    runner = TorchRunner(loaded, spec.device).open()
    return runner, int(loaded.model.resolution), f"the model ({weights}, {spec.precision})", False


def error_line(error: BaseException, uri: str) -> str:
    """One line for a failed image, naming it by its URI (an error's own path would lose ``s3://``'s slashes)."""
    if isinstance(error, SharpExportError):
        text = f"{uri}: {error.message}" + (f" ({error.fix})" if error.fix else "")
    elif isinstance(error, MemoryError):
        text = f"{uri}: out of memory (a smaller preset, fewer or smaller actors, or more RAM per actor)"
    else:
        detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        text = f"{uri}: unexpected {type(error).__name__}: {detail} (a bug: please report it)"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def exit_code_of(error: BaseException) -> int:
    if isinstance(error, SharpExportError):
        return error.exit_code
    return 1 if isinstance(error, MemoryError) else 5


def make_folder(folder: Path) -> None:
    """The output's folder (checked free of files by the plan); a failure is an ``OutputError`` (stops the job)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise output_error(error, folder, "cannot create the output folder") or OutputError(
            f"cannot create the output folder ({reason})", path=folder, fix="choose a writable -o folder"
        ) from None


class SceneWriter:
    """A Ray Data callable class (one per actor): batch of image bytes -> scene files and manifest rows."""

    def __init__(self, model: ModelSpec, job: JobSpec, work: Any):
        os.environ["OMP_NUM_THREADS"] = str(job.threads)  # before torch and the runtimes read it
        import torch

        torch.set_num_threads(job.threads)
        if not isinstance(work, dict):  # an ObjectRef (one copy in the object store for every actor)
            import ray

            work = ray.get(work)
        self.work: dict[str, Work] = work
        self.job = job
        self.out_dir = Path(job.out_dir)
        self.runner, self.resolution, self.producer, self.is_artifact = open_model(model)
        self.journal = Journal(self.out_dir)
        self.worker = worker_name()

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        rows = [self.one(str(path), bytes(data)) for path, data in zip(batch["path"], batch["bytes"], strict=True)]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def _row(self, work: Work, input_sha256: str, **values: Any) -> dict[str, Any]:
        return new_row(
            input=work.uri,
            input_sha256=input_sha256,
            input_size=work.size,
            input_mtime_ns=work.mtime_ns,
            artifact=self.job.artifact,
            artifact_sha256=self.job.artifact_sha256,
            format=self.job.format,
            y_up=self.job.y_up,
            worker=self.worker,
            finished=time.time(),
            **values,
        )

    def one(self, path: str, data: bytes) -> dict[str, Any]:
        work = self.work[path]
        final = self.out_dir / work.output
        digest = hashlib.sha256(data).hexdigest()
        found = identity(final)
        if found is not None and found != work.prior:  # an earlier attempt of this run published it, then died
            row = self._row(work, digest, status="ok", exit_code=0, output=work.output, written=False,
                            output_size=found[1], output_sha256=sha256_file(final))  # fmt: skip
        else:
            row = self._compute(work, digest, data, final)
        self.journal.append(row)
        return row

    def _compute(self, work: Work, digest: str, data: bytes, final: Path) -> dict[str, Any]:
        import torch

        from sharp_export.pipeline import gaussians_for_loaded
        from sharp_export.reference.ply import save_ply
        from sharp_export.reference.preprocess import load_image_bytes

        start = time.perf_counter()
        try:
            image = load_image_bytes(data, work.uri, self.job.max_pixels)
            decoded = time.perf_counter()
            prediction = gaussians_for_loaded(
                image, self.runner.infer, self.resolution, torch.device("cpu"), producer=self.producer,
                artifact=self.is_artifact, start=decoded,
            )  # fmt: skip
            computed = time.perf_counter()
            make_folder(final.parent)
            # The intent first: if this process dies between publishing the file and journaling its row, the
            # driver still knows the file is ours (manifest.resolve_intents) instead of finding it in the way.
            self.journal.append(self._row(work, digest, status=WRITING, output=work.output))
            save_ply(prediction.gaussians, prediction.meta, final, format=self.job.format, y_up=self.job.y_up,
                     replace=work.prior is not None)  # fmt: skip
            size, sha = final.stat().st_size, sha256_file(final)
        except OutputError as error:
            if not error.message.startswith("already exists"):
                raise  # disk full, read-only: stop the job
            return self._failed(work, digest, error)
        except (SharpExportError, MemoryError, Exception) as error:
            return self._failed(work, digest, error)
        seconds = prediction.seconds
        return self._row(
            work, digest, status="ok", exit_code=0, output=work.output, output_size=size, output_sha256=sha,
            written=True, warnings="; ".join(image.warnings) or None, decode_s=decoded - start,
            preprocess_s=seconds["preprocess"], model_s=seconds["model"], postprocess_s=seconds["postprocess"],
            write_s=time.perf_counter() - computed,
        )  # fmt: skip

    def _failed(self, work: Work, digest: str, error: BaseException) -> dict[str, Any]:
        return self._row(work, digest, status="failed", error=error_line(error, work.uri),
                         exit_code=exit_code_of(error), written=False)  # fmt: skip
