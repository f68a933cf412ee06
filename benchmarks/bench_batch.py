"""Throughput of `sharp-export batch` on this machine, against a plain `sharp-export run` loop.

    python benchmarks/bench_batch.py --preset tiny [--images 40]
    python benchmarks/bench_batch.py --preset sharp --artifact /path/to/openvino_bf16 --images 6

Each configuration is one fresh command in a child process on the same photos (the bundled sample photos, copied
round-robin under distinct names), into an empty output folder:

* ``runT``: `sharp-export run ARTIFACT photos -o out` with OMP_NUM_THREADS=T (the plain loop batch competes with);
* ``AxC``: `sharp-export batch ARTIFACT photos -o out --actors A --cpus-per-actor C` (a local Ray).

Ray's overhead is AxC against runC with A=1: the same threads on the same photos. With --repeat R the configs run
interleaved R times (the machine is shared: its load changes) and the median of each number is reported.

Measured: the command's wall time (start-up included) and images/hour over it; the steady rate, from the output
files' modification times: (N - k) / (t_N - t_k) with k the number of parallel workers (the first k finish
together, so this leaves start-up out); the per-stage p50 of batch's manifest; the peak PSS of the whole process
tree (PSS: shared, memory-mapped weights counted once) and the lowest available memory seen. The run aborts (every
descendant killed by pid) if available memory falls below --min-available-gb: the machine has no swap.

Without --artifact, an OpenVINO bf16 artifact of the preset (seed 0) is exported first (the fastest CPU target
that needs no calibration). Saves benchmarks/results/batch_<preset>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from common import save

from sharp_export.samples import SAMPLE_NAMES, sample_image_path

CLI = [sys.executable, "-m", "sharp_export.cli"]


def photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        source = sample_image_path(SAMPLE_NAMES[i % len(SAMPLE_NAMES)])
        paths.append(folder / f"p{i:03d}_{source.name}")
        shutil.copyfile(source, paths[-1])
    return paths


class TreeMemory:
    """Samples the PSS of a process and its descendants, and the machine's available memory, once a second."""

    def __init__(self, process: subprocess.Popen, min_available_gb: float):
        self.root = psutil.Process(process.pid)
        self.min_available_gb = min_available_gb
        self.peak_pss_gb = 0.0
        self.lowest_available_gb = psutil.virtual_memory().available / 1e9
        self.aborted = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        while not self.stop.wait(1.0):
            total = 0
            for process in self.tree():
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak_pss_gb = max(self.peak_pss_gb, total / 1e9)
            available = psutil.virtual_memory().available / 1e9
            self.lowest_available_gb = min(self.lowest_available_gb, available)
            if available < self.min_available_gb:
                self.aborted = True
                for process in reversed(self.tree()):  # our own child and what it started, by pid
                    try:
                        process.kill()
                    except psutil.Error:
                        pass
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def steady_per_hour(times: list[float], workers: int) -> float | None:
    times = sorted(times)
    k = min(workers, len(times) - 1)
    if len(times) < 2 or times[-1] <= times[k - 1]:
        return None
    return (len(times) - k) / (times[-1] - times[k - 1]) * 3600.0


