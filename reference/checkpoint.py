"""Building a predictor with weights: a checkpoint (path or https URL) or seeded random weights.

The official ``sharp_2572gikvuh.pt`` is a plain state_dict; it is loaded unchanged with a strict load.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import types
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sharp_export.errors import CheckpointError, UserInputError

from .hashing import sha256_file
from .model import PRESETS, RGBGaussianPredictor, create_predictor

LOGGER = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: RGBGaussianPredictor
    preset: str
    checkpoint_path: str | None  # None for seeded weights
    checkpoint_sha256: str | None
    seed: int | None
    precision: str = "fp32"

    @property
    def trained(self) -> bool:
        return self.checkpoint_sha256 is not None

    @property
    def source_label(self) -> str:
        """Says where the weights came from; seeded weights are labelled untrained everywhere."""
        if self.checkpoint_sha256 is not None:
            return f"checkpoint {Path(self.checkpoint_path or '').name} (sha256 {self.checkpoint_sha256[:12]})"
        return f"UNTRAINED seeded random weights (seed {self.seed}), not a real SHARP model"


def cache_dir() -> Path:
    return Path(os.environ.get("SHARP_EXPORT_CACHE", Path.home() / ".cache" / "sharp-export"))


def download(url: str, expected_sha256: str | None = None) -> Path:
    """Download ``url`` once into the cache (progress bar, sha256 check, atomic rename)."""
    from tqdm import tqdm

    target = cache_dir() / "checkpoints" / Path(url.split("?")[0]).name
    if target.is_file():
        if expected_sha256 is None or sha256_file(target) == expected_sha256:
            return target
        LOGGER.info("cached %s has the wrong sha256; downloading again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        if expected_sha256 is not None and (found := sha256_file(Path(tmp_name))) != expected_sha256:
            raise CheckpointError(
                f"downloaded file has sha256 {found}, expected {expected_sha256}", path=url, fix="check the URL"
            )
        os.replace(tmp_name, target)
    except OSError as error:
        fix = "download it by hand and pass the local path"
        raise CheckpointError(f"download failed: {error}", path=url, fix=fix) from error
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _restricted_pickle_module() -> types.SimpleNamespace:
    """A pickle module for ``torch.load`` whose unpickler admits exactly the globals that torch's own weights-only
    unpickler admits (tensors, storages, plain containers), but every pickle protocol: torch's reads protocol 2
    only, so a file written with ``torch.save(..., pickle_protocol=4)`` fails there ("Unsupported operand 149").
    Callables reach an unpickler only through ``find_class``, so nothing outside that list can run."""
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            key = f"{module}.{name}"
            if key not in allowed:
                raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {key} is not a tensor or plain container")
            return allowed[key]

    return types.SimpleNamespace(__name__="sharp_export_weights_only", Unpickler=Unpickler,
                                 load=lambda file, **kwargs: Unpickler(file, **kwargs).load())  # fmt: skip


def _load_weights_only(path: Path) -> object:
    """``torch.load`` that never runs pickled code, for every format ``torch.save`` writes."""
    zipped = zipfile.is_zipfile(path)  # mmap needs the zip layout; the legacy format is read whole
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4": handled below
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except Exception as error:
            if "Unsupported operand" in str(error):  # a pickle protocol above 2 (or junk)
                module = _restricted_pickle_module()
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module, mmap=zipped)
            if "Weights only load failed" in str(error) or not zipped:
                raise
            # A damaged zip fails mmap with a bare OSError (EINVAL); read whole, torch says what is wrong.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)


def torch_load_weights(path: Path, expected: str, noun: str = "checkpoint") -> object:
    """Tensors and plain containers from a ``torch.save`` file, whatever its format: the zip format (memory-mapped)
    or the legacy one (before torch 1.6, or ``_use_new_zipfile_serialization=False``), any pickle protocol.
    Pickled code never runs: only the globals of torch's ``weights_only`` loading are admitted.

    A file that fails is a ``CheckpointError`` naming it (``noun``), what it holds as far as torch says, and
    ``expected``.
    """
    try:
        return _load_weights_only(path)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        text = str(error)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found is not None:
            raise CheckpointError(
                f"holds pickled Python objects ({found[1]}), which only running code could rebuild, not {expected}; "
                "it is refused unread (weights_only loading)",
                path=path,
                fix=f"save the weights themselves (e.g. torch.save(model.state_dict(), ...)); expected {expected}",
            ) from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if text.startswith("Weights only load failed"):
            first = "not a torch.save file (or a damaged one)"
        raise CheckpointError(
            f"cannot read {noun} ({type(error).__name__}: {first[:160]}); expected {expected}",
            path=path,
            fix="the file may be truncated, damaged or of another kind; download or copy it again",
        ) from error


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain state_dict from a .pt/.pth (any torch.save format, weights_only) or .safetensors file."""
    if not path.exists():
        raise CheckpointError("checkpoint file not found", path=path, fix="pass an existing .pt or .safetensors file")
    if path.is_dir():
        raise CheckpointError("expected a checkpoint file, got a directory", path=path)
    expected = "a SHARP state_dict (a .pt, .pth or .safetensors checkpoint)"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for a truncated or foreign file
            raise CheckpointError(
                f"cannot read checkpoint as safetensors ({type(error).__name__}: {str(error).splitlines()[0][:160]})",
                path=path,
                fix="the file may be truncated or not a SHARP state_dict; download it again",
            ) from error
    else:
        state = torch_load_weights(path, expected)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint holds a {type(state).__name__}, not a plain state_dict of tensors", path=path, fix=expected
        )
    return state


