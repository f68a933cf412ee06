"""Checks of a converted Core ML program, before anything is declared done.

They run on an op summary that comes from the in-memory MIL program (with the region tag of every op,
see capture.py) or from a saved package's spec (no tags): no ``inverse``, fp32 outputs, pinned regions
fp32 in fp16 mode, no tensor above rank 4 or a dimension above 16384, I/O equal to the manifest.

Compressed weights (``--weights``, weights.py): a ``constexpr_*`` op expands a weight when the model loads,
so it is counted as a weight, not as a compute op, and the constants that only feed it (LUT, indices,
scales: the iOS18 LUT is rank 6 by definition) are compression data, exempt from the rank check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sharp_export.converters.coreml.mil_overrides import SENSITIVE_OP_TYPES, op_region

MAX_RANK = 4  # the Neural Engine works on rank-4 tensors; Core ML itself allows 5
MAX_DIMENSION = 16384  # Core ML / Neural Engine dimension limit
_DTYPES = {10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 1: "bool", 21: "int8", 23: "int32", 24: "int64"}


# ---- op summaries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # "fp32", "fp16", "int32", ...
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class OpInfo:
    name: str  # name of its first output
    op_type: str
    outputs: tuple[TensorInfo, ...]
    region: str | None = None  # only from an in-memory program
    compression_data: bool = False  # a const read only by constexpr_* ops (LUT, indices, scale)


@dataclass
class ProgramSummary:
    ops: list[OpInfo]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    has_regions: bool
    notes: list[str] = field(default_factory=list)

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.op_type for op in self.ops).most_common())

    def dtype_counts(self) -> dict[str, int]:
        """Compute ops by the dtype of their first float output (consts, constexpr weights and casts excluded)."""
        counts: Counter = Counter()
        for op in self.ops:
            floats = [t.dtype for t in op.outputs if t.dtype in ("fp16", "fp32")]
            if not is_weight_op(op.op_type) and op.op_type != "cast" and floats:
                counts[floats[0]] += 1
        return dict(counts)

    def compressed_weight_ops(self) -> dict[str, int]:
        """constexpr_* ops (compressed weights) by type."""
        return dict(Counter(op.op_type for op in self.ops if op.op_type.startswith(CONSTEXPR_PREFIX)).most_common())


CONSTEXPR_PREFIX = "constexpr_"


def is_weight_op(op_type: str) -> bool:
    """A const, or a constexpr_* op that expands a compressed weight at load time."""
    return op_type == "const" or op_type.startswith(CONSTEXPR_PREFIX)


def summarize_mil(program: Any) -> ProgramSummary:
    """Summary of an in-memory MIL program (``mlmodel._mil_program``), with region tags."""
    from coremltools.converters.mil.mil import types

    def tensor(var: Any) -> TensorInfo:
        dtype = types.builtin_to_string(var.dtype) if var.dtype is not None else "?"
        shape = tuple(int(d) if isinstance(d, int) or hasattr(d, "__index__") else str(d) for d in (var.shape or ()))
        return TensorInfo(var.name, dtype, shape)

    function = program.functions["main"]
    ops: list[OpInfo] = []

    def walk(block: Any) -> None:
        for op in block.operations:
            readers = [child.op_type for v in op.outputs for child in v.child_ops]
            data = op.op_type == "const" and bool(readers) and all(t.startswith(CONSTEXPR_PREFIX) for t in readers)
            ops.append(OpInfo(op.outputs[0].name if op.outputs else op.name, op.op_type,
                              tuple(tensor(v) for v in op.outputs), op_region(op), data))  # fmt: skip
            for inner in op.blocks:
                walk(inner)

    walk(function)
    return ProgramSummary(ops, tuple(tensor(v) for v in function.inputs.values()),
                          tuple(tensor(v) for v in function.outputs), has_regions=True)  # fmt: skip


def summarize_spec(spec: Any) -> ProgramSummary:
    """Summary of a saved package's protobuf spec (``MLModel(..., skip_model_load=True).get_spec()``)."""
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]

    def tensor(named: Any) -> TensorInfo:
        t = named.type.tensorType
        shape = tuple(int(d.constant.size) if d.HasField("constant") else "?" for d in t.dimensions)
        return TensorInfo(named.name, _DTYPES.get(int(t.dataType), str(t.dataType)), shape)

    ops: list[OpInfo] = []

    def walk(b: Any) -> None:
        for op in b.operations:
            outputs = tuple(tensor(o) for o in op.outputs)
            ops.append(OpInfo(outputs[0].name if outputs else op.type, op.type, outputs))
            for inner in op.blocks:
                walk(inner)

    # A saved spec inlines a constexpr op's LUT / indices / scales into the op: no compression-data consts.
    walk(block)
    by_name = {o.name: o for op in ops for o in op.outputs}
    inputs = tuple(tensor(i) for i in function.inputs)
    outputs = tuple(by_name.get(name, TensorInfo(name, "?", ())) for name in block.outputs)
    return ProgramSummary(ops, inputs, outputs, has_regions=False)


# ---- checks -----------------------------------------------------------------------------------------


