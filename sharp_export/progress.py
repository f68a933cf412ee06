"""Progress output for long work: numbered stage lines and a heartbeat with elapsed time and RSS.

Full-size exports spend minutes inside single opaque calls (torch.export, ct.convert, ORT session
creation); a heartbeat line every few seconds tells the user the process is alive and how much memory
it holds. Everything goes to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

import psutil


def rss_gb() -> float:
    """Resident memory of this process in GB."""
    return psutil.Process().memory_info().rss / 1e9


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB (Linux/macOS ru_maxrss)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kB, macOS bytes.
    return peak / 1e9 if sys.platform == "darwin" else peak * 1e3 / 1e9


def echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def heartbeat(label: str, every_s: float = 15.0) -> Iterator[None]:
    """Print '<label>: 45 s elapsed, RSS 5.1 GB' every ``every_s`` seconds while the block runs."""
    stop = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not stop.wait(every_s):
            echo(f"    ... {label}: {time.perf_counter() - start:.0f} s elapsed, RSS {rss_gb():.1f} GB")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Stages:
    """Numbered stage lines: ``[2/5] export onnx ... 64.1 s``, each with a heartbeat."""

    def __init__(self, total: int, heartbeat_s: float = 15.0):
        self.total = total
        self.index = 0
        self.heartbeat_s = heartbeat_s
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.index += 1
        prefix = f"[{self.index}/{self.total}] {name}"
        echo(f"{prefix} ...")
        start = time.perf_counter()
        with heartbeat(name, self.heartbeat_s):
            yield
        elapsed = time.perf_counter() - start
        self.timings[name] = round(elapsed, 3)
        echo(f"{prefix} done in {elapsed:.1f} s (RSS {rss_gb():.1f} GB)")
