"""`sharp-export batch` on Ray: list, plan, run the actor pool, keep the manifest, summarise.

Without ``--address`` a local Ray starts inside this process (loopback only, its files in a temporary folder under
/tmp, stopped at the end); with ``--address auto`` or ``ray://host:10001`` the same pipeline runs on that cluster
and OUTPUT must be a folder every node writes to (a shared mount).

The pipeline: ``read_binary_files(include_paths=True)`` reads each pending image's bytes (EXIF and all), and
``map_batches(SceneWriter, compute=ActorPoolStrategy(min, max), num_gpus=...)`` decodes, runs and writes them in
an actor pool that opened the model once per actor. Ray restarts an actor that dies and re-runs its batches
(``max_task_retries`` below); the worker skips an output an earlier attempt published. The driver only lists,
plans, shows progress and folds the journals into the manifest (plan.py, manifest.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharp_export.batch.inputs import Inputs, output_collisions
from sharp_export.batch.manifest import Journal, fold_journals, journal_paths, new_row
from sharp_export.batch.plan import Plan, lock_folder, make_plan
from sharp_export.batch.summary import Summary
from sharp_export.batch.worker import JobSpec, ModelSpec, SceneWriter
from sharp_export.errors import SharpExportError, UserInputError
from sharp_export.outputs import output_folder
from sharp_export.progress import echo
from sharp_export.reference.publish import sweep_stale

# Retries of one batch after its actor died (Ray's default is unbounded: an image that kills its worker every
# time, e.g. out of memory, would loop forever). Past them the job stops; a rerun resumes.
MAX_TASK_RETRIES = 3
# The local Ray's shared-memory object store. It holds image bytes in flight (a few MB each) and manifest rows,
# never tensors or scenes (worker.py), so 1 GiB is ample; Ray's default (30% of RAM) is not needed.
LOCAL_OBJECT_STORE_BYTES = 1 << 30


@dataclass(frozen=True)
class BatchConfig:
    out_dir: Path
    model: ModelSpec
    job: JobSpec
    address: str | None  # None: a local Ray started in this process
    actors: tuple[int, int]  # (min, max) of the actor pool
    cpus_per_actor: int
    gpus_per_actor: float
    batch_size: int
    force: bool
    retry_failed: bool
    progress: bool
    verbose: bool


def run_batch(config: BatchConfig, inputs: Inputs, on_row: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Run the job on ``inputs`` (``resolve_inputs``); return its summary (failures are rows in it, never an
    exception; an output that cannot be written, or a worker that keeps dying, stops the job with an error)."""
    out_dir = config.out_dir
    with output_folder(out_dir), lock_folder(out_dir):
        rows = fold_journals(out_dir)  # rows of a run that was killed before it could fold its own
        output_collisions(inputs, out_dir)
        plan = make_plan(inputs, out_dir, rows, artifact_sha256=config.job.artifact_sha256, fmt=config.job.format,
                         y_up=config.job.y_up, force=config.force, retry_failed=config.retry_failed)  # fmt: skip
        done: list[dict[str, Any]] = []
        progress = Progress(len(plan.pending) + len(inputs.missing), config.progress)
        seconds = ray_start_s = 0.0

        def record(row: dict[str, Any]) -> None:
            done.append(row)
            progress.update(row)
            if on_row is not None:
                on_row(row)

        try:
            _record_missing(inputs, config, record)
            if plan.pending:
                seconds, ray_start_s = execute(config, inputs, plan, record)
                _record_lost(plan, done, config, record)
        finally:
            progress.close()
            workers = _actor_journals(out_dir)
            fold_journals(out_dir)
            for folder in sorted({(out_dir / item.output).parent for item in plan.pending}):
                for stale in sweep_stale(folder):  # temporaries of workers killed mid-write
                    echo(stale.note())
    return Summary(
        images=len(inputs.files) + len(inputs.missing), skipped=len(plan.done), failed_before=len(plan.failed_before),
        ok=sum(row["status"] == "ok" for row in done), failed=sum(row["status"] == "failed" for row in done),
        artifact=config.job.artifact, artifact_sha256=config.job.artifact_sha256, actors=_actors_text(config.actors),
        seconds=seconds, ray_start_s=ray_start_s, workers=workers, rows=done,
    )  # fmt: skip


