"""Core ML weight compression (``--weights``): int8 linear quantization or k-means palettization.

The converted mlprogram's weights are compressed with ``coremltools.optimize.coreml`` before the package is
saved; the compute precision (``--fp16`` or fp32) is unchanged, the weights are expanded to it when the
model loads (``constexpr_*`` ops). The same compression runs on the torch weights for the accuracy proxy
(Core ML cannot predict off macOS), with the same coremltools functions on the same values, so the proxy
uses the package's weights exactly; ``weight_digest`` proves it (the package's and the proxy's digests are
recorded and must be equal).

What is compressed: the weights of ``conv``, ``conv_transpose`` and ``linear`` ops with more than
``WEIGHT_THRESHOLD`` elements (the coremltools default). Everything else keeps its precision:

* tensors of <= 2048 elements (biases, norm scales, the 3x3 heads): 0.1 % of the full model's weights, so
  compressing them saves nothing, and a per-tensor LUT or scale per 32 values would cost as much as it saves;
* the ViTs' positional embeddings (added to the tokens, so every quantization error lands in the activations
  unaveraged) and any other constant of the program that is not a weight of those ops;
* the Gaussian heads (``KEPT_MODULES``: the decoder's geometry / texture heads and the prediction head, 601k
  weights, 0.09 % of the full model): their weights write the Gaussians' attributes directly, and compressing them
  made most of the attribute error, for ~1 MB of package. int8, tiny golden pattern, fp32 plan, p99 compressed ->
  kept: quaternion 0.67 -> 0.23 deg, opacities 1.7e-3 -> 4.2e-4, scales_log 0.012 -> 0.006, depth unchanged. Full
  preset, perturbed weights, fp16 proxy on coffee and chelsea (docs/full-size-precision.md): compressed, the int8
  package failed its ``coreml-w8`` rows (scales_log 0.044, quaternion 3.4 deg, opacities 0.015); kept, it passes
  them (0.016, 1.8 deg, 0.0030).

Modes (``WEIGHT_MODES``):

* ``int8``: linear symmetric, per output channel (scale = max|w| / 127, zero point 0). iOS16+ op
  ``constexpr_affine_dequantize`` (iOS17 / macOS14), ``constexpr_blockwise_shift_scale`` from iOS18 on.
* ``palettize4`` / ``palettize6``: one 16 / 64-entry lookup table per tensor, found by 1-D k-means
  (``constexpr_lut_to_dense``). Per-grouped-channel LUTs (one per 32 output channels) need the iOS18 opset
  (coremltools refuses them below) and skip every tensor whose output channels are not a multiple of 32
  (36 of 105 in the tiny preset); measured on the tiny golden weights they lowered the attribute errors by
  20-30 % (p99) but not the depth error, so per-tensor LUTs, valid on every offered target (iOS17+), are used.
  coremltools' own ``kmeans`` mode needs scikit-learn (and kmeans1d to be fast), which the ``coreml`` extra
  does not install; ``kmeans_lut`` here is a weighted Lloyd's k-means over the distinct values of a tensor,
  numpy only and deterministic, given to coremltools as its ``lut_function`` (mode ``custom``).

Both compressed ops exist from the iOS16 opset on, below every offered deployment target, so no
``--deployment-target`` / ``--weights`` combination is refused.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sharp_export.converters.coreml.capture import DEFAULT_PINNED
from sharp_export.converters.coreml.fp16_proxy import fp16_proxy_outputs
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.reference.model.composer import flatten_grids

WEIGHT_THRESHOLD = 2048  # compress tensors with more elements than this (the coremltools default)
KMEANS_MAX_ITERATIONS = 100
# Output channels per LUT of the per-grouped-channel variant: measured (benchmarks/bench_coreml_weights.py
# --proxy), not offered (see the module docstring).
PALETTE_GROUP_SIZE = 32
# Modules whose weights stay at the program's precision under every --weights mode (see the module docstring), as
# state_dict paths of the predictor. The MIL weight constants carry the same path with "_" for "." (torch.export's
# parameter names), which is how the Core ML side finds them.
KEPT_MODULES = ("feature_model.geometry_head", "feature_model.texture_head", "prediction_head")
# MIL op types that hold compressed weights, by coremltools 9.0 and the deployment target.
COMPRESSED_OP_TYPES = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
# Weight-bearing MIL ops whose weights are compressed, and the torch modules they come from.
COMPRESSED_CONSUMERS = ("conv", "conv_transpose", "linear")
_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass(frozen=True)
class WeightPlan:
    """One --weights mode made concrete for a deployment target."""

    mode: str  # int8 | palettize4 | palettize6
    kind: str  # "linear_quantize" | "palettize"
    nbits: int
    granularity: str  # per_channel (int8) | per_tensor (LUT); per_grouped_channel only in the benchmark
    weight_threshold: int = WEIGHT_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "nbits": self.nbits,
            "granularity": self.granularity,
            "weight_threshold": self.weight_threshold,
            "ops": list(COMPRESSED_CONSUMERS),
            "kept_modules": list(KEPT_MODULES),
        }
        if self.kind == "linear_quantize":
            config.update(api="coremltools.optimize.coreml.linear_quantize_weights", mode="linear_symmetric",
                          dtype="int8")  # fmt: skip
        else:
            config.update(api="coremltools.optimize.coreml.palettize_weights", mode="custom (kmeans_lut: 1-D k-means)")
        return {"mode": self.mode, "config": config}


def weight_plan(mode: str) -> WeightPlan | None:
    """The plan for a --weights mode ("none" -> None)."""
    if mode == "none":
        return None
    if mode == "int8":
        return WeightPlan(mode, "linear_quantize", 8, "per_channel")
    if mode in ("palettize4", "palettize6"):
        return WeightPlan(mode, "palettize", int(mode[-1]), "per_tensor")
    raise ValueError(f"unknown weights mode {mode!r}")


# ---- k-means ------------------------------------------------------------------------------------------


def _histogram(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, their counts) of a 1-D array; fp16 by a 65536-bin count, without a sort."""
    if flat.dtype == np.float16:
        counts = np.bincount(flat.view(np.uint16), minlength=1 << 16)
        codes = np.flatnonzero(counts).astype(np.uint16)
        values = codes.view(np.float16)
        order = np.argsort(values, kind="stable")
        return values[order], counts[codes][order]
    return np.unique(flat, return_counts=True)


