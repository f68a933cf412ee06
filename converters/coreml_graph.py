"""Torch side of the Core ML target: the grid wrapper, torch.export, region tags and the fp16 proxy.

Core ML gets the raw predictor up to the composer's five grids ([1, C*2, h, w], channel = component*2 +
layer); the (1, 1179648, C) flatten stays on the host because Core ML dimensions are limited to ~16384.

Every op of the exported graph is tagged with a *region* (see ``REGIONS``). The tag travels into the MIL
program through the op's EXIR stack-trace scope, and the fp16 op selector (``coreml_mil.py``) keeps the
pinned regions in fp32. The same precision plan runs in torch as a labelled proxy
(``fp16_proxy_outputs``), which is how fp16 accuracy is measured on Linux, where Core ML cannot predict.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.reference.model.composer import GRID_CHANNELS, GaussianGrids, flatten_grids
from sharp_export.reference.model.predictor import DISPARITY_MAX, DISPARITY_MIN

# Regions of the graph, by the module an op was traced in.
REGION_TAIL = "tail"  # disparity -> depth (global min, division, clamps), initializer, composer: no weights
REGION_GROUP_NORM = "group_norm"  # GroupNorm statistics over up to 16*768*768 = 9.4M elements per group
REGION_LAYER_NORM = "layer_norm"  # ViT LayerNorm over 1024 channels
REGION_NETWORK = "network"  # everything with weights: ViTs, convs, decoders, prediction head
REGIONS = (REGION_TAIL, REGION_GROUP_NORM, REGION_LAYER_NORM, REGION_NETWORK)
# Decided from measurements (see converters/coreml.py, PRECISION_PLAN_NOTE): the tail and the GroupNorm
# statistics stay fp32 under --fp16; LayerNorm and the rest run in fp16 on the Neural Engine.
DEFAULT_PINNED = frozenset({REGION_TAIL, REGION_GROUP_NORM})

_NETWORK_MODULES = ("monodepth_model", "feature_model", "prediction_head")
_TAIL_MODULES = ("init_model", "gaussian_composer")
_TAG_PREFIX = "[sharp-export region="


class GridOutputs(nn.Module):
    """The predictor up to the composer: five rank-4 grids as a plain tuple (one Core ML output each)."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(
        self,
        image: torch.Tensor,  # [B, 3, R, R] in [0, 1]
        disparity_factor: torch.Tensor,  # [B]
    ) -> tuple[torch.Tensor, ...]:  # five [B, C*2, R/2, R/2] grids in GAUSSIAN_FIELDS order
        return tuple(self.predictor.forward_grids(image, disparity_factor))


def grids_to_gaussians(grids: Iterable[Any]) -> Gaussians3D:
    """Host-side flatten of five grids (numpy or torch, [B, C*2, h, w]) into Gaussians3D [B, N, C]."""
    tensors = [torch.as_tensor(g).float() for g in grids]
    for tensor, channels in zip(tensors, GRID_CHANNELS, strict=True):
        if tensor.ndim != 4 or tensor.shape[1] != 2 * channels:
            raise ValueError(f"expected a [B, {2 * channels}, h, w] grid, got {tuple(tensor.shape)}")
    return flatten_grids(GaussianGrids(*tensors))


def _region_of(node: torch.fx.Node, default: str) -> str:
    """Region of one exported op: by the module it was traced in, ``default`` when no module says.

    Ops of the whole model's tail have no module stack at all (torch.export inlines forward_grids'
    autocast-disabled blocks without one), so the whole-model export passes ``default=REGION_TAIL``;
    split pieces pass the region of the code their wrapper runs outside any module.
    """
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return default
    path, module_type = list(stack.values())[-1]
    type_name = module_type if isinstance(module_type, str) else getattr(module_type, "__name__", str(module_type))
    if type_name.endswith("GroupNorm"):
        return REGION_GROUP_NORM
    if type_name.endswith("LayerNorm"):
        return REGION_LAYER_NORM
    parts = str(path).split(".")
    if any(part in _NETWORK_MODULES for part in parts):
        return REGION_NETWORK
    if any(part in _TAIL_MODULES for part in parts):
        return REGION_TAIL
    return default


