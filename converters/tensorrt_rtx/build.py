"""The TensorRT-RTX builder: parse a TensorRT-ready ONNX and build an engine ahead of time, here, without a GPU.

TensorRT for RTX (``tensorrt_rtx_bindings``, pip wheels for x86-64 Linux and Windows) builds strongly typed
engines for RTX compute capabilities chosen in the builder config (``set_compute_capability``), so no GPU is
needed: kernels are compiled for the actual GPU at the engine's first run (the runtime cache keeps them). Two users:

* the ``tensorrt-rtx`` target writes the engine (``target.py``);
* the ``tensorrt`` target's ``--no-build`` export parses and builds its ONNX with it as a check (``rtx_check``),
  and records the result as a TensorRT-RTX build, never as a TensorRT engine.

The build runs in a child process (``python -m sharp_export.converters.tensorrt_rtx.child REQUEST.json``,
``child.py``): its peak RSS is the build's own (the exporting process holds the torch model), and the library's
log lines reach the export log. ``tensorrt_rtx_bindings`` is imported in the child only.

Which precisions each compute capability builds was measured on the tiny preset with TensorRT-RTX 1.7.1.116
(``COMPUTE_CAPABILITIES``, docs/targets/tensorrt-rtx.md) and is checked before any work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.errors import ConversionError, UserInputError
from sharp_export.progress import echo, give_freed_memory_back

if TYPE_CHECKING:
    from sharp_export.artifact import IOSpec

RTX_MODULE = "tensorrt_rtx_bindings"
RTX_DISTRIBUTION = "tensorrt-rtx-cu12-bindings"
INSTALL_HINT = "pip install 'sharp-export[tensorrt-rtx]' (x86-64 Linux or Windows)"
PORTABLE = "portable"  # no compute capability set: TensorRT-RTX's engine for every GPU it supports
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


@dataclass(frozen=True)
class ComputeCapability:
    """One --compute-capability value and what TensorRT-RTX 1.7 builds for it (measured, tiny preset)."""

    name: str  # the option value, e.g. "sm89"
    enum: str | None  # trt.ComputeCapability member; None for portable
    gpus: str
    precisions: tuple[str, ...]
    why_not: str  # why the other precisions are refused (the builder's own error, measured)


_NO_FP8 = "fp8 needs FP8 tensor cores (SM89 or later): 'the model contains HW-specific datatypes: fp8_e4m3'"
COMPUTE_CAPABILITIES = {
    cc.name: cc
    for cc in (
        ComputeCapability(
            "sm75",
            "SM75",
            "Turing (RTX 20, T4)",
            ("fp16",),
            "TensorRT-RTX refuses Turing fp32 GEMMs ('FP32 GEMM is not supported'; the fp32 and int8 graphs keep fp32 "
            "MatMuls) and has no bf16 or fp8 there ('HW-specific datatypes: b16', 'fp8_e4m3')",
        ),
        ComputeCapability("sm80", "SM80", "Ampere (A100)", ALL_PRECISIONS[:4], _NO_FP8),
        ComputeCapability("sm86", "SM86", "Ampere (RTX 30, A-series workstation)", ALL_PRECISIONS[:4], _NO_FP8),
        ComputeCapability("sm89", "SM89", "Ada Lovelace (RTX 40, L4, L40)", ALL_PRECISIONS, ""),
        ComputeCapability("sm120", "SM120", "Blackwell (RTX 50, RTX PRO)", ALL_PRECISIONS, ""),
        ComputeCapability("sm121", "SM121", "GB10 (DGX Spark)", ALL_PRECISIONS, ""),
        ComputeCapability(PORTABLE, None, "every GPU TensorRT-RTX supports", ALL_PRECISIONS, ""),
    )
}


def parse_compute_capabilities(value: str) -> tuple[str, ...]:
    """'sm86,sm89' -> ('sm86', 'sm89'); 'portable' -> ('portable',). Raises UserInputError naming the bad value."""
    names = [part.strip().lower() for part in str(value).split(",") if part.strip()]
    unknown = [n for n in names if n not in COMPUTE_CAPABILITIES]
    if not names or unknown:
        raise UserInputError(
            f"--compute-capability {value!r}: unknown {unknown or 'empty value'}",
            fix=f"use a comma-separated list of {', '.join(c for c in COMPUTE_CAPABILITIES if c != PORTABLE)}, "
            f"or {PORTABLE}",
        )
    if PORTABLE in names and len(names) > 1:
        raise UserInputError(f"--compute-capability {value!r}: {PORTABLE} stands alone", fix=f"pass {PORTABLE} alone")
    return tuple(dict.fromkeys(names))


def check_precision(precision: str, capabilities: Sequence[str]) -> None:
    """Refuse a precision one of the compute capabilities cannot build, with the builder's reason."""
    for name in capabilities:
        cc = COMPUTE_CAPABILITIES[name]
        if precision not in cc.precisions:
            raise UserInputError(
                f"--precision {precision} cannot be built for {name} ({cc.gpus}) by TensorRT-RTX: {cc.why_not}",
                fix=f"{name} builds {' / '.join(cc.precisions)}; drop {name} or choose one of those",
            )


