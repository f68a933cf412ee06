"""torch.export for ExecuTorch: the graph rewrites that let XNNPACK take the attention, and the int8 region rules.

**What XNNPACK does not take, and why.** Each op the XNNPACK partitioner leaves out runs as a portable (scalar C++)
kernel between two delegates. Exported as-is, the full preset left these out (ExecuTorch 1.5.1): 194 expand_copy,
96 mul, 96 logical_not, 52 where, 48 each of split_with_sizes_copy / eq / full_like / any, 98 native_layer_norm,
8 native_group_norm and a few tail ops. All but the norms and the tail came from us:

* ``F.scaled_dot_product_attention`` without a mask is decomposed by torch into its "math" form with a *safe*
  softmax (``eq(-inf)``, ``logical_not``, ``any``, ``where``, ``full_like``: rows that are fully masked become 0),
  scales q and k by ``sqrt(scale)`` each with ``mul.Scalar``, and expands q/k/v/probs to the shape they already
  have. At full size the patch ViT's attention probabilities are [35*16, 577, 577] (746 MB in fp32) and each of
  those portable passes walks them. :func:`attention_math` writes the same attention as bmm -> scale -> softmax ->
  bmm (no mask exists, so the safe softmax's guard never fires): XNNPACK takes all of it.
* ``qkv.split(heads, dim=1)`` becomes ``split_with_sizes_copy``, which XNNPACK lacks; :func:`split_as_slices`
  writes it as slices (XNNPACK's ``slice_copy``).
* ``cls_token.expand(B, -1, -1)`` at batch 1 is an expand to the same shape, and a tile crop of 0 tokens (tiny
  preset) a slice over a whole axis (a portable ``alias_copy``); :func:`drop_noop_expands` removes both.

What remains is the model's own: LayerNorm (no XNNPACK operator; decomposing it into means that XNNPACK can run
measured slower than the portable kernel, see docs/targets/executorch.md), GroupNorm's row statistics and batch
norm, and the tail's reciprocal / pow / amin / where / comparisons (no weights, 4.7M elements at most).
:func:`not_delegated` lists them in every manifest.

**GroupNorm is rewritten for accuracy, not speed** (:func:`group_norm_two_pass`): the portable kernel's one-pass
fp32 statistics over 9.4M values a group made the full-size fp32 artifact fail its parity rows. The rewrite stays
portable too (row means and two-pass variances, then an inference batch norm), with no sum longer than one image
row. The LayerNorms normalise 1024 values a token, where the same kernel's error stays small.

**int8 regions** (:func:`int8_quantizes`): one rule list, built from the ONNX int8 rules' own constants (never
copied): a node is quantized when it is a convolution or linear layer traced inside one of the modules the ONNX
rules quantize (``converters/onnx/quantize.py`` ``INT8_QUANTIZED_MODULES``: the encoder's two ViTs) and not
inside a module they keep float (``INT8_EXCLUDED_MODULES``). Everything else, the tail included, stays float.
As in the ONNX graph, only the layers' inputs are quantized; their outputs stay fp32.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from typing import Any

import torch
from torch import nn

from sharp_export.converters.onnx.quantize import INT8_EXCLUDED_MODULES, INT8_QUANTIZED_MODULES

aten = torch.ops.aten

# int8: the ops quantized, as the ONNX rules' Conv and MatMul (weights int8 per channel, activations int8). Transposed
# convolutions stay float as in the ONNX rules (ONNX Runtime's quantizer does not take ConvTranspose either).
INT8_OP_TARGETS = (aten.conv2d.default, aten.convolution.default, aten.linear.default)
# The XNNPACK quantizer's patterns kept (by its pattern names): the layers, with the ReLU XNNPACK fuses into them.
INT8_PATTERNS = ("conv", "conv_relu", "linear", "linear_relu")
INT8_FLOAT_MODULES = INT8_EXCLUDED_MODULES  # the ONNX rules' lists, so both targets quantize the same layers


def attention_math(
    q: torch.Tensor,  # [N, H, T, D]
    k: torch.Tensor,  # [N, H, T, D]
    v: torch.Tensor,  # [N, H, T, D]
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:  # [N, H, T, D]
    """Unmasked attention as bmm -> scale -> softmax -> bmm (the decomposition used for the export)."""
    if attn_mask is not None or is_causal or dropout_p != 0.0 or enable_gqa:
        raise NotImplementedError("the ExecuTorch attention rewrite covers unmasked, non-causal attention only")
    n, h, t, d = q.shape
    factor = scale if scale is not None else 1.0 / math.sqrt(d)
    q3, k3, v3 = (x.reshape(n * h, x.shape[2], d) for x in (q, k, v))
    probs = torch.softmax(torch.bmm(q3, k3.transpose(1, 2)) * factor, dim=-1)
    return torch.bmm(probs, v3).reshape(n, h, t, d)


def split_as_slices(x: torch.Tensor, size: int, dim: int = 0) -> list[torch.Tensor]:
    """``aten.split.Tensor`` as slices (XNNPACK has slice_copy, not split_with_sizes_copy)."""
    length = x.shape[dim]
    return [aten.slice.Tensor(x, dim, start, min(start + size, length)) for start in range(0, length, size)]


def group_norm_two_pass(
    x: torch.Tensor,  # [B, C, H, W]
    num_groups: int,
    weight: torch.Tensor | None = None,  # [C]
    bias: torch.Tensor | None = None,  # [C]
    eps: float = 1e-5,
    cudnn_enabled: bool = True,
) -> torch.Tensor:  # [B, C, H, W]
    """GroupNorm with two-pass statistics over short rows, applied as an inference batch norm.

    ExecuTorch's portable ``native_group_norm`` (1.5.1) sums each group in one fp32 loop and takes the variance as
    E[x^2] - E[x]^2. The Gaussian decoder's heads normalise groups of 16 x 768 x 768 = 9.4M values at full size:
    the raw outputs drifted by ~1 % (quaternions 0.0116 abs, singular values 0.43 of 62.7) and the fp32 artifact
    failed its parity rows; one GroupNorm of 1M values a group (mean 3, std 0.5) is off by 7e-3 there.

    Here each image row (W values) gets its mean and variance from the portable ``mean`` / ``var`` kernels (``var``
    is two-pass); the rows combine by the law of total variance (equal counts), on tensors of H values per channel.
    The normalisation is the portable inference batch norm with those statistics per channel: like the GroupNorm
    kernel it reads x once and writes y, so no full-size temporary is added (an element-wise version held two more
    and raised the full-size export's check from 7.6 to 8.6 GB).
    """
    if x.dim() != 4:
        raise NotImplementedError("the ExecuTorch GroupNorm rewrite covers [B, C, H, W] inputs only")
    batch, channels, height, width = x.shape
    per_group = channels // num_groups
    rows = x.reshape(batch * num_groups, per_group, height, width)
    row_mean = rows.mean(dim=3, keepdim=True)  # [B*G, D, H, 1]
    row_var = rows.var(dim=3, keepdim=True, correction=0)  # [B*G, D, H, 1]

    def over_rows(t: torch.Tensor) -> torch.Tensor:  # [B*G, D, H, 1] -> [B*G, 1, 1, 1]: the group's mean of t
        return t.mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)

    def per_channel(t: torch.Tensor) -> torch.Tensor:  # [B*G, 1, 1, 1] -> [B*C]: each channel gets its group's value
        return t.expand(-1, per_group, 1, 1).reshape(-1)

    mean = over_rows(row_mean)
    spread = row_mean - mean  # [B*G, D, H, 1]: each row's mean about the group's
    variance = over_rows(row_var + spread * spread)
    scale, shift = (t if t is None or batch == 1 else t.repeat(batch) for t in (weight, bias))
    flat = x.reshape(1, batch * channels, height, width)  # batch norm's statistics are per channel: one "image"
    normalised = torch.nn.functional.batch_norm(
        flat, per_channel(mean), per_channel(variance), scale, shift, training=False, eps=eps
    )
    return normalised.reshape(batch, channels, height, width)


DECOMPOSITIONS = {
    aten.scaled_dot_product_attention.default: attention_math,
    aten.split.Tensor: split_as_slices,
    aten.group_norm.default: group_norm_two_pass,
}


_SHAPE_OPS = (aten.expand.default, aten.expand_copy.default, aten.slice.Tensor, aten.slice_copy.Tensor)
_SHAPE_OPS += (aten.alias.default,)


def drop_noop_expands(program: torch.export.ExportedProgram) -> int:
    """Remove ``expand`` and ``slice`` nodes whose output shape is their input's (an expand to the same shape, a
    slice over the whole axis: tile crops of 0 at the tiny preset). Returns how many were removed.
    """
    graph = program.graph
    removed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SHAPE_OPS:
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and tuple(source.meta["val"].shape) == tuple(node.meta["val"].shape):
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            removed += 1
    if removed:
        program.graph_module.recompile()
    return removed


def export_graph(
    module: nn.Module,  # returns a tuple of tensors
    examples: tuple[torch.Tensor, ...],
) -> torch.export.ExportedProgram:
    """torch.export (non-strict), eval and no_grad: the program PT2E quantizes or :func:`rewrite` lowers."""
    if not isinstance(module, torch.fx.GraphModule):  # PT2E's converted modules refuse .eval() (and are in eval)
        module = module.eval()
    with torch.no_grad():
        return torch.export.export(module, tuple(t.contiguous() for t in examples), strict=False)


def rewrite(program: torch.export.ExportedProgram) -> tuple[torch.export.ExportedProgram, dict[str, int]]:
    """The attention, split and GroupNorm rewrites and the no-op expand removal (module docstring)."""
    attention = sum(1 for n in program.graph.nodes if n.target == aten.scaled_dot_product_attention.default)
    splits = sum(1 for n in program.graph.nodes if n.target == aten.split.Tensor)
    norms = sum(1 for n in program.graph.nodes if n.target == aten.group_norm.default)
    program = program.run_decompositions(DECOMPOSITIONS)
    expands = drop_noop_expands(program)
    counts = {"attention_rewritten": attention, "splits_as_slices": splits, "group_norms_two_pass": norms}
    return program, {**counts, "noop_expands_removed": expands}


def module_paths(node: torch.fx.Node) -> list[str]:
    """Module paths an op was traced in, outermost first (``nn_module_stack``), e.g. 'predictor.feature_model'."""
    return [str(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def int8_quantizes(node: torch.fx.Node) -> bool:
    """True when int8 quantizes ``node`` (module docstring: a ViT conv / linear, not in an excluded module).

    The XNNPACK quantizer asks about every node of a pattern: the weight and bias inputs (accepted: the layer
    decides) and the ReLU it fuses into a conv (accepted when its conv is).
    """
    if node.op != "call_function":
        return True
    if node.target in _FUSED_ACTIVATIONS:
        source = node.args[0]
        return isinstance(source, torch.fx.Node) and int8_quantizes(source)
    if node.target not in INT8_OP_TARGETS:
        return False
    paths = module_paths(node)
    inside = any(f".{m}." in f".{path}." for path in paths[-1:] for m in INT8_QUANTIZED_MODULES)
    excluded = any(path == m or path.endswith("." + m) for path in paths for m in INT8_FLOAT_MODULES)
    return inside and not excluded


_FUSED_ACTIVATIONS = (aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default)


def not_delegated(program: Any) -> dict[str, int]:
    """Ops of a lowered program that run outside every XNNPACK delegate (portable kernels), by name."""
    counts: Counter = Counter()
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            continue
        counts[name.removeprefix("aten.").removesuffix(".default")] += 1
    return dict(counts.most_common())


def delegate_count(program: Any) -> int:
    return sum(1 for n in program.graph.nodes if getattr(n.target, "__name__", "") == "executorch_call_delegate")