def tag_regions(program: torch.export.ExportedProgram, default: str = REGION_TAIL) -> Counter:
    """Prefix every op's stack trace with its region tag (coremltools copies it into the MIL op scope).

    Returns the number of ops per region.
    """
    counts: Counter = Counter()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        region = _region_of(node, default)
        counts[region] += 1
        trace = node.meta.get("stack_trace") or ""
        if not trace.startswith(_TAG_PREFIX):
            node.meta["stack_trace"] = f"{_TAG_PREFIX}{region}]\n{trace}"
    return counts


def region_from_trace(trace: Any) -> str | None:
    """The region tag in a (list of) stack-trace string(s), or None when untagged."""
    items = trace if isinstance(trace, list | tuple) else [trace]
    for item in items:
        if isinstance(item, str) and item.startswith(_TAG_PREFIX):
            return item[len(_TAG_PREFIX) : item.index("]")]
    return None


def fold_flatten_amin(program: torch.export.ExportedProgram) -> int:
    """Rewrite ``amin(flatten(x, 1), dim=1)`` into ``amin(x, dim=[1, 2, 3])``: same value, no giant axis.

    The initializer's global depth minimum flattens [1, 2, 1536, 1536] into one axis of 4.7M elements,
    beyond Core ML's ~16384 dimension limit. A min is exact in any order, so the rewrite changes nothing
    numerically. Returns the number of rewrites.
    """
    graph = program.graph
    aten = torch.ops.aten
    rewrites = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.amin.default:
            continue
        source = node.args[0]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if not isinstance(source, torch.fx.Node) or list(dims or []) != [1] or keepdim:
            continue
        # torch.export writes flatten(1) as view/_unsafe_view(x, [B, -1]) (after a clone when x is not contiguous).
        chain = [source]
        while chain[-1].target in (aten.view.default, aten._unsafe_view.default, aten.clone.default):
            chain.append(chain[-1].args[0])
        original = chain[-1]
        value = original.meta.get("val") if isinstance(original, torch.fx.Node) else None
        if len(chain) < 2 or value is None or value.ndim < 3:
            continue
        if tuple(source.meta["val"].shape) != (value.shape[0], value[0].numel()):
            continue
        node.args = (original, list(range(1, value.ndim)), False)
        node.kwargs = {}
        rewrites += 1
    if rewrites:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return rewrites


def export_module(
    module: nn.Module,  # returns a tuple of tensors
    examples: tuple[torch.Tensor, ...],  # example inputs (made contiguous: export rejects channels-last ones)
    default_region: str = REGION_TAIL,  # region of ops traced outside every module (see _region_of)
) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """torch.export (non-strict) + core decompositions, then the amin fold and the region tags."""
    with torch.no_grad():
        program = torch.export.export(
            module.eval(), tuple(t.contiguous() for t in examples), strict=False
        ).run_decompositions({})
    folded = fold_flatten_amin(program)
    counts = tag_regions(program, default_region)
    return program, {"region_op_counts": dict(sorted(counts.items())), "amin_flatten_folded": folded}


def export_grids(
    model: nn.Module,
    image: torch.Tensor,  # [1, 3, R, R] example
    disparity_factor: torch.Tensor,  # [1] example
) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The whole predictor up to the five grids (``GridOutputs``)."""
    return export_module(GridOutputs(model), (image, disparity_factor))


# ---- the fp16 precision plan, simulated in torch -------------------------------------------------------


def _round_fp16(tensor: torch.Tensor) -> None:
    tensor.copy_(tensor.to(torch.float16))


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
    """GroupNorm op by op, exactly as converters/coreml_mil.py lowers it to MIL (rank 4).

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


def fp16_copy(model: nn.Module, pinned: frozenset[str], mode: Fp16Rounding) -> nn.Module:
    """A copy of the predictor with fp16-rounded weights; pinned normalisation modules become fp32 islands."""
    copied = copy.deepcopy(model).eval()
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


