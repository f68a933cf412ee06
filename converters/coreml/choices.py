"""The coreml target's option values and file names: what both the row (target.py) and the converter use.

A leaf module (no toolchain, no torch), so the row can import it and `sharp-export --help` stays instant.
"""

from __future__ import annotations

MODEL_FILE = "model.mlpackage"
DEPLOYMENT_TARGETS = ("iOS17", "iOS18", "macOS14", "macOS15")
SPLITS = ("none", "components")
# Core ML compute units (the runner maps them to ct.ComputeUnit by name).
COMPUTE_UNIT_NAMES = ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only")
# --weights: none | int8 (linear symmetric per channel) | palettize4 / palettize6 (k-means LUT per tensor).
WEIGHT_MODES = ("none", "int8", "palettize4", "palettize6")
