"""Write the perturbed weights of a preset (the real test vector) to a .safetensors file and print its sha256.

    python benchmarks/make_perturbed_weights.py                      # full preset -> ~/.cache/sharp-export/...
    python benchmarks/make_perturbed_weights.py --preset tiny -o w.safetensors

The weights are sharp-export's ``--seed 0`` weights with the golden bundle's perturbation
(``reference.checkpoint.perturb_state_dict``: noise from ``torch.Generator().manual_seed(1)`` in state_dict
order, std 0.5 for ``prediction_head.*``, 0.02 otherwise). Every command takes the file with ``-c FILE``. Seed 0
alone is degenerate (a zero prediction head: every Gaussian delta is 0), so full-size fidelity figures use these.

sharp-export's seed-0 draws are not ml-sharp's (module construction order differs), so the tiny file written here
is not byte-equal to ``tests/data/golden_tiny/weights_perturbed.safetensors``: the noise is, and the tensors whose
seed-0 value is a constant (zeros, ones, LayerScale 1e-5) come out bit-identical (``tests/test_checkpoint.py``).

The full file is 2.8 GB: keep it out of git. Peak RSS about 3 GB (the model, perturbed in place). The sha256 of
the full file made with torch 2.13.0 on x86-64 is ``SHARP_PERTURBED_SHA256`` below; the script says whether the
file it wrote matches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

# sha256 of the file this script writes for each preset, with torch 2.13.0+cpu (x86-64): torch's CPU generator and
# init functions are deterministic for one version; a different torch may draw different seed-0 weights.
EXPECTED_SHA256 = {
    "sharp": "a30fe01ba2bfb2eec7032b2d7d2c62193bab4c73694fbf1fc006ca0f023d1748",
    "tiny": "792df5023cab78c86445d02f927c72b69d0aaa7c0a1a3783cc1c2feb8cb90649",
    "sharp_live": "3f92a6333564cf44155fc5bec6943083eb656986555955be105a3a54d497f92b",
}


# The recipe's full-size weights leave the disparity head dead: its last conv's output (before the ReLU) lies in
# [-0.169, -0.047] over the five sample photos and the golden pattern, so every disparity is exactly 0 and every depth
# is the clamp's f / 1e-4. ``--live-disparity`` adds LIVE_DISPARITY_SHIFT to that conv's two biases (after the
# recipe), which moves the range to about [-0.02, 0.10]: a second vector, NOT the recipe, whose depth path is live
# (mostly small positive disparities, a few exact zeros), for studying depth error at full size.
LIVE_DISPARITY_KEY = "monodepth_model.monodepth_predictor.head.4.bias"
LIVE_DISPARITY_SHIFT = 0.15


def default_path(preset: str, live: bool = False) -> Path:
    from sharp_export.reference.checkpoint import cache_dir

    return cache_dir() / "weights" / f"{preset}_seed0_perturbed{'_live' if live else ''}.safetensors"


def write_perturbed(preset: str, out: Path, live: bool = False) -> dict:
    from safetensors.torch import save_file

    from sharp_export.reference.checkpoint import build_model, perturb_state_dict
    from sharp_export.reference.hashing import sha256_file

    start = time.perf_counter()
    model = build_model(preset, seed=0).model
    state = perturb_state_dict(model.state_dict())
    recipe = RECIPE
    if live:
        state[LIVE_DISPARITY_KEY].add_(LIVE_DISPARITY_SHIFT)
        recipe += f"; then {LIVE_DISPARITY_KEY} += {LIVE_DISPARITY_SHIFT} (live disparity, not the recipe)"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    # One metadata key: safetensors writes several in a varying order, and the sha256 must not vary.
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={"recipe": f"{recipe}; preset {preset}"})
    tmp.replace(out)
    sha = sha256_file(out)
    return {
        "preset": preset,
        "path": str(out),
        "bytes": out.stat().st_size,
        "sha256": sha,
        "expected_sha256": EXPECTED_SHA256.get(preset + ("_live" if live else "")),
        "matches_expected": EXPECTED_SHA256.get(preset + ("_live" if live else "")) == sha,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
    }


RECIPE = (
    "sharp-export --seed 0 weights (torch.manual_seed(0) before create_predictor), then every tensor in state_dict "
    "order += std * randn from torch.Generator().manual_seed(1); std 0.5 for prediction_head.*, 0.02 otherwise"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sharp", choices=("sharp", "tiny"))
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: ~/.cache/sharp-export/weights/")
    parser.add_argument("--live-disparity", action="store_true", help="a second vector with a live disparity head")
    args = parser.parse_args()
    out = args.output or default_path(args.preset, args.live_disparity)
    result = write_perturbed(args.preset, out, args.live_disparity)
    for key, value in result.items():
        print(f"{key}: {value}")
    if result["expected_sha256"] is not None and not result["matches_expected"]:
        print("warning: the sha256 differs from the recorded one (another torch version or CPU?)")


if __name__ == "__main__":
    main()
