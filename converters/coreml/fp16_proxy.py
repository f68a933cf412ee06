"""The Core ML fp16 precision plan simulated in torch: a labelled PROXY for fp16 accuracy off macOS.

Core ML cannot predict on Linux, so fp16 accuracy is measured by running the predictor's own forward with
the converter's plan: weights and every op result outside the pinned regions rounded to fp16, the pinned
regions (tail, GroupNorm statistics) in fp32. ``run_export`` gates the result with the coreml fp16
tolerances and records it as a proxy; the real numbers come from a Mac.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sharp_export.converters.coreml.capture import (
    DEFAULT_PINNED,
    REGION_GROUP_NORM,
    REGION_LAYER_NORM,
    REGION_TAIL,
    REGIONS,
)
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.reference.model.composer import flatten_grids
from sharp_export.reference.model.predictor import PrecisionPlan

_ROUND_CHUNK = 1 << 22  # elements rounded at a time: an 8 MB fp16 temporary instead of one as large as the tensor


def _round_fp16(tensor: torch.Tensor) -> None:
    """Round an fp32 tensor to fp16 values in place, in chunks: at full size one activation holds up to 2.4 GB, and
    a whole-tensor fp16 temporary beside it set the Core ML proxy's peak (full preset, the coreml --fp16 export with
    its check: 8.12 GB with whole-tensor rounding, 7.28 GB in chunks; the same values)."""
    flat = None
    if tensor.numel() > _ROUND_CHUNK:
        if tensor.is_contiguous():
            flat = tensor.view(-1)
        elif tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
            flat = tensor.permute(0, 2, 3, 1).view(-1)
    if flat is None:
        tensor.copy_(tensor.to(torch.float16))
        return
    for chunk in flat.split(_ROUND_CHUNK):
        chunk.copy_(chunk.to(torch.float16))


class Fp16Rounding(TorchDispatchMode):
    """While ``active``, rounds every fp32 result of every aten op to fp16 (in place; compute stays fp32).

    This is what an fp16 Core ML op does: fp16 inputs and weights, wide accumulation inside the op, one
    rounding of the result. It runs at fp32 speed; torch's own CPU half kernels are ~25x slower here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.rounded_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        alias = func._schema.returns[0].alias_info if func._schema.returns else None
        # A view (expand, slice, transpose) shares its input's already-rounded memory; in-place ops write.
        if self.active and (alias is None or alias.is_write):
            for tensor in out if isinstance(out, list | tuple) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32:
                    _round_fp16(tensor)
                    self.rounded_ops += 1
        return out


@contextlib.contextmanager
def rounding(mode: Fp16Rounding | None, active: bool) -> Iterator[None]:
    """Switch ``mode``'s rounding on (network region) or off (pinned region) for a block; None: no-op."""
    if mode is None:
        yield
        return
    previous, mode.active = mode.active, active
    try:
        yield
    finally:
        mode.active = previous


class _Fp32Island(nn.Module):
    """A pinned normalisation module: fp32 inside an fp16 network, its result rounded for the next op."""

    def __init__(self, module: nn.Module, mode: Fp16Rounding):
        super().__init__()
        self.module = module
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: any shape, values already fp16-representable
        with rounding(self.mode, False):
            y = self.module(x)
        _round_fp16(y)
        return y