def check_network_io(network: dict[str, Any], io: IOSpec) -> None:
    """The parsed network's I/O (what the engine binds) must be the artifact's I/O spec: names, order, dtypes, dims."""
    for kind, specs in (("inputs", io.inputs), ("outputs", io.outputs)):
        found = network[kind]
        want = [(s.name, s.dtype, [-1 if isinstance(d, str) else int(d) for d in s.shape]) for s in specs]
        got = [(t["name"], t["dtype"], list(t["shape"])) for t in found]
        if want != got:
            raise ConversionError(f"the TensorRT-RTX network's {kind} {got} differ from the I/O spec {want}")


# ---- parent side: run the child ----------------------------------------------------------------------------


def run_builder(
    onnx_path: Path,
    engine_path: Path | None,
    *,
    compute_capabilities: Sequence[str],
    batch_shapes: tuple[int, int, int] | None,  # (min, opt, max) batch of a dynamic-batch model
    resolution: int,
) -> dict[str, Any]:
    """Parse and build in a child process; returns its record (``status``: built, parse_failed or build_failed).

    ``engine_path`` None: the engine is built and discarded (the tensorrt target's check). Raises ConversionError
    only when the child itself fails (crash, no result).
    """
    # Scratch beside the ONNX (inside the artifact being written, removed before its manifest): a discarded
    # full-size engine weighs as much as the ONNX, more than a small /tmp may hold.
    with tempfile.TemporaryDirectory(prefix=".rtx-build-", dir=Path(onnx_path).parent) as scratch:
        result_path = Path(scratch) / "result.json"
        request = {
            "onnx": str(onnx_path),
            "engine": str(engine_path if engine_path is not None else Path(scratch) / "discarded.engine"),
            "compute_capabilities": list(compute_capabilities),
            "batch_shapes": list(batch_shapes) if batch_shapes else None,
            "resolution": resolution,
            "result": str(result_path),
        }
        request_path = Path(scratch) / "request.json"
        request_path.write_text(json.dumps(request))
        command = [sys.executable, "-m", "sharp_export.converters.tensorrt_rtx.child", str(request_path)]
        # The child loads the ONNX and builds beside this process: first hand back what the conversion freed (full
        # preset, tensorrt fp16 --no-build: this process held 3.9 GB RSS while the child ran, 0.6 GB with this call;
        # the export's tree peak, 8.61 GB before, is now its ONNX Runtime check's, 8.17 GB).
        give_freed_memory_back()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert child.stdout is not None
        for line in child.stdout:
            echo(f"      {line.rstrip()}")
        code = child.wait()
        if not result_path.is_file():
            killed = f" (killed by signal {-code}: out of memory?)" if code < 0 else ""
            raise ConversionError(
                f"the TensorRT-RTX build process exited with code {code}{killed} and no result", path=onnx_path
            )
        return json.loads(result_path.read_text())


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    compute_capabilities: Sequence[str],
    batch_shapes: tuple[int, int, int] | None,
    resolution: int,
) -> dict[str, Any]:
    """Build ``engine_path``; raises ConversionError (with the node name for a parser error) unless it was built."""
    record = run_builder(
        onnx_path,
        engine_path,
        compute_capabilities=compute_capabilities,
        batch_shapes=batch_shapes,
        resolution=resolution,
    )
    if record["status"] != "built":
        raise ConversionError(record["error"], path=onnx_path, fix=record.get("fix"))
    return record


def rtx_check(
    onnx_path: Path,
    io: IOSpec,
    *,
    capability: str,
    why: str,  # why this compute capability (the target GPU it stands in for)
    batch_shapes: tuple[int, int, int] | None,
    resolution: int,
) -> dict[str, Any]:
    """The tensorrt target's check: parse and build its ONNX with TensorRT-RTX for ``capability``, discard the engine.

    Returns the record for the manifest (``status`` built / build_failed, or ``not run`` where TensorRT-RTX is not
    installed). A parser error raises ConversionError naming the node: TensorRT's parser would stop there too. A
    failed build is recorded and warned about, not raised: TensorRT's builder is another one (TensorRT-RTX 1.7
    cannot build a bf16 ConvTranspose, for one).
    """
    import importlib.util

    if importlib.util.find_spec(RTX_MODULE) is None:
        return {"status": "not run", "reason": f"{RTX_DISTRIBUTION} not installed: {INSTALL_HINT}"}
    echo(f"    TensorRT-RTX check: parse and build the ONNX for {capability} ({why}); the engine is discarded")
    record = run_builder(
        onnx_path, None, compute_capabilities=[capability], batch_shapes=batch_shapes, resolution=resolution
    )
    record["what"] = (
        f"a {record['builder']} ahead-of-time build for {capability} ({why}) as a check of this ONNX, discarded; "
        "not a TensorRT engine: build the plan with the trtexec line on the target machine"
    )
    if record["status"] == "parse_failed":
        raise ConversionError(
            record["error"], path=onnx_path, fix="export with --no-rtx-check to skip this check; " + record["fix"]
        )
    if record["status"] == "built":
        check_network_io(record["network"], io)
        echo(f"    TensorRT-RTX check: built for {capability} in {record['build_seconds']:.1f} s")
    else:
        echo(f"warning: TensorRT-RTX check: {record['error'][:400]} (recorded; TensorRT's own builder may differ)")
    return record
