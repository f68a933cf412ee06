"""Converters: importing this package registers every built-in target in ``sharp_export.targets``.

Each listed module registers one Target row at import and imports its toolchain (and torch) only inside
functions, so this import is cheap and works without any optional extra installed. A listed module that
is missing or fails to import is a bug, and the import error says so.
"""

from __future__ import annotations

import importlib

# The registry list: registration order is the order of `sharp-export --help` and `sharp-export env`.
# A new target is one module here (its row + convert) and one runner in runtime/.
CONVERTER_MODULES = ("onnx", "coreml", "tensorrt", "openvino")

for _name in CONVERTER_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