def measure(
    name: str, argv: list[str], out: Path, count: int, workers: int, threads: int, min_available_gb: float
) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"== {name}: {' '.join(argv)}", flush=True)
    log = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
        memory = TreeMemory(process, min_available_gb)
        code = process.wait()
        memory.close()
    wall = time.perf_counter() - start
    text = log.read_text()
    if memory.aborted:
        raise SystemExit(f"{name}: aborted, available memory fell below {min_available_gb} GB; log {log}")
    if code != 0:
        raise SystemExit(f"{name}: exit {code}\n{text[-3000:]}")
    scenes = sorted(out.glob("*.ply"))
    assert len(scenes) == count, (name, len(scenes))
    times = [p.stat().st_mtime for p in scenes]
    result = {
        "command": " ".join(argv[len(CLI) :]),
        "images": count,
        "wall_s": round(wall, 2),
        "images_per_hour": round(count / wall * 3600.0, 1),
        "steady_images_per_hour": _round(steady_per_hour(times, workers)),
        "peak_pss_gb": round(memory.peak_pss_gb, 2),
        "lowest_available_gb": round(memory.lowest_available_gb, 2),
    }
    manifest = out / "manifest.parquet"
    if manifest.exists():
        rows = pq.read_table(manifest).to_pylist()
        assert all(row["status"] == "ok" for row in rows)
        stages = ("decode", "preprocess", "model", "postprocess", "write")
        result["stage_p50_s"] = {s: round(sorted(r[f"{s}_s"] for r in rows)[len(rows) // 2], 4) for s in stages}
        result["summary"] = [line for line in text.splitlines() if line.startswith(("images", "time", "actors"))]
    print(f"   {result}", flush=True)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "sharp"], required=True)
    parser.add_argument("--artifact", type=Path, default=None, help="default: export OpenVINO bf16 of the preset")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--configs", default="run2,1x2,run1,1x1,2x1", help="runT and/or AxC (actors x CPUs each)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--min-available-gb", type=float, default=1.5)
    parser.add_argument("--margin-gb", type=float, default=3.0, help="left free when judging whether A actors fit")
    args = parser.parse_args()

    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix=".tmp-bench-batch-", dir=Path(__file__).resolve().parents[1]))
    try:
        artifact = args.artifact
        if artifact is None:
            artifact = work / "artifact"
            export = [*CLI, "openvino", "--preset", args.preset, "--seed", "0", "--precision", "bf16", "--no-parity",
                      "-o", str(artifact)]  # fmt: skip
            subprocess.run(export, check=True, capture_output=True)
        inputs = photos(work / "in", args.images)
        runs: dict[str, list[dict]] = {config: [] for config in args.configs.split(",")}
        skipped: dict[str, str] = {}
        for _ in range(args.repeat):
            for config in runs:
                reason = too_big(config, runs, args.margin_gb)
                if reason is not None:
                    skipped[config] = reason
                    print(f"== {config}: skipped, {reason}", flush=True)
                    continue
                out = work / f"out-{config}"
                if config.startswith("run"):
                    threads, workers = int(config[3:]), 1
                    argv = [*CLI, "run", str(artifact), str(work / "in"), "-o", str(out)]
                else:
                    actors, threads = (int(v) for v in config.split("x"))
                    argv = [*CLI, "batch", str(artifact), str(work / "in"), "-o", str(out), "--actors", str(actors),
                            "--cpus-per-actor", str(threads), "--no-progress"]  # fmt: skip
                    workers = actors
                runs[config].append(measure(config, argv, out, len(inputs), workers, threads, args.min_available_gb))
                shutil.rmtree(out)
        results = {config: summarise(values) for config, values in runs.items() if values}
        overhead = {}
        for threads in (1, 2):
            run, ray = results.get(f"run{threads}"), results.get(f"1x{threads}")
            if run and ray:
                overhead[f"{threads} thread(s)"] = {
                    "extra_wall_s": round(ray["wall_s"] - run["wall_s"], 2),
                    "steady_rate_batch_over_run": _ratio(ray["steady_images_per_hour"], run["steady_images_per_hour"]),
                }
        save(f"batch_{args.preset}", {
            "command": "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]),
            "preset": args.preset,
            "artifact": str(args.artifact) if args.artifact else "openvino bf16 (seed 0), exported by this script",
            "images": [p.name for p in inputs],
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "configs": results,
            "skipped": skipped,
            "ray_overhead": overhead,
            "ray_overhead_is": "batch with 1 actor x T CPUs against run with T threads, medians: the extra wall time "
            "is Ray's and the actor's start (once per job); the steady ratio is the per-image cost (1.0: none)",
            "method": "each config a fresh child process on the same photos; wall includes start-up; steady = "
            "(N - k) / (t_N - t_k) over the output files' mtimes, k parallel workers; PSS of the process tree",
        })  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def too_big(config: str, runs: dict[str, list[dict]], margin_gb: float) -> str | None:
    """Why A actors (A > 1) must not start: A x the peak PSS of one actor, measured first, would leave less than
    ``margin_gb`` of the memory available now (an overestimate: weights memory-mapped by both count twice)."""
    if config.startswith("run") or int(config.split("x")[0]) == 1:
        return None
    actors = int(config.split("x")[0])
    one = [v["peak_pss_gb"] for name, values in runs.items() if name.startswith("1x") for v in values]
    if not one:
        return "no 1-actor configuration was measured first to size it"
    need, available = actors * max(one), psutil.virtual_memory().available / 1e9
    if need > available - margin_gb:
        return (
            f"{actors} actors need about {need:.1f} GB ({actors} x the 1-actor peak PSS), {available:.1f} GB available"
        )
    return None


def summarise(values: list[dict]) -> dict:
    """Medians of the numbers over the repeats, every repeat's value kept."""
    first = values[0]
    result = {key: first[key] for key in ("command", "images")}
    for key in ("wall_s", "images_per_hour", "steady_images_per_hour", "peak_pss_gb", "lowest_available_gb"):
        found = [v[key] for v in values if v[key] is not None]
        result[key] = statistics.median(found) if found else None
        result[f"{key}_each"] = [v[key] for v in values]
    if "stage_p50_s" in first:
        result["stage_p50_s"] = {
            k: statistics.median(v["stage_p50_s"][k] for v in values) for k in first["stage_p50_s"]
        }
        result["summary_of_the_last"] = values[-1]["summary"]
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a / b, 3)


if __name__ == "__main__":
    main()
