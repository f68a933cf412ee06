"""Calibration sets for reduced-precision exports (int8): real photos in, preprocessed inputs and a hash out.

Target-neutral: see ``sharp_export.calibration.dataset``; converters import it, never the other way round.
"""
