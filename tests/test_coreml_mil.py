"""Core ML lowering hazards on small modules: each override fixes one, each check detects it.

Without the overrides coremltools 9.0 lowers ``1/x`` to ``inverse`` (epsilon 1e-4), GroupNorm to rank 5,
and cannot convert ``aten.alias``; the tests show the hazard, then the fix, then that the check sees it.
Plus the torch side: the fp16 proxy's precision plan and the amin fold.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

ct = pytest.importorskip("coremltools")

from sharp_export.converters.coreml import fp16_proxy  # noqa: E402
from sharp_export.converters.coreml.capture import DEFAULT_PINNED, REGION_TAIL, fold_flatten_amin  # noqa: E402
from sharp_export.converters.coreml.fp16_proxy import DecomposedGroupNorm, Fp16Plan, fp16_proxy_outputs  # noqa: E402
from sharp_export.converters.coreml.mil_checks import (  # noqa: E402
    find_high_rank,
    find_inverse_ops,
    find_large_dimensions,
    summarize_mil,
)
from sharp_export.converters.coreml.mil_overrides import fp16_op_selector, frontend_overrides  # noqa: E402
from sharp_export.parity.compare import compare_gaussians  # noqa: E402


def _convert(module: nn.Module, example: torch.Tensor, overrides: bool = True):
    program = torch.export.export(module.eval(), (example,), strict=False).run_decompositions({})
    kwargs = dict(
        convert_to="mlprogram",
        inputs=[ct.TensorType(name="x", shape=tuple(example.shape))],
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )
    if overrides:
        with frontend_overrides():
            return summarize_mil(ct.convert(program, **kwargs)._mil_program)
    return summarize_mil(ct.convert(program, **kwargs)._mil_program)


class Reciprocal(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [1, 2, 8, 8]
        return 1.0 / (x + 1.0)


def test_reciprocal_is_exact_real_div_not_inverse():
    example = torch.rand(1, 2, 8, 8)
    naive = _convert(Reciprocal(), example, overrides=False)
    assert len(find_inverse_ops(naive)) == 1  # the hazard: 1/(x + 1e-4)
    fixed = _convert(Reciprocal(), example)
    assert find_inverse_ops(fixed) == []
    assert [op.op_type for op in fixed.ops if op.op_type not in ("const",)].count("real_div") == 1


def test_group_norm_stays_rank_4():
    example = torch.rand(1, 16, 8, 8)
    naive = _convert(nn.GroupNorm(4, 16), example, overrides=False)
    assert find_high_rank(naive)  # coremltools' own lowering: [1, 4, 4, 8, 8]
    fixed = _convert(nn.GroupNorm(4, 16), example)
    assert find_high_rank(fixed) == []
    assert {op.op_type for op in fixed.ops} >= {"reduce_mean", "square", "sqrt", "real_div"}


def test_decomposed_group_norm_matches_torch():
    # The op sequence of the rank-4 MIL lowering, run in torch (also what the fp16 proxy rounds op by op).
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 32)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 12, 10) * 3 + 1
    torch.testing.assert_close(DecomposedGroupNorm(norm)(x), norm(x), rtol=0, atol=2e-6)  # measured 9.5e-7


class FullSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [1, 2, 8, 8]
        return torch.cat([x[..., 0:8], x[..., 0:4]], dim=-1)  # the full-range slice exports as aten.alias


def test_alias_converts():
    example = torch.rand(1, 2, 8, 8)
    with pytest.raises(NotImplementedError, match="alias"):
        _convert(FullSlice(), example, overrides=False)
    assert _convert(FullSlice(), example).outputs[0].shape == (1, 2, 8, 12)


def test_overrides_are_restored():
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    before = {name: table.get(name) for name in ("reciprocal", "alias", "group_norm")}
    with frontend_overrides():
        assert table["alias"] is not None and table["reciprocal"] is not before["reciprocal"]
    assert {name: table.get(name) for name in before} == before


class GlobalMin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [1, 2, 128, 128]
        return 1.0 / (x.flatten(1).amin(dim=1) + 1e-6)  # as the initializer's depth normalisation


def test_flatten_amin_fold_removes_the_giant_axis():
    example = torch.rand(1, 2, 128, 128) + 0.5
    program = torch.export.export(GlobalMin(), (example,), strict=False).run_decompositions({})
    assert fold_flatten_amin(program) == 1
    torch.testing.assert_close(program.module()(example), GlobalMin()(example), rtol=0, atol=0)
    kwargs = dict(convert_to="mlprogram", inputs=[ct.TensorType(name="x", shape=(1, 2, 128, 128))],
                  minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
                  compute_precision=ct.precision.FLOAT32)  # fmt: skip
    with frontend_overrides():
        summary = summarize_mil(ct.convert(program, **kwargs)._mil_program)
    assert find_large_dimensions(summary) == []  # unfolded: a (1, 32768) reshape


def test_untagged_sensitive_ops_stay_fp32():
    select = fp16_op_selector(DEFAULT_PINNED)
    assert select(SimpleNamespace(op_type="log", scopes={})) is False
    assert select(SimpleNamespace(op_type="conv", scopes={})) is True


@pytest.fixture(scope="module")
def tiny(golden_dir):
    from sharp_export.reference.checkpoint import build_model
    from sharp_export.samples import example_inputs

    model = build_model("tiny", checkpoint=golden_dir / "weights_perturbed.safetensors").model.eval()
    example = example_inputs(model.resolution, 1)
    with torch.no_grad():
        reference = model(example.image, example.disparity_factor)
    return model, example, reference


def test_fp16_plan_without_rounding_is_the_eager_forward(tiny):
    # The proxy runs the predictor's own forward; with no rounding mode its plan must change nothing.
    model, example, _ = tiny
    with torch.no_grad():
        expected = model.forward_grids(example.image, example.disparity_factor)
        found = model.forward_grids(example.image, example.disparity_factor, Fp16Plan(None))
    for a, b in zip(found, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_chunked_rounding_is_one_rounding(layout, monkeypatch):
    # The proxy rounds large activations in chunks (no full-size fp16 temporary): same values, same strides.
    monkeypatch.setattr(fp16_proxy, "_ROUND_CHUNK", 1000)  # several chunks on a small tensor
    x = torch.randn(2, 8, 30, 20) * 300
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(1, 3)  # not dense in any layout the chunks cover: rounded whole
    rounded = x.clone(memory_format=torch.preserve_format)
    fp16_proxy._round_fp16(rounded)
    assert torch.equal(rounded, x.half().float()) and rounded.stride() == x.stride()
    assert not torch.equal(rounded, x)


def test_consuming_proxy_is_the_copy_proxy(tiny):
    # The export's proxy rounds the model itself (after the conversion) to save a copy of the weights: the outputs
    # must be the copy-based proxy's exactly, and the copy-based one must leave the model alone.
    model, example, _ = tiny
    model = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    copied = fp16_proxy_outputs(model, example.image, example.disparity_factor)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    consumed = fp16_proxy_outputs(model, example.image, example.disparity_factor, consume=True)
    for name in ("mean_vectors", "singular_values", "quaternions", "colors", "opacities"):
        assert torch.equal(getattr(consumed, name), getattr(copied, name)), name
    key = "monodepth_model.monodepth_predictor.encoder.patch_encoder.patch_embed.proj.weight"
    weight = dict(model.named_parameters())[key]
    assert torch.equal(weight, weight.half().float()) and not torch.equal(weight, before[key])  # rounded in place


def _worst(reference, candidate) -> dict[str, float]:
    return {r.metric: r.max for r in compare_gaussians(reference, candidate, None)}


def test_pinning_the_tail_is_measurably_better(tiny):
    # The measurement behind the precision plan (tiny golden, perturbed weights, golden pattern).
    model, example, reference = tiny
    everywhere = _worst(reference, fp16_proxy_outputs(model, example.image, example.disparity_factor, ()))
    planned = _worst(reference, fp16_proxy_outputs(model, example.image, example.disparity_factor))
    tail_only = _worst(reference, fp16_proxy_outputs(model, example.image, example.disparity_factor, {REGION_TAIL}))
    assert planned["means_rel_depth"] < 0.6 * everywhere["means_rel_depth"]  # measured 3.0e-3 vs 8.0e-3
    assert planned["colors_abs"] < 0.2 * everywhere["colors_abs"]  # measured 1.1e-4 vs 1.9e-3
    assert planned["scales_log"] <= tail_only["scales_log"]  # measured 4.3e-3 vs 5.4e-3 (fp16 GroupNorm)
    assert planned["means_rel_depth"] < 6e-3  # measured 3.0e-3