def _actor_journals(out_dir: Path) -> int:
    """Journals of processes other than this driver: one per actor process started (a restart adds one)."""
    return sum(not path.name.startswith(f"journal-{os.getpid()}-") for path in journal_paths(out_dir))


def _actors_text(actors: tuple[int, int]) -> str:
    return str(actors[0]) if actors[0] == actors[1] else f"{actors[0]}-{actors[1]}"


def _driver_row(config: BatchConfig, uri: str, error: str) -> dict[str, Any]:
    from sharp_export.batch.manifest import worker_name

    return new_row(input=uri, status="failed", error=error, exit_code=1, artifact=config.job.artifact,
                   artifact_sha256=config.job.artifact_sha256, format=config.job.format, y_up=config.job.y_up,
                   worker=worker_name(), written=False, finished=time.time())  # fmt: skip


def _record_missing(inputs: Inputs, config: BatchConfig, record: Callable[[dict[str, Any]], None]) -> None:
    """List-file entries that cannot be read become failed rows (the job goes on)."""
    if not inputs.missing:
        return
    journal = Journal(config.out_dir)
    try:
        for uri, why in inputs.missing:
            row = _driver_row(config, uri, f"{uri}: {why} (check the list file)")
            journal.append(row)
            record(row)
    finally:
        journal.close()


def _record_lost(plan: Plan, done: list[dict[str, Any]], config: BatchConfig, record: Callable) -> None:
    """A pending image that Ray's reader never delivered (deleted or unreadable since the listing): a failed row."""
    seen = {row["input"] for row in done}
    lost = [item for item in plan.pending if item.uri not in seen]
    if not lost:
        return
    journal = Journal(config.out_dir)
    try:
        for item in lost:
            row = _driver_row(config, item.uri, f"{item.uri}: could not be read (gone since it was listed?)")
            journal.append(row)
            record(row)
    finally:
        journal.close()


