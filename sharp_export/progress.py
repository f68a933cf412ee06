"""Progress output for long work: numbered stage lines and a heartbeat with elapsed time and RSS.

Full-size exports spend minutes inside single opaque calls (torch.export, ct.convert, ORT session
creation); a heartbeat line every few seconds tells the user the process is alive and how much memory
it holds. Everything goes to stderr so stdout stays machine-readable. The RSS readings themselves (current,
peak, and the resettable VmHWM that ``sharp-export bench`` uses per pass) live here too.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


def rss_bytes() -> int:
    """Resident memory of this process in bytes."""
    return int(psutil.Process().memory_info().rss)


def give_freed_memory_back() -> None:
    """Collect garbage, then ask glibc to hand freed heap pages back to the system (no-op off Linux / glibc).

    Freed Python and torch buffers below glibc's mmap threshold stay in the process's heap, and that threshold grows
    with every large block freed, so a conversion that allocated and freed gigabytes keeps them resident: the next
    stage (a runner checking parity) then stacks its own memory on top.
    """
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_gb() -> float:
    """Resident memory of this process in GB."""
    return rss_bytes() / 1e9


def _status_bytes(key: str) -> int | None:
    """A 'VmRSS:  1234 kB' style line of /proc/self/status in bytes, or None off Linux (or without the key)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def hwm_rss_bytes() -> int | None:
    """Peak resident memory (VmHWM) in bytes since start or since the last reset through clear_refs; None off Linux.

    Unlike ``peak_rss_gb`` (getrusage) it follows a reset: writing "5" to /proc/self/clear_refs lowers it to the
    current RSS, which is how ``sharp-export bench`` gives each timed pass its own peak.
    """
    return _status_bytes("VmHWM")


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB (Linux/macOS ru_maxrss)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kB, macOS bytes.
    return peak / 1e9 if sys.platform == "darwin" else peak * 1e3 / 1e9


# (terminal, log) while sharp_export.capture.capture_log runs: our lines go to both, the toolchains' to the log.
_ROUTES: list[tuple[Any, Any]] = []


def echo(message: str) -> None:
    """One line of ours on stderr (the terminal), and in the export log while one is captured."""
    if not _ROUTES:
        print(message, file=sys.stderr, flush=True)
        return
    terminal, log = _ROUTES[-1]
    log.write(message + "\n")
    print(message, file=terminal, flush=True)


@contextlib.contextmanager
def echo_to(terminal: Any, log: Any) -> Iterator[None]:
    """``echo`` writes to ``terminal`` and to ``log`` while the block runs."""
    _ROUTES.append((terminal, log))
    try:
        yield
    finally:
        _ROUTES.pop()


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
