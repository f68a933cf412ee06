"""I/O of the Core ML programs: the tensor specs and coremltools' input/output types.

The program takes the image and the disparity factor and emits five rank-4 grids ([1, C*2, h, w],
channel = component*2 + layer); the host flattens them (runtime/coreml_runner.py), because Core ML limits
every dimension to ~16384 and the flat Gaussian axis has 1.18M entries.
"""

from __future__ import annotations

from typing import Any

from sharp_export.artifact import IOSpec, TensorSpec
from sharp_export.reference.gaussians import GAUSSIAN_FIELDS
from sharp_export.reference.model.composer import GRID_CHANNELS


def grid_io_spec(resolution: int, dtype: str = "float32") -> IOSpec:
    """The Core ML program's I/O: image + disparity_factor in, five rank-4 Gaussian grids out."""
    side = resolution // 2
    meanings = {
        "mean_vectors": "NDC x z means (x*z, y*z, z)",
        "singular_values": "scales (standard deviations), NDC x z",
        "quaternions": "rotation wxyz, unnormalised",
        "colors": "linear RGB in (0, 1)",
        "opacities": "opacity in (0, 1)",
    }
    layout = "; channel = component*2 + layer; flatten on the host: n = layer*h*w + row*w + col"
    outputs = tuple(
        TensorSpec(name, (1, 2 * channels, side, side), dtype, meanings[name] + layout)
        for name, channels in zip(GAUSSIAN_FIELDS, GRID_CHANNELS, strict=True)
    )
    inputs = (
        TensorSpec("image", (1, 3, resolution, resolution), "float32", "RGB, sRGB values in [0, 1], CHW"),
        TensorSpec("disparity_factor", (1,), "float32", "f_px / original image width (pixels/pixels)"),
    )
    return IOSpec(inputs, outputs)


def ct_inputs_outputs(io: IOSpec) -> tuple[list[Any], list[Any]]:
    import coremltools as ct
    import numpy as np

    inputs = [ct.TensorType(name=t.name, shape=tuple(t.shape), dtype=np.dtype(t.dtype).type) for t in io.inputs]
    outputs = [ct.TensorType(name=t.name, dtype=np.dtype(t.dtype).type) for t in io.outputs]
    return inputs, outputs
