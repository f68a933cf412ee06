"""The child process of the TensorRT-RTX build (``build.py`` starts it): parse -> configure -> build -> write.

``python -m sharp_export.converters.tensorrt_rtx.child REQUEST.json`` reads what to build from the request file and
writes its record (status, parsed network I/O, engine size and sha256, seconds, its own peak RSS) to the result
file the request names. Nothing imports this module: it is only run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharp_export.converters.tensorrt_rtx.build import COMPUTE_CAPABILITIES, PORTABLE
from sharp_export.progress import hwm_rss_bytes


def _dtype_name(trt: Any, dtype: Any) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16", trt.int8: "int8",
             trt.int32: "int32", trt.int64: "int64", trt.bool: "bool", trt.uint8: "uint8"}  # fmt: skip
    return names.get(dtype, str(dtype))


def _tensor_record(trt: Any, tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": _dtype_name(trt, tensor.dtype), "shape": list(tensor.shape)}


def _peak_rss_gb() -> float | None:
    """This process's own peak RSS: VmHWM of its memory map, which is new at exec. (getrusage's ru_maxrss is not: on
    Linux a child started from the export inherits the export's peak through fork and exec.) None off Linux."""
    peak = hwm_rss_bytes()
    return None if peak is None else round(peak / 1e9, 2)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def build_here(request: dict[str, Any]) -> dict[str, Any]:
    """Parse -> configure (compute capabilities, profile) -> build -> write; the child's whole job."""
    import tensorrt_rtx_bindings as trt

    errors: list[str] = []

    class Logger(trt.ILogger):  # TensorRT-RTX's lines to stdout (the export log), errors kept for the record
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, message: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                errors.append(message.strip().splitlines()[0][:600])
            if severity <= trt.ILogger.Severity.WARNING:
                print(f"[TensorRT-RTX {severity.name}] {message.strip()[:600]}", flush=True)

    logger = Logger()
    capabilities = request["compute_capabilities"]
    record: dict[str, Any] = {
        "builder": f"TensorRT-RTX {trt.__version__}",
        "tensorrt_rtx_version": trt.__version__,
        "onnx_parser_version": trt.get_nv_onnx_parser_version(),
        "compute_capabilities": capabilities,
        "strongly_typed": True,
    }
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    parsed = parser.parse_from_file(request["onnx"])  # resolves model.onnx.data beside the model
    record["parse_seconds"] = round(time.perf_counter() - start, 2)
    if not parsed:
        failures = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            failures.append(f"node '{error.node_name()}' ({error.node_operator()}): {error.desc().strip()}")
        record.update(status="parse_failed", error="TensorRT-RTX's ONNX parser failed at " + "; ".join(failures))
        record["fix"] = "the node is named in the ONNX (netron, onnx.load); report it with the manifest"
        return record
    record["network"] = {
        "layers": network.num_layers,
        "inputs": [_tensor_record(trt, network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_tensor_record(trt, network.get_output(i)) for i in range(network.num_outputs)],
    }
    config = builder.create_builder_config()
    if capabilities != [PORTABLE]:
        config.num_compute_capabilities = len(capabilities)
        for index, name in enumerate(capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, COMPUTE_CAPABILITIES[name].enum), index)
    if request["batch_shapes"]:
        resolution = request["resolution"]
        profile = builder.create_optimization_profile()
        low, opt, high = request["batch_shapes"]
        profile.set_shape("image", *[(b, 3, resolution, resolution) for b in (low, opt, high)])
        profile.set_shape("disparity_factor", (low,), (opt,), (high,))
        config.add_optimization_profile(profile)
        record["batch_profile"] = request["batch_shapes"]
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    record["build_seconds"] = round(time.perf_counter() - start, 2)
    if serialized is None:
        reason = errors[-1] if errors else "no error line was logged"
        record.update(status="build_failed", error=f"TensorRT-RTX could not build the engine: {reason}")
        record["fix"] = "see docs/targets/tensorrt-rtx.md (what each precision and compute capability builds)"
        return record
    engine = Path(request["engine"])
    with open(engine, "wb") as handle:
        handle.write(serialized)  # IHostMemory is a buffer: written without a copy into Python bytes
    del serialized
    record.update(status="built", engine_bytes=engine.stat().st_size, engine_sha256=_sha256(engine))
    return record


def main(argv: Sequence[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    record = build_here(request)
    record["build_peak_rss_gb"] = _peak_rss_gb()
    record["build_peak_rss_note"] = "peak RSS of the build process (parse + build), not of the export"
    Path(request["result"]).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
