"""sha256 of a file, in chunks. A leaf module: checkpoints and artifacts both hash with it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """Hex sha256 of ``path``, read 8 MB at a time (checkpoints and weight files are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
