"""The parity column (``--check``): every artifact against the fp32 reference, on the benchmark images.

The comparison is the parity harness's (``run_parity_shared``: the reference runs and renders once per image
for all artifacts); this module only picks each artifact's tolerances and turns the reports into ``.check``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sharp_export.bench.candidates import Candidate
from sharp_export.parity import harness
from sharp_export.parity.lpips import load_lpips, lpips_status
from sharp_export.parity.tolerances import profile_tolerances
from sharp_export.parity.views import DEFAULT_POSES
from sharp_export.reference.gaussians import Gaussians3D


def check_candidates(
    candidates: Sequence[Candidate],
    reference: Any,
    images: Sequence[Path],
    device: str,
    poses: int = 4,
) -> None:
    """Re-run parity of every artifact against the fp32 reference on the benchmark images; fills ``.check``.

    ``reference`` is the ``LoadedModel`` from ``open_candidates``. ``poses`` views of each image (the first
    ``poses`` of parity's default poses) are rendered and compared. The reference outputs and renders are
    computed once per image and shared by all artifacts.
    """

    artifacts = [c for c in candidates if c.kind == "artifact"]
    if not artifacts:
        return
    pose_names = tuple(DEFAULT_POSES[:poses])
    torch_device = torch.device(device)

    def reference_infer(image: torch.Tensor, factor: torch.Tensor) -> Gaussians3D:  # [1, 3, R, R], [1]
        with torch.no_grad():  # no autocast: parity is always against the fp32 reference
            out = reference.model(image.to(torch_device), factor.to(torch_device))
        return Gaussians3D(*(t.float().cpu() for t in out))

    lpips_model = load_lpips() if pose_names else None
    lpips_note = None if lpips_model is not None else lpips_status().message()
    tolerances: dict[str, dict] = {}
    for candidate in artifacts:
        assert candidate.tolerance_profile is not None  # resolved with the artifact (open_candidates)
        tolerances[candidate.name] = profile_tolerances(candidate.tolerance_profile)
    checked = artifacts
    resolution = int(reference.model.resolution)
    inputs = harness.load_inputs(list(images), resolution)
    reports = harness.run_parity_shared(
        {c.name: c.runner.infer for c in checked}, reference_infer, inputs, tolerances, pose_names, lpips_model,
        resolution, metas={c.name: {"target": c.target, "precision": c.precision} for c in checked},
        prefix="bench check: ",
    )  # fmt: skip
    for candidate in checked:
        report = reports[candidate.name]
        candidate.check = {
            "status": "passed" if report.passed else "failed",
            "failures": report.failure_names,
            "images": [item.name for item in inputs],
            "poses": list(pose_names),
            "lpips": "used" if lpips_model is not None else lpips_note,
        }