def kmeans_lut(values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means of ``values`` (any shape) into 2**nbits centroids: (lut [2**nbits] in values' dtype, indices
    uint8 [values.size]). Weighted Lloyd's iterations over the distinct values (an fp16 tensor has at most
    65536), started at the weighted quantiles; each value maps to its nearest centroid after the centroids are
    rounded to the values' dtype, so the lookup reproduces the smallest error the LUT allows.
    """
    k = 1 << nbits
    flat = values.reshape(-1)
    distinct, counts = _histogram(flat)
    wide_flat = flat.astype(np.float64)
    if distinct.size <= k:  # every value gets its own entry: exact
        lut = np.zeros(k, dtype=values.dtype)
        lut[: distinct.size] = distinct
        return lut, np.searchsorted(distinct.astype(np.float64), wide_flat).astype(np.uint8)
    x = distinct.astype(np.float64)
    weights = counts.astype(np.float64)
    cum_w = np.concatenate(([0.0], np.cumsum(weights)))
    cum_wx = np.concatenate(([0.0], np.cumsum(weights * x)))
    quantiles = (np.arange(k) + 0.5) / k * cum_w[-1]
    centroids = np.unique(x[np.minimum(np.searchsorted(cum_w[1:], quantiles), x.size - 1)])
    if centroids.size < k:  # heavy repeats: spread the missing centroids over the range
        extra = np.linspace(x[0], x[-1], k - centroids.size + 2)[1:-1]
        centroids = np.sort(np.concatenate((centroids, extra)))
    for _ in range(KMEANS_MAX_ITERATIONS):
        edges = np.concatenate(([0], np.searchsorted(x, (centroids[1:] + centroids[:-1]) / 2), [x.size]))
        mass = cum_w[edges[1:]] - cum_w[edges[:-1]]
        total = cum_wx[edges[1:]] - cum_wx[edges[:-1]]
        updated = np.sort(np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), centroids))
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    lut = np.sort(centroids.astype(values.dtype))
    wide = lut.astype(np.float64)
    # Nearest entry of the rounded LUT (a value on a midpoint takes the lower entry).
    return lut, np.searchsorted((wide[1:] + wide[:-1]) / 2, wide_flat, side="left").astype(np.uint8)


def _lut_function(nbits: int) -> Any:
    def lut_function(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return kmeans_lut(values, nbits)

    return lut_function


# ---- the Core ML side ---------------------------------------------------------------------------------


def kept_constants(program: Any) -> list[str]:
    """Names of the program's weight constants that belong to ``KEPT_MODULES`` (they get no compression)."""
    patterns = [f"{path.replace('.', '_')}_" for path in KEPT_MODULES]
    return sorted(op.name for op in program.functions["main"].operations
                  if op.op_type == "const" and any(p in op.name for p in patterns))  # fmt: skip


