"""Runners: one interface (open / infer / close) over torch, ONNX Runtime, TensorRT, Core ML."""

from sharp_export.runtime.base import Runner, open_runner

__all__ = ["Runner", "open_runner"]
