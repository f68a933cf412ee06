"""Study helper (issue 33): torch fp32 references on the golden pattern for benchmarks/study_int8_full_live.py.

    python benchmarks/study_full_live_refs.py WEIGHTS.safetensors OUT_DIR

Writes OUT_DIR/pattern.npz (the five Gaussian fields, the disparity, the inputs) and OUT_DIR/pattern_prerelu.npy
(the disparity head's last conv output, before its ReLU). Full preset: ~8 GB; run it alone on a small machine.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

from sharp_export.reference.checkpoint import build_model
from sharp_export.reference.model.composer import flatten_grids
from sharp_export.samples import example_inputs

W = Path(sys.argv[1])
out = Path(sys.argv[2])
out.mkdir(exist_ok=True)
model = build_model("sharp", W).model.to(memory_format=torch.channels_last).eval()
store = {}
model.monodepth_model.monodepth_predictor.head[4].register_forward_hook(
    lambda m, i, o: store.__setitem__("pre", o.detach().clone())
)
ex = example_inputs(1536, 1)
t = time.perf_counter()
with torch.no_grad():
    x = ex.image.contiguous(memory_format=torch.channels_last)
    mono = model.monodepth_model(x)
    g = flatten_grids(model.grids_from_disparity(x, ex.disparity_factor, mono.disparity, mono.encodings))
arrays = {
    f: np.asarray(v, dtype=np.float32)
    for f, v in zip(("mean_vectors", "singular_values", "quaternions", "colors", "opacities"), g, strict=True)
}
arrays["disparity"] = mono.disparity.contiguous().numpy()
arrays["image"] = ex.image.numpy()
arrays["disparity_factor"] = ex.disparity_factor.numpy()
np.savez(out / "pattern.npz", **arrays)
pre = store["pre"][0].contiguous().numpy()
np.save(out / "pattern_prerelu.npy", pre)
d = arrays["disparity"][0]
print(
    "pattern",
    round(time.perf_counter() - t, 1),
    "s; pre-relu range",
    pre.min(),
    pre.max(),
    "zero frac",
    (d == 0).mean(),
    "dmax",
    d.max(),
)
z = arrays["mean_vectors"][0, :, 2]
print("z quantiles", np.percentile(z, [0, 1, 50, 99, 100]))