def optimization_config(plan: WeightPlan, kept: list[str] | None = None) -> Any:
    """coremltools' config for ``plan``; ``kept``: constant names left uncompressed (``kept_constants``)."""
    import coremltools.optimize.coreml as cto

    if plan.kind == "linear_quantize":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity=plan.granularity,
                                                weight_threshold=plan.weight_threshold)  # fmt: skip
    else:
        op_config = cto.OpPalettizerConfig(
            mode="custom",
            lut_function=_lut_function(plan.nbits),
            granularity=plan.granularity,
            weight_threshold=plan.weight_threshold,
        )
    return cto.OptimizationConfig(op_type_configs={op: op_config for op in COMPRESSED_CONSUMERS},
                                  op_name_configs=dict.fromkeys(kept or []))  # fmt: skip


def compress_mlmodel(mlmodel: Any, plan: WeightPlan) -> tuple[Any, float]:
    """The compressed copy of a converted (skip_model_load) MLModel, and the seconds it took."""
    import coremltools.optimize.coreml as cto

    start = time.perf_counter()
    config = optimization_config(plan, kept_constants(mlmodel._mil_program))
    if plan.kind == "linear_quantize":
        compressed = cto.linear_quantize_weights(mlmodel, config)
    else:
        compressed = cto.palettize_weights(mlmodel, config)
    return compressed, time.perf_counter() - start


def _constexpr_value(op: Any) -> np.ndarray:
    """The dense weight a compressed-weight op expands to (what Core ML computes when it loads the model)."""
    return np.asarray(op.materialized_val_inference())


def compressed_weights(program: Any) -> Iterator[tuple[str, str, np.ndarray]]:
    """(op name, op type, dense value) of every compressed weight of an in-memory MIL program."""
    for op in program.functions["main"].operations:
        if op.op_type in COMPRESSED_OP_TYPES:
            yield op.name, op.op_type, _constexpr_value(op)


def tensor_hash(value: np.ndarray) -> str:
    """sha256 of a tensor's sorted values: independent of its layout (a transposed weight hashes the same)."""
    return hashlib.sha256(np.sort(value.reshape(-1)).tobytes()).hexdigest()


def combine_hashes(hashes: list[str]) -> str:
    """One digest for a set of tensors, independent of their order (see ``tensor_hash``)."""
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


def program_report(program: Any, plan: WeightPlan) -> dict[str, Any]:
    """What the compression left in the MIL program: compressed-op counts, compressed elements, digest."""
    kinds: Counter = Counter()
    hashes = []
    elements = 0
    for _, op_type, value in compressed_weights(program):
        kinds[op_type] += 1
        hashes.append(tensor_hash(value))
        elements += int(value.size)
    return {
        **plan.to_dict(),
        "compressed_tensors": len(hashes),
        "compressed_op_types": dict(kinds),
        "compressed_elements": elements,
        "digest": combine_hashes(hashes),
        "tensor_hashes": hashes,
    }


# ---- the torch side (proxy) ---------------------------------------------------------------------------


def _block_sizes(shape: tuple[int, ...], output_axis: int, plan: WeightPlan) -> list[int]:
    """coremltools' block sizes for one weight (optimize._utils.infer_block_sizes for these ops)."""
    sizes = [0] * len(shape)
    if plan.granularity == "per_channel":
        sizes[output_axis] = 1
    elif plan.granularity == "per_grouped_channel":
        sizes[output_axis] = PALETTE_GROUP_SIZE
    return sizes


