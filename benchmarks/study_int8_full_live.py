"""Study driver (issue 33): int8 fake-quant variants of the full fp32 ONNX on the golden pattern, vs torch fp32.

    STUDY_FP32=DIR/model.onnx STUDY_REFS=REFS STUDY_RANGES=RANGES.json \
        python benchmarks/study_int8_full_live.py VARIANTS.json RESULTS.json pattern

VARIANTS.json maps a name to which Conv / MatMul nodes stay float (``float_modules``, ``only_modules``,
``float_op_suffix``, ...), ``weight_bits`` (7 or 8), ``symmetric_activations`` (TensorRT's int8 rules),
``outputs_float`` (no QDQ on a Conv / MatMul output that no quantized node reads) and ``disp_only`` (run only up
to the disparity head's last conv). REFS holds
``pattern.npz`` and ``pattern_prerelu.npy`` from ``benchmarks/study_full_live_refs.py``; RANGES the MinMax ranges
(``int8_sim.save_ranges``). The numbers in ``benchmarks/results/int8_full_live_study.json`` came from this script
when it lived in a scratch folder with the old module paths (converters/onnx_graph.py, onnx_quantize.py); only the
imports and the ranges variable changed since. The section ``int8_live_vits_weight_bits`` was run with this file as
committed (2026-12-07, third session).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_sim as sim  # noqa: E402

from sharp_export.converters.onnx.graph import module_paths, node_namespace  # noqa: E402
from sharp_export.converters.onnx.quantize import INT8_EXCLUDED_MODULES, excluded_nodes  # noqa: E402
from sharp_export.parity.compare import compare_gaussians  # noqa: E402
from sharp_export.reference.gaussians import Gaussians3D  # noqa: E402

FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")
FP32 = Path(os.environ.get("STUDY_FP32", ".tmp-33/onnx_fp32/model.onnx"))
REFS = os.environ.get("STUDY_REFS", ".tmp-33/refs")
RANGES = Path(os.environ.get("STUDY_RANGES", ".tmp-33/ranges_minmax_samples.json"))
DISP = "conv2d_37"  # the disparity head's last conv output (before the ReLU)


def node_path(node):
    p = module_paths(node_namespace(node) or "")
    return p[-1] if p else ""


def metrics(ref, outs):
    cand = Gaussians3D(*[torch.from_numpy(x) for x in outs[:5]])
    refg = Gaussians3D(*[torch.from_numpy(ref[f]) for f in FIELDS])
    res = compare_gaussians(refg, cand, None)
    out = {r.metric: [round(r.p99, 5), round(r.max, 5)] for r in res}
    zr, zc = ref["mean_vectors"][0, :, 2], outs[0][0, :, 2]
    rel = np.abs(zc - zr) / zr
    n = rel.size // 2
    out["z_rel_median"] = round(float(np.median(rel)), 5)
    out["z_rel_p99_layer0"] = round(float(np.percentile(rel[:n], 99)), 5)
    out["z_rel_p99_layer1"] = round(float(np.percentile(rel[n:], 99)), 5)
    out["z_rel_mean"] = round(float(rel.mean()), 5)
    if len(outs) > 5:
        pre = outs[5][0]
        out["pre_relu_max"] = [round(float(pre[i].max()), 5) for i in range(2)]
        out["disp_positive_frac"] = [round(float((pre[i] > 0).mean()), 6) for i in range(2)]
        out["disp_max"] = round(float(max(pre.max(), 0)), 6)
        if "prerelu" in ref:
            err = np.abs(pre - ref["prerelu"])
            out["pre_relu_err_p99"] = round(float(np.percentile(err, 99)), 5)
            out["pre_relu_err_max"] = round(float(err.max()), 5)
            out["pre_relu_err_mean"] = round(float(err.mean()), 5)
    return out


def disp_metrics(ref, pre):
    pre = pre[0]
    out = {
        "pre_relu_max": [round(float(pre[i].max()), 5) for i in range(2)],
        "disp_positive_frac": [round(float((pre[i] > 0).mean()), 6) for i in range(2)],
        "disp_max": round(float(max(pre.max(), 0)), 6),
    }
    if "prerelu" in ref:
        dr, dc = np.maximum(ref["prerelu"], 1e-4), np.maximum(pre, 1e-4)
        zr, zc = 1.0 / (dr + 1e-3 * dr.max()), 1.0 / (dc + 1e-3 * dc.max())
        zrel = np.abs(zc - zr) / zr
        out.update(
            zproxy_rel_median=round(float(np.median(zrel)), 5),
            zproxy_rel_p99=round(float(np.percentile(zrel, 99)), 5),
            zproxy_rel_p99_layer0=round(float(np.percentile(zrel[0], 99)), 5),
            zproxy_rel_p99_layer1=round(float(np.percentile(zrel[1], 99)), 5),
        )
        err = np.abs(pre - ref["prerelu"])
        out.update(
            pre_relu_err_p99=round(float(np.percentile(err, 99)), 5),
            pre_relu_err_max=round(float(err.max()), 5),
            pre_relu_err_mean=round(float(err.mean()), 5),
        )
    return out


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())  # {"name": {...variant...}}
    out_path = Path(sys.argv[2])
    inputs = sys.argv[3].split(",") if len(sys.argv) > 3 else ["pattern"]
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    model = sim.load_skeleton(FP32)
    nodes = {n.name: n for n in model.graph.node}
    paths = {n.name: node_path(n) for n in model.graph.node}
    base_excl = excluded_nodes(model.graph, INT8_EXCLUDED_MODULES)
    full = sim.plan_qdq(model, base_excl)
    ranges = sim.load_ranges(RANGES)
    wsc_cache = {}
    consumers: dict[str, set] = {}  # tensor -> the nodes that read it (for outputs_float)
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.name)
    refs = {name: dict(np.load(f"{REFS}/{name}.npz")) for name in inputs}
    for name in inputs:
        if Path(f"{REFS}/{name}_prerelu.npy").exists():
            refs[name]["prerelu"] = np.load(f"{REFS}/{name}_prerelu.npy")
    for name, v in spec.items():
        if name in results and all(i in results[name] for i in inputs):
            continue
        t0 = time.perf_counter()
        excl = set(base_excl)
        for pat in v.get("float_modules", []):  # node path contains pat -> excluded (kept float)
            excl |= {n for n, p in paths.items() if pat in p}
        only = v.get("only_modules")
        if only is not None:
            keep = {n for n, p in paths.items() if any(pat in p for pat in only)}
            excl |= {n for n in nodes if n not in keep}
        for pat in v.get("float_op_nodes", []):  # "OpType@pathpattern"
            op, pp = pat.split("@")
            excl |= {n for n, p in paths.items() if nodes[n].op_type == op and pp in p}
        for pat in v.get("float_op_suffix", []):  # "OpType@suffix": node path ends with suffix
            op, suf = pat.split("@")
            excl |= {n for n, p in paths.items() if nodes[n].op_type == op and p.endswith(suf)}
        plan = sim.plan_qdq(model, excl)
        r = dict(ranges)
        if v.get("ranges"):
            r.update(sim.load_ranges(Path(v["ranges"])))
        float_acts = set(v.get("float_tensors", []))
        if v.get("outputs_float"):  # quantize what a Conv / MatMul reads, not what it writes for float ops
            quantized = {n for n, node in nodes.items() if node.op_type in sim.OP_TYPES and n not in excl}
            float_acts |= {a for a in plan.activations if not (consumers.get(a, set()) & quantized)}
        bits = v.get("weight_bits", 7)
        if bits not in wsc_cache:
            wsc_cache[bits] = sim.weight_scales(FP32, model, full, bits)
        wsc = wsc_cache[bits]
        var = FP32.with_name(f"variant_{name}.onnx")
        counts = sim.write_variant(
            FP32,
            var,
            plan,
            r,
            wsc,
            float_activations=float_acts,
            float_weights=v.get("float_weights", []) if not v.get("float_all_weights") else list(plan.weights),
            extra_outputs=[DISP],
            only_outputs=[DISP] if v.get("disp_only") else None,
            symmetric_activations=v.get("symmetric_activations", False),
        )
        sess = sim.ort_session(var)
        entry = results.get(name, {"spec": v, "counts": counts})
        for inp in inputs:
            ref = refs[inp]
            t = time.perf_counter()
            feeds = {"image": ref["image"], "disparity_factor": ref["disparity_factor"]}
            feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
            outs = sess.run(None, feeds)
            entry[inp] = disp_metrics(ref, outs[0]) if v.get("disp_only") else metrics(ref, outs)
            entry[inp]["run_s"] = round(time.perf_counter() - t, 1)
            print(name, inp, json.dumps(entry[inp]), flush=True)
        del sess
        var.unlink()
        entry["total_s"] = round(time.perf_counter() - t0, 1)
        results[name] = entry
        out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