def find_inverse_ops(summary: ProgramSummary) -> list[str]:
    return [op.name for op in summary.ops if op.op_type == "inverse"]


def find_high_rank(summary: ProgramSummary, max_rank: int = MAX_RANK) -> list[str]:
    """'name (type): shape' of every op output above ``max_rank`` (consts included, compression data not)."""
    return [f"{op.name} ({op.op_type}): {t.shape}" for op in summary.ops if not op.compression_data
            for t in op.outputs if len(t.shape) > max_rank]  # fmt: skip


def find_large_dimensions(summary: ProgramSummary, limit: int = MAX_DIMENSION) -> list[str]:
    """Tensors with a dimension above ``limit`` (consts and constexpr weights excluded: not activations)."""
    return [f"{op.name} ({op.op_type}): {t.shape}" for op in summary.ops if not is_weight_op(op.op_type)
            for t in op.outputs if any(isinstance(d, int) and d > limit for d in t.shape)]  # fmt: skip


def find_precision_leaks(summary: ProgramSummary, pinned: Iterable[str]) -> list[str]:
    """In an fp16 program: float outputs that are fp16 although their op is pinned (or a sensitive type)."""
    pinned = frozenset(pinned)
    leaks = []
    for op in summary.ops:
        must_be_fp32 = op.op_type in SENSITIVE_OP_TYPES or (op.region is not None and op.region in pinned)
        if must_be_fp32 and not is_weight_op(op.op_type) and op.op_type != "cast":
            leaks += [f"{op.name} ({op.op_type}, region {op.region})" for t in op.outputs if t.dtype == "fp16"]
    return leaks


def _shape_matches(found: tuple[int | str, ...], wanted: tuple[int | str, ...]) -> bool:
    return len(found) == len(wanted) and all(isinstance(w, str) or w == f for f, w in zip(found, wanted, strict=True))


_NUMPY_TO_MIL = {"float32": "fp32", "float16": "fp16"}


def io_mismatches(summary: ProgramSummary, io: Any) -> list[str]:
    """Differences between the program's I/O and an IOSpec (names, order, shapes, dtypes)."""
    problems = []
    for kind, found, wanted in (("input", summary.inputs, io.inputs), ("output", summary.outputs, io.outputs)):
        if [t.name for t in found] != [t.name for t in wanted]:
            problems.append(f"{kind}s are {[t.name for t in found]}, expected {[t.name for t in wanted]}")
            continue
        for tensor, spec in zip(found, wanted, strict=True):
            if not _shape_matches(tensor.shape, tuple(spec.shape)):
                problems.append(f"{kind} '{tensor.name}' has shape {tensor.shape}, expected {tuple(spec.shape)}")
            wanted_dtype = _NUMPY_TO_MIL.get(spec.dtype, spec.dtype)
            if tensor.dtype != wanted_dtype:
                problems.append(f"{kind} '{tensor.name}' is {tensor.dtype}, expected {wanted_dtype}")
    return problems


def check_program(
    summary: ProgramSummary, io: Any, precision: str, pinned: Iterable[str], expect_pinned: bool = True
) -> dict[str, Any]:
    """All MIL checks; returns a report dict with a ``problems`` list (empty when everything holds).

    ``expect_pinned``: the program contains pinned regions (False for split pieces without tail/GroupNorm).
    """
    pinned = frozenset(pinned)
    problems: list[str] = []
    if inverse := find_inverse_ops(summary):
        problems.append(f"{len(inverse)} MIL 'inverse' ops (1/(x+1e-4), not an exact reciprocal): {inverse[:5]}")
    if high := find_high_rank(summary):
        problems.append(f"{len(high)} tensors above rank {MAX_RANK}: {high[:5]}")
    if large := find_large_dimensions(summary):
        problems.append(f"{len(large)} tensors with a dimension above {MAX_DIMENSION}: {large[:5]}")
    problems += io_mismatches(summary, io)
    dtypes = summary.dtype_counts()
    pinned_fp32 = sum(1 for op in summary.ops if op.region in pinned and not is_weight_op(op.op_type)
                      and op.op_type != "cast")  # fmt: skip
    if precision == "fp16":
        if leaks := find_precision_leaks(summary, pinned):
            problems.append(f"{len(leaks)} pinned ops compute in fp16: {leaks[:5]}")
        if dtypes.get("fp16", 0) == 0:
            problems.append("fp16 export has no fp16 ops")
        if summary.has_regions and expect_pinned and pinned_fp32 == 0:
            problems.append("fp16 export has no pinned fp32 ops")
    elif dtypes.get("fp16", 0):
        problems.append(f"fp32 export has {dtypes['fp16']} fp16 ops")
    return {
        "problems": problems,
        "op_counts": summary.op_counts(),
        "compute_dtypes": dtypes,
        "pinned_fp32_ops": pinned_fp32 if summary.has_regions else None,
        "max_rank": max((len(t.shape) for op in summary.ops if not op.compression_data for t in op.outputs), default=0),
        "compressed_weight_ops": summary.compressed_weight_ops(),
    }