def compress_array(weight: np.ndarray, output_axis: int, plan: WeightPlan) -> np.ndarray | None:
    """``weight`` compressed and expanded again with coremltools' own functions; None where it skips it."""
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights, palettize_weights

    if weight.size <= plan.weight_threshold or weight.ndim <= 1:
        return None
    sizes = _block_sizes(weight.shape, output_axis, plan)
    if plan.kind == "linear_quantize":
        params = linear_quantize_weights.blockwise_compress(weight, 8, "LINEAR_SYMMETRIC", True, sizes)
        return None if params is None else np.asarray(linear_quantize_weights.decompress(params))
    params = palettize_weights.blockwise_compress(weight, "CUSTOM", plan.nbits, sizes, _lut_function(plan.nbits))
    return None if params is None else np.asarray(palettize_weights.decompress(params))


def compressible_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, int]]:
    """(name, module, output-channel axis of its weight) of the conv / conv-transpose / linear modules, less
    ``KEPT_MODULES``."""
    for name, module in model.named_modules():
        if any(f".{kept}." in f".{name}." for kept in KEPT_MODULES):  # the predictor, or a wrapper around it
            continue
        if isinstance(module, _MODULES) and getattr(module, "weight", None) is not None:
            yield name, module, 1 if isinstance(module, nn.ConvTranspose2d) else 0


class TorchWeightCompression:
    """Compresses a torch model's weights as the Core ML package does, each on its module's first call.

    Forward pre-hooks replace, in place, each conv / conv-transpose / linear weight by the value the
    package expands it to: only modules the forward really runs are touched (the ViTs' unused classifier
    heads are not in the package either). ``precision`` fp16: the weight is rounded to fp16 first, as in
    the fp16 program (the expanded value is fp16, stored exactly in the fp32 parameter).
    """

    def __init__(self, model: nn.Module, plan: WeightPlan, precision: str):
        self.plan = plan
        self.dtype = np.float16 if precision == "fp16" else np.float32
        self.hashes: list[str] = []
        self.elements = 0
        self.seconds = 0.0
        self._done: set[int] = set()
        self._handles = [module.register_forward_pre_hook(self._hook(axis)) for _, module, axis
                         in compressible_modules(model)]  # fmt: skip

    def _hook(self, axis: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if id(module) in self._done:
                return
            self._done.add(id(module))
            start = time.perf_counter()
            weight = module.weight
            dense = compress_array(weight.detach().cpu().numpy().astype(self.dtype), axis, self.plan)
            if dense is not None:
                dense = dense.astype(self.dtype)
                self.hashes.append(tensor_hash(dense))
                self.elements += int(dense.size)
                with torch.no_grad():
                    weight.copy_(torch.from_numpy(dense.astype(np.float32)))
            self.seconds += time.perf_counter() - start

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def report(self) -> dict[str, Any]:
        return {"compressed_tensors": len(self.hashes), "compressed_elements": self.elements,
                "digest": combine_hashes(self.hashes), "seconds": round(self.seconds, 2)}  # fmt: skip


def weights_proxy_outputs(
    model: nn.Module,  # fp32 predictor (not modified unless ``consume``)
    image: torch.Tensor,  # [B, 3, R, R] fp32 in [0, 1]
    disparity_factor: torch.Tensor,  # [B] fp32
    plan: WeightPlan,
    precision: str,  # fp32 | fp16
    consume: bool = False,
) -> tuple[Gaussians3D, dict[str, Any]]:
    """PROXY for a weight-compressed Core ML package: the torch forward with the package's expanded weights.

    fp16: the fp16 precision plan (fp16_proxy.py) on top. Returns the raw Gaussians and the compression
    report of the torch side (count, elements, digest: equal to the package's when the values are the same).
    ``consume``: compress ``model`` itself instead of a copy (fp16_proxy_outputs); ``model`` is unusable afterwards.
    """

    compression: list[TorchWeightCompression] = []
    if precision == "fp16":
        gaussians = fp16_proxy_outputs(model, image, disparity_factor, DEFAULT_PINNED,
                                       prepare=lambda copied: compression.append(
                                           TorchWeightCompression(copied, plan, precision)),
                                       consume=consume)  # fmt: skip
    else:
        copied = (model if consume else copy.deepcopy(model)).eval()
        compression.append(TorchWeightCompression(copied, plan, precision))
        with torch.no_grad():
            gaussians = flatten_grids(copied.forward_grids(image.float(), disparity_factor.float()))
        del copied
    return gaussians, compression[0].report()


WEIGHTS_PROXY_LABEL = (
    "PROXY: PyTorch reference run with the package's {mode} weights (the exact expanded values) and the "
    "{precision} precision plan (not Core ML); real numbers: parity on a Mac"
)
