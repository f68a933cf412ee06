"""sharp-export: export, parity-check, run and benchmark Apple's SHARP (one image -> 3D Gaussians)."""

__version__ = "0.1.0"
