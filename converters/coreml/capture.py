"""Graph capture for the Core ML target: the grid wrapper, torch.export, the amin fold and region tags.

Core ML gets the raw predictor up to the composer's five grids ([1, C*2, h, w], channel = component*2 +
layer); the (1, 1179648, C) flatten stays on the host because Core ML dimensions are limited to ~16384.

Every op of the exported graph is tagged with a *region* (see ``REGIONS``). The tag travels into the MIL
program through the op's EXIR stack-trace scope, and the fp16 op selector (``mil_overrides.py``) keeps the
pinned regions in fp32. The same precision plan runs in torch as a labelled proxy (fp16_proxy.py), which
is how fp16 accuracy is measured on Linux, where Core ML cannot predict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

# Regions of the graph, by the module an op was traced in.
REGION_TAIL = "tail"  # disparity -> depth (global min, division, clamps), initializer, composer: no weights
REGION_GROUP_NORM = "group_norm"  # GroupNorm statistics over up to 16*768*768 = 9.4M elements per group
REGION_LAYER_NORM = "layer_norm"  # ViT LayerNorm over 1024 channels
REGION_NETWORK = "network"  # everything with weights: ViTs, convs, decoders, prediction head
REGIONS = (REGION_TAIL, REGION_GROUP_NORM, REGION_LAYER_NORM, REGION_NETWORK)
# Decided from measurements (see convert.py, PRECISION_PLAN_NOTE): the tail and the GroupNorm
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
