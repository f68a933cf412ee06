"""sharp_export/progress.py: handing freed heap memory back before the next stage (issue 31).

The export frees the conversion's buffers before its parity check starts a runner; without malloc_trim glibc keeps
them resident (full preset, ExecuTorch int8: 5.6 GB still held when the check began).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A fresh interpreter, so the heap is in a known state. Freeing a 16 MB mmapped block raises glibc's mmap threshold
# to 16 MB; the 4 MB blocks after it then come from the heap, and the small block after each keeps the heap from
# shrinking at its top when they are freed: that is how a long conversion leaves gigabytes resident.
CHILD = r"""
import json
from sharp_export.progress import give_freed_memory_back, rss_gb
first = bytearray(16 << 20)
del first
blocks, pins = [], []
for _ in range(100):
    blocks.append(bytearray(4 << 20))
    pins.append(bytearray(1000))
allocated = rss_gb()
del blocks
freed = rss_gb()
give_freed_memory_back()
print(json.dumps({"allocated": allocated, "freed": freed, "trimmed": rss_gb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_handed_back():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60)
    rss = json.loads(done.stdout)
    # Measured: 0.436 GB allocated, 0.436 GB still resident after the blocks were freed, 0.017 GB after the trim.
    assert rss["freed"] > rss["allocated"] - 0.05  # freeing alone returned (almost) nothing: the premise holds
    assert rss["trimmed"] < rss["freed"] - 0.3  # the 400 MB went back to the system
