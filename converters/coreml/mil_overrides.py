"""coremltools frontend overrides and the fp16 op selector of the Core ML target.

Frontend overrides (active only inside ``frontend_overrides()``, restored afterwards):

* ``reciprocal``: coremltools lowers it to MIL ``inverse``, whose default epsilon makes it 1/(x + 1e-4);
  in SHARP's initializer/composer that biases depth by up to 1.1 %. Lowered here to ``real_div(1, x)``,
  the same IEEE division torch computes.
* ``alias``: torch.export emits it for full-range slices (the SPN's tile merge); coremltools 9.0 has no
  converter for it. It is an identity.
* ``group_norm``: coremltools reshapes [N, C, H, W] to rank 5 [N, G, C/G, H, W]; the Neural Engine wants
  rank <= 4. Lowered here on [N, G, (C/G)*H, W] (12288 x 768 at full size, under the 16384 dimension
  limit) with the same op sequence and numerics.

The checks of the converted program are in mil_checks.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sharp_export.converters.coreml.capture import region_from_trace

# Ops that must never compute in fp16 wherever they occur: each sits only in the pinned regions of this
# model (tail and GroupNorm statistics), so an fp16 one means the precision plan leaked.
SENSITIVE_OP_TYPES = frozenset(
    {"inverse", "real_div", "reduce_min", "softplus", "log", "exp", "pow", "sigmoid", "clip", "sqrt", "square"}
)


# ---- frontend overrides -----------------------------------------------------------------------------


def _reciprocal(context: Any, node: Any) -> None:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    (x,) = _get_inputs(context, node, expected=1)
    context.add(mb.real_div(x=1.0, y=x, name=node.name))


def _alias(context: Any, node: Any) -> None:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    (x,) = _get_inputs(context, node, expected=1)
    context.add(mb.identity(x=x, name=node.name))


def _group_norm(context: Any, node: Any) -> None:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _group_norm_impl
    from coremltools.converters.mil.mil.types.symbolic import any_symbolic

    inputs = _get_inputs(context, node, min_expected=2)
    x, groups = inputs[0], int(inputs[1].val)
    weight = inputs[2] if len(inputs) > 2 else None
    bias = inputs[3] if len(inputs) > 3 else None
    eps = float(inputs[4].val) if len(inputs) > 4 and inputs[4] is not None else 1e-5
    if x.rank != 4 or any_symbolic(x.shape) or x.shape[1] % groups:
        context.add(_group_norm_impl(x, groups, weight, bias, eps), node.name)
        return
    n, c, h, w = (int(d) for d in x.shape)
    grouped = mb.reshape(x=x, shape=[n, groups, (c // groups) * h, w])
    mean = mb.reduce_mean(x=grouped, axes=[2, 3], keep_dims=True)
    deviation = mb.sub(x=grouped, y=mean)
    variance = mb.reduce_mean(x=mb.square(x=deviation), axes=[2, 3], keep_dims=True)
    std = mb.sqrt(x=mb.add(x=variance, y=eps))
    out = mb.reshape(x=mb.real_div(x=deviation, y=std), shape=[n, c, h, w])
    if weight is not None:
        out = mb.mul(x=out, y=mb.reshape(x=weight, shape=[1, c, 1, 1]))
    if bias is not None:
        out = mb.add(x=out, y=mb.reshape(x=bias, shape=[1, c, 1, 1]))
    context.add(out, node.name)


FRONTEND_OVERRIDES: dict[str, Callable[[Any, Any], None]] = {
    "reciprocal": _reciprocal,
    "alias": _alias,
    "group_norm": _group_norm,
}


@contextlib.contextmanager
def frontend_overrides() -> Iterator[None]:
    """Install the converters above in coremltools' torch registry; restore the originals on exit."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    saved = {name: table.get(name) for name in FRONTEND_OVERRIDES}
    table.update(FRONTEND_OVERRIDES)
    try:
        yield
    finally:
        for name, original in saved.items():
            if original is None:
                table.pop(name, None)
            else:
                table[name] = original


# ---- precision plan ---------------------------------------------------------------------------------


def op_region(op: Any) -> str | None:
    """Region tag of an in-memory MIL op (from its EXIR stack-trace scope), None if untagged."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    scopes = getattr(op, "scopes", None) or {}
    return region_from_trace(scopes.get(ScopeSource.EXIR_STACK_TRACE, []))


def fp16_op_selector(pinned: Iterable[str]) -> Callable[[Any], bool]:
    """For ct.transform.FP16ComputePrecision: True (compute in fp16) unless the op is in a pinned region.

    An op that no frontend node produced (no tag) is one a MIL pass created; it is kept fp32 only if its
    type is sensitive, which keeps an untagged reciprocal or log out of fp16 either way.
    """
    pinned = frozenset(pinned)

    def select(op: Any) -> bool:
        region = op_region(op)
        if region is None:
            return op.op_type not in SENSITIVE_OP_TYPES
        return region not in pinned

    return select
