"""The Core ML target as one package; importing it registers the row (target.py), nothing heavier."""

from sharp_export.converters.coreml import target as target  # noqa: F401  (registers the coreml row)
