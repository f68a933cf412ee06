"""Study helper (issue 33): run an OpenVINO IR on saved inputs (with the pre-ReLU disparity as an extra output) and
break its error down per Gaussian layer.

    STUDY_REFS=REFS python benchmarks/study_openvino_full_live.py IR.xml bf16 pattern OUT.json

REFS as written by benchmarks/study_full_live_refs.py.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from sharp_export.parity.compare import compare_gaussians
from sharp_export.reference.gaussians import Gaussians3D

REFS = os.environ.get("STUDY_REFS", ".tmp-33/refs_live")
FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
xml, hint, inputs = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
out_json = Path(sys.argv[4]) if len(sys.argv) > 4 else None
core = ov.Core()
core.set_property({"ENABLE_MMAP": False})
model = core.read_model(xml)
try:
    model.add_outputs(["conv2d_37"])
except Exception as error:  # noqa: BLE001
    print("no extra output:", error)
t = time.perf_counter()
compiled = core.compile_model(
    model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"}
)
print("compile", round(time.perf_counter() - t, 1), "s", compiled.get_property("INFERENCE_PRECISION_HINT"))
del model
names = [o.get_any_name() for o in compiled.outputs]
req = compiled.create_infer_request()
results = {}
for name in inputs:
    ref = dict(np.load(f"{REFS}/{name}.npz"))
    t = time.perf_counter()
    req.infer({"image": ref["image"], "disparity_factor": ref["disparity_factor"]})
    run_s = time.perf_counter() - t
    outs = {n: req.get_tensor(n).data.copy() for n in names}
    cand = Gaussians3D(*[torch.from_numpy(outs[f]) for f in FIELDS])
    refg = Gaussians3D(*[torch.from_numpy(ref[f]) for f in FIELDS])
    res = {r.metric: [round(r.p99, 5), round(r.max, 5)] for r in compare_gaussians(refg, cand, None)}
    zr, zc = ref["mean_vectors"][0, :, 2], outs["mean_vectors"][0, :, 2]
    rel = np.abs(zc - zr) / zr
    n = rel.size // 2
    res["run_s"] = round(run_s, 2)
    res["z_rel_median"] = float(np.median(rel))
    res["z_rel_p99_layer0"] = float(np.percentile(rel[:n], 99))
    res["z_rel_p99_layer1"] = float(np.percentile(rel[n:], 99))
    res["z_signed_median"] = float(np.median((zc - zr) / zr))
    sl_r, sl_c = np.log(ref["singular_values"][0]), np.log(outs["singular_values"][0])
    sle = np.abs(sl_c - sl_r)
    res["scales_log_p99_layer0"] = float(np.percentile(sle[:n], 99))
    res["scales_log_p99_layer1"] = float(np.percentile(sle[n:], 99))
    if "conv2d_37" in outs:
        pre = outs["conv2d_37"][0]
        d = np.maximum(pre, 0)
        res["disp_pre_relu_max"] = [float(pre[i].max()) for i in range(2)]
        res["disp_positive_frac"] = [float((d[i] > 0).mean()) for i in range(2)]
        res["disp_above_clamp_frac"] = [float((d[i] > 1e-4).mean()) for i in range(2)]
        res["disp_max"] = float(d.max())
        ref_pre = Path(f"{REFS}/{name}_prerelu.npy")
        if ref_pre.exists():
            rp = np.load(ref_pre)
            res["pre_relu_abs_err_p99"] = float(np.percentile(np.abs(pre - rp), 99))
            res["pre_relu_abs_err_max"] = float(np.abs(pre - rp).max())
    print(name, json.dumps(res), flush=True)
    results[name] = res
if out_json:
    out_json.write_text(json.dumps({"xml": xml, "hint": hint, "results": results}, indent=1))
