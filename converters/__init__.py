"""Converters: one folder per target, each with its registry row in ``<target>/target.py``.

``BUILTIN_TARGETS`` is the list the registry (``sharp_export/registry.py``) starts from; its order is the order of
`sharp-export --help` and `sharp-export env`. A row module imports its toolchain (and torch) only inside its
functions, so importing this package is cheap and works without any optional extra installed.
"""

from __future__ import annotations

from sharp_export.converters.coreml.target import COREML_TARGET
from sharp_export.converters.executorch.target import EXECUTORCH_TARGET
from sharp_export.converters.onnx.target import ONNX_TARGET
from sharp_export.converters.openvino.target import OPENVINO_TARGET
from sharp_export.converters.tensorrt.target import TENSORRT_TARGET
from sharp_export.converters.tensorrt_rtx.target import TENSORRT_RTX_TARGET

BUILTIN_TARGETS = (ONNX_TARGET, COREML_TARGET, TENSORRT_TARGET, TENSORRT_RTX_TARGET, OPENVINO_TARGET, EXECUTORCH_TARGET)
