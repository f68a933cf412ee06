"""Helpers shared by the benchmark scripts: machine info, JSON output, child-process peak RSS, tiny int8 setup."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


# CPU features that change which kernels run (int8 dot products, bf16, AMX tiles): numbers from machines with
# different sets are not comparable (ONNX Runtime's u8s8 int8 even changes its results without VNNI).
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                         "amx_bf16")  # fmt: skip


def cpu_description() -> dict:
    """CPU model name and the ISA flags of interest, from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if flags_line else set()
    return {"cpu_model": model, "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags]}


def machine_info() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        **cpu_description(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    print(f"saved {path}")
    return path


def _pss_bytes(pid: int, stat_fields: list[str]) -> int:
    """Proportional set size of ``pid`` (a page shared by n processes counts 1/n), from /proc/PID/smaps_rollup;
    its RSS where that file is missing. Summing RSS would count a forked child's shared pages twice (OpenVINO's
    telemetry forks the whole process to send an event)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(stat_fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24 of stat: rss in pages


def tree_memory_bytes(pid: int) -> int:
    """Memory of ``pid`` and all its descendants: the sum of their PSS (Linux /proc; 0 elsewhere)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += _pss_bytes(current, stats[current])
        todo.extend(children.get(current, []))
    return total


@dataclass
class TreeRun:
    exit_code: int
    wall_s: float
    tree_peak_bytes: int  # the command and its children together (sum of PSS), sampled
    output: str  # stdout + stderr, when captured


def run_tree_sampled(command: list[str], *, log: Path | None = None, env: dict | None = None,
                     every_s: float = 0.25) -> TreeRun:  # fmt: skip
    """Run ``command`` (output to ``log``, else captured), sampling its process tree's memory every ``every_s``."""
    import threading
    import time

    start = time.perf_counter()
    peak = 0
    stream = log.open("w") if log is not None else subprocess.PIPE
    try:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, text=True, env=env)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(every_s):
                peak = max(peak, tree_memory_bytes(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = process.communicate()
        done.set()
        sampler.join()
    finally:
        if log is not None:
            stream.close()
    return TreeRun(process.returncode, round(time.perf_counter() - start, 2), peak, output or "")


def run_child(code: str) -> dict:
    """Run ``code`` in a fresh Python process (so peak RSS is its own); it must print one JSON line last."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


WEIGHTS_TINY = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_tiny" / "weights_perturbed.safetensors"


@dataclass
class TinyPattern:
    """The int8 studies' common ground: the tiny preset with the golden perturbed weights, the golden pattern and
    its torch fp32 Gaussians, and the calibration set of the bundled sample photos."""

    example: Any  # ExampleInputs: image [1, 3, 384, 384], disparity_factor [1]
    reference: Any  # Gaussians3D, torch fp32 on the pattern
    calibration: Any  # CalibrationSet of the 5 sample photos
    io: Any  # IOSpec of a batch-1 tiny ONNX

    def score_onnx(self, path: Path) -> dict:
        """p99 and max of every attribute metric, the ONNX at ``path`` in ONNX Runtime CPU against torch fp32."""
        from sharp_export.parity.compare import compare_gaussians
        from sharp_export.parity.tolerances import PROFILES
        from sharp_export.runtime.onnxruntime_runner import OnnxRuntimeRunner

        with OnnxRuntimeRunner(path, self.io) as runner:
            candidate = runner.infer(self.example.image, self.example.disparity_factor)
        found = compare_gaussians(self.reference, candidate, dict(PROFILES["int8-tensorrt"]), space="raw")
        return {
            "p99": {r.metric: round(float(r.p99), 5) for r in found},
            "max": {r.metric: round(float(r.max), 5) for r in found},
        }


def tiny_pattern() -> TinyPattern:
    from sharp_export.artifact import raw_io_spec
    from sharp_export.calibration.dataset import load_calibration_set
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.reference.gaussians import Gaussians3D
    from sharp_export.samples import example_inputs

    model = build_model("tiny", WEIGHTS_TINY).model.eval()
    example = example_inputs(384, 1)
    with torch.no_grad():
        reference = Gaussians3D(*model(example.image, example.disparity_factor))
    return TinyPattern(example, reference, load_calibration_set("samples", 384, None), raw_io_spec(384, 1))
