"""Which ExecuTorch program moves the outputs at full size (issue 31's ExecuTorch fp32 finding).

    python benchmarks/study_executorch_stages_full.py ARTIFACT_DIR WEIGHTS.safetensors > stages.jsonl

Runs the reference's eager stage chain on the golden pattern, then each program of a ``--split stages`` artifact on
the eager chain's own inputs (so each program's difference is its own, not inherited), and prints one JSON line per
output: max / mean abs difference and the reference's abs max. Needs ~8 GB and one full eager forward.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sharp_export.artifact import read_manifest
from sharp_export.converters.executorch.stages import STAGES, eager_functions, run_chain
from sharp_export.reference.checkpoint import build_model
from sharp_export.runtime.executorch_runner import open_executorch_artifact
from sharp_export.samples import example_inputs


def main() -> None:
    artifact, weights = Path(sys.argv[1]), sys.argv[2]
    manifest = read_manifest(artifact)
    torch.set_grad_enabled(False)
    model = build_model("sharp", weights, None).model.eval()
    example = example_inputs(1536, 1)
    chunk = next(p["patch_batch"] for p in manifest.conversion["programs"] if p.get("patch_batch"))
    values = run_chain(STAGES, eager_functions(model, STAGES), example.image, example.disparity_factor, chunk=chunk)
    del model
    runner = open_executorch_artifact(artifact, manifest.conversion, manifest.io, "cpu")
    runner.open()
    for spec in runner.programs:
        outputs = runner.run_stage(spec, [values[name] for name in spec.inputs])
        runner.loaded.pop(spec.name, None)
        for name, got in zip(spec.outputs, outputs, strict=True):
            want, diff = values[name], (got - values[name]).abs()
            line = {"stage": spec.name, "output": name, "shape": list(want.shape), "max_abs": float(diff.max()),
                    "mean_abs": float(diff.mean()), "ref_absmax": float(want.abs().max())}  # fmt: skip
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
