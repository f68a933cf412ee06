"""Runners: one way to run the raw predictor per runtime (``base.Runner``); the registry picks one per artifact."""

from sharp_export.runtime.base import Runner

__all__ = ["Runner"]