class DecomposedGroupNorm(nn.Module):
    """GroupNorm op by op, exactly as mil_overrides.py lowers it to MIL (rank 4).

    Under ``Fp16Rounding`` every step is rounded, as in an fp16 MIL program: this is where fp16 hurts
    (the squared deviations overflow fp16 above |x - mean| = 255.9, and the statistics are rounded).
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        b, c, h, w = x.shape
        grouped = x.reshape(b, self.num_groups, (c // self.num_groups) * h, w)
        deviation = grouped - grouped.mean(dim=(2, 3), keepdim=True)
        variance = (deviation * deviation).mean(dim=(2, 3), keepdim=True)
        normalised = (deviation / torch.sqrt(variance + self.eps)).reshape(b, c, h, w)
        return normalised * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def fp16_copy(model: nn.Module, pinned: frozenset[str], mode: Fp16Rounding, in_place: bool = False) -> nn.Module:
    """A copy of the predictor with fp16-rounded weights; pinned normalisation modules become fp32 islands.

    ``in_place``: round and rewire ``model`` itself and return it (no second copy of the weights: 2.8 GB at full
    size); the caller gives the fp32 model up.
    """
    copied = (model if in_place else copy.deepcopy(model)).eval()
    islands = {REGION_GROUP_NORM: nn.GroupNorm, REGION_LAYER_NORM: nn.LayerNorm}
    with torch.no_grad():
        for region, kind in islands.items():
            for module in list(copied.modules()):
                for child_name, child in list(module.named_children()):
                    if not isinstance(child, kind):
                        continue
                    if region in pinned:
                        setattr(module, child_name, _Fp32Island(child, mode))
                    elif kind is nn.GroupNorm:
                        setattr(module, child_name, DecomposedGroupNorm(child))
        for module in copied.modules():
            if isinstance(module, _Fp32Island):
                continue  # a pinned op keeps fp32 constants
            for param in module.parameters(recurse=False):
                _round_fp16(param.data)
    return copied


class Fp16Plan(PrecisionPlan):
    """The Core ML fp16 precision plan for the predictor's own forward: network rounded, tail fp32.

    The tail reads the fp32 inputs directly, as the Core ML program does; the network sees its inputs
    rounded to fp16 (Core ML casts an fp32 tensor once where fp16 ops consume it). ``fp16_tail`` rounds the
    tail too (to measure what pinning it buys).
    """

    def __init__(self, mode: Fp16Rounding | None, fp16_tail: bool = False):
        self.mode = mode
        self.fp16_tail = fp16_tail

    def network(self) -> contextlib.AbstractContextManager[None]:
        return rounding(self.mode, True)

    def tail(self, device_type: str) -> contextlib.AbstractContextManager[None]:
        return rounding(self.mode, self.fp16_tail)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:  # x: any shape
        # Called inside network(): the clone is an op, so the mode rounds the copy the network reads.
        return x if self.mode is None else x.clone()


def fp16_proxy_outputs(
    model: nn.Module,  # fp32 predictor (not modified)
    image: torch.Tensor,  # [B, 3, R, R] fp32 in [0, 1]
    disparity_factor: torch.Tensor,  # [B] fp32
    pinned: Iterable[str] = DEFAULT_PINNED,
    prepare: Callable[[nn.Module], None] | None = None,
    consume: bool = False,
) -> Gaussians3D:
    """PROXY for Core ML --fp16 accuracy: the torch reference run with the converter's precision plan.

    Weights and every op result outside the pinned regions are rounded to fp16 (compute inside each op
    stays fp32, like the Neural Engine's wide accumulators); pinned regions run in fp32 and read the fp32
    inputs, as the Core ML program does. It is a proxy, not Core ML: reductions, transcendental functions
    and op fusion may round differently on device. Real numbers come from `sharp-export parity ARTIFACT
    --golden ...` on a Mac.

    ``prepare`` is called on the fp16 copy before its forward (weights.py uses it to compress the weights).
    ``consume``: simulate on ``model`` itself instead of a copy (the export's proxy runs after the conversion, when
    the fp32 model is no longer needed: full size, 2.8 GB less); ``model`` is unusable afterwards.
    """
    pinned = frozenset(pinned)
    unknown = pinned - set(REGIONS)
    if unknown:
        raise ValueError(f"unknown regions {sorted(unknown)}; choose from {REGIONS}")
    mode = Fp16Rounding()
    simulated = fp16_copy(model, pinned, mode, in_place=consume)
    if prepare is not None:
        prepare(simulated)
    image = image.float()
    if image.device.type == "cpu":
        # Channels-last on the CPU, like the export's reference forward: in NCHW oneDNN keeps blocked copies of the
        # convolutions' activations (full preset, the coreml --fp16 export's peak: 9.93 GB in NCHW, 8.12 GB in
        # channels-last; the proxy's errors on the golden pattern alike, p99 within 0.5 %).
        simulated.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), mode:
        plan = Fp16Plan(mode, fp16_tail=REGION_TAIL not in pinned)
        grids = simulated.forward_grids(image, disparity_factor.float(), plan)
    del simulated
    return flatten_grids(grids)


PROXY_LABEL = "PROXY: PyTorch reference run with the fp16 precision plan (not Core ML); real numbers: parity on a Mac"
