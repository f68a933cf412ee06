"""Converters: importing this package registers every built-in target in ``sharp_export.targets``.

Each module registers one Target at import and imports its toolchain only inside functions, so this
import is cheap and works without any optional extra installed.
"""

from __future__ import annotations

import importlib
import importlib.util

# Registration order is the order of `sharp-export --help` and `sharp-export env`.
_CONVERTER_MODULES = ("onnx", "coreml", "tensorrt")

for _name in _CONVERTER_MODULES:
    # coreml.py is written separately; until it exists the registry simply has no coreml row.
    # An existing module that fails to import is a bug and must raise, so only absence is tolerated.
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")