def check_finite_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights with NaN or Inf values, naming the first tensor that has them (a damaged or diverged file)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        values = int((~torch.isfinite(state[bad[0]])).sum())
        others = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise CheckpointError(
            f"checkpoint has non-finite weights: {values:,} NaN or Inf values in {bad[0]}{others}",
            path=path,
            fix="the file is damaged or from a diverged training run; download it again",
        )


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, preset: str) -> None:
    """Strict check with a readable error: first few missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
                parts.append(f"{len(items)} {name} keys [{shown}]")
        raise CheckpointError(
            f"checkpoint does not fit preset '{preset}': " + "; ".join(parts),
            path=path,
            fix=f"choose the preset the checkpoint was made for (--preset {'|'.join(PRESETS)})",
        )


def load_weights(model: RGBGaussianPredictor, source: str | Path, preset: str) -> tuple[Path, str]:
    """Load a checkpoint (path or https URL) into ``model``; returns (local path, sha256)."""
    source = str(source)
    path = download(source) if source.startswith(("https://", "http://")) else Path(source).expanduser()
    state = read_state_dict(path)
    check_state_dict(model, state, path, preset)
    check_finite_weights(state, path)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if dtypes - {torch.float32}:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        LOGGER.info("checkpoint %s stores %s tensors; casting to float32 for loading", path.name, names)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return path, sha256_file(path)


def build_model(
    preset: str = "sharp",
    checkpoint: str | Path | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> LoadedModel:
    """The one way to get a ready predictor: preset + (checkpoint or seed) + device + precision.

    With neither a checkpoint nor a seed this is an error: silently random weights are never a default.
    """
    if preset not in PRESETS:
        raise UserInputError(f"unknown preset '{preset}'", fix=f"choose one of {', '.join(PRESETS)}")
    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision '{precision}'", fix=f"choose one of {', '.join(PRECISIONS)}")
    if checkpoint is not None and seed is not None:
        raise UserInputError("give either a checkpoint (-c) or a seed (--seed), not both")
    if checkpoint is None and seed is None:
        raise UserInputError(
            "no weights given", fix="pass -c CHECKPOINT for real weights, or --seed N for untrained test weights"
        )
    if seed is not None:
        torch.manual_seed(seed)
    model = create_predictor(preset)
    path = sha = None
    if checkpoint is not None:
        local, sha = load_weights(model, checkpoint, preset)
        path = str(local)
    model = model.to(device=device)
    if precision != "fp32":
        # Weights stay float32 and autocast picks per-op precision; the Gaussian tail stays float32 inside.
        LOGGER.info("running the network under %s autocast; the depth-to-Gaussian tail stays float32", precision)
    return LoadedModel(model, preset, path, sha, seed, precision)


# The golden bundle's perturbation (tests/data/golden_tiny/README.md, "Weights"): seed-0 weights plus Gaussian noise
# from torch.Generator().manual_seed(1), drawn tensor by tensor in state_dict order, std 0.5 for prediction_head.*
# and 0.02 for every other tensor. Seed 0 alone is a degenerate test vector (a zero prediction head makes every
# Gaussian delta 0; docs/architecture.md section 12); these weights are the real one, at every preset.
PERTURB_SEED = 1
PERTURB_STD_HEAD = 0.5
PERTURB_STD = 0.02


def perturb_state_dict(state: dict[str, torch.Tensor], seed: int = PERTURB_SEED) -> dict[str, torch.Tensor]:
    """The bundle's recipe applied to ``state`` (a model's state_dict, in its own order), in place; returns it.

    Deterministic: the same weights in give the same bytes out (one CPU generator, one draw per tensor in order).
    """
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        std = PERTURB_STD_HEAD if key.startswith("prediction_head.") else PERTURB_STD
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
        value.add_(noise.mul_(std))
        del noise
    return state


def autocast_context(loaded: LoadedModel, device: torch.device):
    """The autocast context for ``loaded.precision`` (a no-op for fp32)."""
    import contextlib

    if loaded.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[loaded.precision])