class Progress:
    """A bar over images (done / failed / per second) on stderr; FAILED and warning lines above it."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", desc="batch", file=sys.stderr, disable=not enabled or total == 0,
                        dynamic_ncols=True, mininterval=0.5)  # fmt: skip
        self.ok = self.failed = 0
        self.total = total

    def _line(self, text: str) -> None:
        if self.bar.disable:
            echo(text)
        else:
            self.bar.write(text, file=sys.stderr)

    def update(self, row: dict[str, Any]) -> None:
        if row["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self._line(f"[{self.ok + self.failed}/{self.total}] FAILED: {row['error']}")
        for note in (row["warnings"] or "").split("; "):
            if note:
                self._line(f"warning: {row['input']}: {note}")
        self.bar.set_postfix(done=self.ok, failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ---- Ray ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(config: BatchConfig) -> Iterator[None]:
    """ray.init for the run and ray.shutdown after it: a local Ray (loopback only, files under a fresh temporary
    folder, removed afterwards unless -v) or a connection to ``config.address``."""
    import ray

    temp = None
    quiet = logging.INFO if config.verbose else logging.WARNING
    if not config.verbose:  # a local, loopback-only Ray: its token-auth notice is noise to a CLI user
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if config.address is None:
        # Short: Ray's unix sockets live under it (a path limit of about 107 bytes).
        temp = tempfile.mkdtemp(prefix="sxray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        # worker_niceness 0: Ray runs its workers at nice 15 by default, so on a shared machine the actors would
        # yield the CPU to everything else while a plain `run` would not; a local job runs at the command's priority.
        ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 _temp_dir=temp, _node_ip_address="127.0.0.1", logging_level=quiet, log_to_driver=config.verbose,
                 configure_logging=True, _system_config={"worker_niceness": 0})  # fmt: skip
    else:
        ray.init(address=config.address, logging_level=quiet, log_to_driver=config.verbose)
    try:
        yield
    finally:
        ray.shutdown()
        if temp is not None:
            if config.verbose:
                echo(f"note: Ray's logs of this run are in {temp}")
            else:
                shutil.rmtree(temp, ignore_errors=True)


def _check_gpus(config: BatchConfig) -> None:
    import ray

    if config.gpus_per_actor <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0.0)
    need = config.actors[0] * config.gpus_per_actor
    if have < need:
        where = "this machine" if config.address is None else "the cluster"
        raise UserInputError(
            f"--actors {config.actors[0]} x --gpus-per-actor {config.gpus_per_actor:g} needs {need:g} GPUs; "
            f"Ray sees {have:g} on {where}",
            fix="fewer actors, a fraction of a GPU per actor (0.5 puts two on one GPU), or --gpus-per-actor 0",
        )


def execute(config: BatchConfig, inputs: Inputs, plan: Plan, record: Callable[[dict[str, Any]], None]):
    """Run the pending images on Ray; returns (seconds of the dataset, seconds to start Ray)."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy
    from ray.util.annotations import RayDeprecationWarning

    started = time.perf_counter()
    with ray_session(config):
        ray_start_s = time.perf_counter() - started
        _check_gpus(config)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is over images
        context.print_on_execution_start = False
        context.raise_original_map_exception = True
        # Ray Data's notices (its own progress bars are off, ...) only with -v; its errors always.
        logging.getLogger("ray.data").setLevel(logging.INFO if config.verbose else logging.ERROR)
        work = ray.put(plan.work)  # one copy for every actor; held here, so a restarted actor finds it
        low, high = config.actors
        dataset = ray.data.read_binary_files(
            [item.path for item in plan.pending], include_paths=True, filesystem=inputs.filesystem,
            ignore_missing_paths=True, num_cpus=0, concurrency=max(2, 2 * high),
        )  # fmt: skip
        # num_cpus=0 for the reads: they wait on storage, and on a small machine the actors hold every CPU.
        with warnings.catch_warnings():
            # Ray 2.60 takes max_task_retries only through **ray_remote_args, which it marks deprecated for 2.64
            # (the extra pins ray below 2.61).
            warnings.simplefilter("ignore", RayDeprecationWarning)
            dataset = dataset.map_batches(
                SceneWriter, batch_size=config.batch_size, batch_format="numpy",
                compute=ActorPoolStrategy(min_size=low, max_size=high), num_cpus=config.cpus_per_actor,
                num_gpus=config.gpus_per_actor or None, max_task_retries=MAX_TASK_RETRIES,
                fn_constructor_kwargs={"model": config.model, "job": config.job, "work": work},
            )  # fmt: skip
        start = time.perf_counter()
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    record(row)
        except Exception as error:
            raise job_error(error) from None
        return time.perf_counter() - start, ray_start_s


def job_error(error: BaseException) -> BaseException:
    """The one-line error of a failed Ray job: our own error raised in an actor (an output that cannot be
    written, a model that cannot be opened), or what Ray says."""
    seen: BaseException | None = error
    while seen is not None:
        cause = getattr(seen, "cause", None)
        if isinstance(cause, SharpExportError):
            return cause
        if isinstance(seen, SharpExportError) and type(seen).__module__.startswith("sharp_export"):
            return seen
        seen = seen.__cause__ or seen.__context__
    import ray.exceptions

    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if isinstance(error, ray.exceptions.RayActorError) or "actor" in text.lower() and "died" in text.lower():
        return SharpExportError(
            f"a Ray worker died {MAX_TASK_RETRIES + 1} times on one batch ({text}); the images written so far are "
            "in the manifest",
            fix="rerun to resume; if it recurs, look for an image that exhausts memory (fewer actors, --batch-size 1)",
        )
    return error
