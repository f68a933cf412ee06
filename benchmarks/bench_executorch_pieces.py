"""Peak RSS and time of each program of an ExecuTorch artifact, each in a fresh process, as an app runs them.

An app that runs ``--split stages`` holds one program (its weights, XNNPACK's packed copy of them, its activations)
and the tensors passed between stages. This script runs the artifact once through its runner, keeping every
stage's inputs (numpy files in a scratch folder), then runs each program alone in a fresh Python process on those
inputs and records that process's peak RSS (VmHWM), its RSS before loading the program (the interpreter with torch
and ExecuTorch imported) and the load and run times. It works for an unsplit artifact too (one program).

    python benchmarks/bench_executorch_pieces.py ARTIFACT --name executorch_pieces_full_int8 [--sample coffee]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import run_child, save

CHILD = r"""
import json, resource, time
from pathlib import Path
import numpy as np, torch
from sharp_export.artifact import read_manifest
from sharp_export.runtime.executorch_runner import ExecuTorchRunner, ProgramSpec

def vm(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1e6  # kB -> GB
    return 0.0

artifact, scratch, index = Path({artifact!r}), Path({scratch!r}), {index}
manifest = read_manifest(artifact)
spec = ProgramSpec.from_details(manifest.conversion["programs"][index])
inputs = [torch.from_numpy(np.load(scratch / f"{{name}}.npy")) for name in spec.inputs]
from executorch.runtime import Runtime
Runtime.get()  # the import and the runtime's start are not the program's load
runner = ExecuTorchRunner(artifact, [spec], manifest.io, release=False)
base = vm("VmRSS:")
start = time.perf_counter()
runner.open()
load_s = time.perf_counter() - start
size = spec.patch_batch  # the patch encoder in its batches, every other program once on its whole inputs
starts = list(range(0, int(inputs[0].shape[0]), size)) if size else [0]
start = time.perf_counter()
for s in starts:
    runner.run_program(spec, [t[s : s + size] if size else t for t in inputs])
run_s = time.perf_counter() - start
print(json.dumps({{"program": spec.name, "rss_before_load_gb": round(base, 3), "peak_rss_gb": round(vm("VmHWM:"), 3),
                  "load_s": round(load_s, 2), "run_s": round(run_s, 2), "runs": len(starts)}}))
"""


def stage_inputs(artifact: Path, scratch: Path, image: torch.Tensor, factor: torch.Tensor) -> dict[str, list]:
    """Run the artifact's chain once, saving every program's inputs to ``scratch/<name>.npy``; returns the shapes."""
    from sharp_export.registry import open_runner

    shapes: dict[str, list] = {}
    values = {"image": image, "disparity_factor": factor}
    with open_runner(artifact) as runner:
        for spec in runner.programs:
            for name in spec.inputs:
                np.save(scratch / f"{name}.npy", values[name].numpy())
                shapes[name] = list(values[name].shape)
            inputs = [values[n] for n in spec.inputs]
            size = spec.patch_batch  # the patch encoder: batches of that many tiles; every other program: once
            starts = range(0, int(inputs[0].shape[0]), size) if size else [0]
            runs = [runner.run_program(spec, [t[s : s + size] if size else t for t in inputs]) for s in starts]
            values.update(
                {n: torch.cat(list(g), dim=0) for n, g in zip(spec.outputs, zip(*runs, strict=True), strict=True)}
            )
            runner.loaded.pop(spec.name, None)
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--name", required=True, help="results/<name>.json")
    parser.add_argument("--sample", default="coffee")
    args = parser.parse_args()

    from sharp_export.artifact import read_manifest
    from sharp_export.pipeline import load_photo
    from sharp_export.reference.preprocess import prepare_input
    from sharp_export.samples import sample_image_path

    manifest = read_manifest(args.artifact)
    resolution = int(manifest.io.inputs[0].shape[-1])
    photo = load_photo(sample_image_path(args.sample))
    image, factor = prepare_input(photo, resolution)
    scratch = Path(tempfile.mkdtemp(prefix="et-pieces-", dir=args.artifact.parent))
    try:
        shapes = stage_inputs(args.artifact, scratch, image, factor)
        pieces = []
        for index, details in enumerate(manifest.conversion["programs"]):
            code = CHILD.format(artifact=str(args.artifact.absolute()), scratch=str(scratch), index=index)
            line = run_child(code)
            line["bytes"] = details["bytes"]
            line["inputs_gb"] = round(
                sum(np.load(scratch / f"{n}.npy", mmap_mode="r").nbytes for n in details["inputs"]) / 1e9, 3
            )
            pieces.append(line)
            print(json.dumps(line))
    finally:
        shutil.rmtree(scratch)
    save(args.name, {
        "artifact": str(args.artifact),
        "preset": manifest.source["preset"],
        "precision": manifest.precision,
        "split": manifest.options.get("split"),
        "sample": args.sample,
        "method": "each program alone in a fresh Python process on the inputs the chain gave it: peak_rss_gb is "
        "that process's VmHWM (interpreter + torch + ExecuTorch + the program's inputs + the loaded program + its "
        "run); rss_before_load_gb is its RSS with the inputs loaded, before the program",
        "tensor_shapes": shapes,
        "pieces": pieces,
    })  # fmt: skip


if __name__ == "__main__":
    main()