def forward_grids_plan(
    model: nn.Module,  # predictor (weights already rounded when simulating fp16)
    image: torch.Tensor,  # [B, 3, R, R] fp32 in [0, 1]
    disparity_factor: torch.Tensor,  # [B] fp32
    mode: Fp16Rounding | None = None,  # None: plain fp32
    fp16_tail: bool = False,
) -> GaussianGrids:
    """predictor.forward_grids with the network under ``mode`` (mirrors it; a test pins the equality).

    The tail reads the fp32 inputs directly, as the Core ML program does; the network sees the image
    rounded to fp16 (Core ML casts the input once for its fp16 ops).
    """
    with rounding(mode, True):
        network_image = image.clone()
        mono = model.monodepth_model(network_image)
    with rounding(mode, fp16_tail):
        depth = disparity_factor[:, None, None, None] / mono.disparity.clamp(DISPARITY_MIN, DISPARITY_MAX)
        init = model.init_model(image, depth)
    with rounding(mode, True):
        features = model.feature_model(init.feature_input.clone(), mono.encodings)
        delta = model.prediction_head(features)
    with rounding(mode, fp16_tail):
        return model.gaussian_composer(delta, init.base, init.global_scale)


def fp16_proxy_outputs(
    model: nn.Module,  # fp32 predictor (not modified)
    image: torch.Tensor,  # [B, 3, R, R] fp32 in [0, 1]
    disparity_factor: torch.Tensor,  # [B] fp32
    pinned: Iterable[str] = DEFAULT_PINNED,
) -> Gaussians3D:
    """PROXY for Core ML --fp16 accuracy: the torch reference run with the converter's precision plan.

    Weights and every op result outside the pinned regions are rounded to fp16 (compute inside each op
    stays fp32, like the Neural Engine's wide accumulators); pinned regions run in fp32 and read the fp32
    inputs, as the Core ML program does. It is a proxy, not Core ML: reductions, transcendental functions
    and op fusion may round differently on device. Real numbers come from `sharp-export parity ARTIFACT
    --golden ...` on a Mac.
    """
    pinned = frozenset(pinned)
    unknown = pinned - set(REGIONS)
    if unknown:
        raise ValueError(f"unknown regions {sorted(unknown)}; choose from {REGIONS}")
    mode = Fp16Rounding()
    simulated = fp16_copy(model, pinned, mode)
    with torch.no_grad(), mode:
        grids = forward_grids_plan(simulated, image.float(), disparity_factor.float(), mode, REGION_TAIL not in pinned)
    del simulated
    return flatten_grids(grids)


# ---- fp16 proxy parity (Linux) -----------------------------------------------------------------------

PROXY_LABEL = "PROXY: PyTorch reference run with the fp16 precision plan (not Core ML); real numbers: parity on a Mac"


def proxy_parity(
    model: torch.nn.Module,
    image: torch.Tensor,  # [1, 3, R, R]
    disparity_factor: torch.Tensor,  # [1]
    reference: Any = None,  # Gaussians3D of the fp32 model on these inputs (computed when None)
) -> dict[str, Any]:
    """fp16 proxy vs fp32 reference through the parity comparator, gated by the coreml fp16 tolerances."""
    from sharp_export.parity.compare import compare_gaussians
    from sharp_export.parity.tolerances import load_tolerances

    if reference is None:
        with torch.no_grad():
            reference = model(image, disparity_factor)
    candidate = fp16_proxy_outputs(model, image, disparity_factor, DEFAULT_PINNED)
    results = compare_gaussians(reference, candidate, load_tolerances("coreml", "fp16"), space="raw")
    keys = ("max", "p99", "mean", "tolerance", "statistic", "passed")
    metrics = {r.metric: {key: getattr(r, key) for key in keys} for r in results}
    return {
        "label": PROXY_LABEL,
        "pinned_fp32": sorted(DEFAULT_PINNED),
        "passed": all(r.passed for r in results),
        "metrics": metrics,
    }


def format_proxy(proxy: dict[str, Any]) -> str:
    parts = [f"{name} max {m['max']:.3g} p99 {m['p99']:.3g}" for name, m in proxy["metrics"].items()]
    return f"    fp16 {proxy['label'].split(':')[0]} vs fp32 torch: " + "; ".join(parts)
