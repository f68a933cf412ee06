"""The OpenVINO target: the fast CPU path. ONNX (the onnx target's own export) -> OpenVINO IR (model.xml/.bin).

Why this target exists (benchmarks/results/cpu_paths_full.json, full preset on the project's 2-core
AVX-512 BF16 CPU): OpenVINO runs the fp32 IR in 134 s and with ``INFERENCE_PRECISION_HINT=bf16`` in 60 s,
against 190 s for torch eager fp32 and 118 s for torch bf16 autocast in the same run.

* The IR always stores fp32 weights (``save_model(compress_to_fp16=False)``): OpenVINO's default would
  silently halve them. ``--precision bf16`` is an execution hint recorded in the manifest and applied by the
  runner when it compiles the model; the file is the same as for fp32.
* Conversion goes through the ONNX file because ``ov.convert_model`` on the torch module took 17 minutes on
  the full preset (torch tracing of 702M parameters), the ONNX path a fraction of that.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sharp_export.contract import ConvertContext, ConvertResult, ExportRequest
from sharp_export.converters.onnx import DEFAULT_OPSET, OPSET_OPTION, validate_opset
from sharp_export.converters.onnx import MODEL_FILE as ONNX_FILE
from sharp_export.errors import ConversionError
from sharp_export.progress import echo, heartbeat, rss_gb
from sharp_export.targets import Target, missing_packages, register_target

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.runtime.openvino_runner import OpenVINORunner

MODEL_FILE = "model.xml"  # + model.bin (weights) beside it
ONNX_SUBDIR = "onnx"  # scratch folder for the intermediate ONNX, removed after conversion
# precision -> OpenVINO CPU INFERENCE_PRECISION_HINT
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def check_environment() -> str | None:
    reason = missing_packages({"openvino": "openvino", "onnx": "onnx", "onnxscript": "onnxscript"})
    if reason is not None:
        return f"{reason}: pip install 'sharp-export[openvino]'"
    return None


def validate(request: ExportRequest) -> None:
    validate_opset(request)


def convert(ctx: ConvertContext) -> ConvertResult:
    import time

    import openvino as ov

    from sharp_export.converters.onnx_export import export_onnx

    onnx_dir = ctx.workdir / ONNX_SUBDIR
    onnx_dir.mkdir()
    details = export_onnx(
        ctx.model,
        ctx.example,
        ctx.io,
        onnx_dir,
        opset=int(ctx.request.options.get("opset", DEFAULT_OPSET)),
        dynamic_batch=ctx.request.dynamic_batch,
        external_data=True,
        metadata=ctx.metadata,
    )
    start = time.perf_counter()
    try:
        with heartbeat("ov.convert_model"):
            model = ov.convert_model(str(onnx_dir / ONNX_FILE))
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ConversionError(f"OpenVINO could not read the ONNX model: {first}", fix="see export.log") from error
    convert_s = time.perf_counter() - start
    for key, value in ctx.metadata.items():
        model.set_rt_info(value, ["sharp_export", key.removeprefix("sharp_export.")])
    start = time.perf_counter()
    ov.save_model(model, str(ctx.workdir / MODEL_FILE), compress_to_fp16=False)
    save_s = time.perf_counter() - start
    del model
    shutil.rmtree(onnx_dir)
    echo(f"    ov.convert_model {convert_s:.1f} s, save {save_s:.1f} s, RSS {rss_gb():.1f} GB")
    details = {
        "exporter": f"{details['exporter']} -> OpenVINO {ov.__version__} (ov.convert_model on the ONNX file)",
        "openvino": ov.__version__,
        "onnx_opset": details["opset"],
        "weights": "fp32 (save_model compress_to_fp16=False)",
        "inference_precision_hint": INFERENCE_PRECISION[ctx.request.precision],
        "onnx_export_seconds": details["export_seconds"],
        "convert_seconds": round(convert_s, 2),
        "save_seconds": round(save_s, 2),
        "files": [MODEL_FILE, "model.bin"],
    }
    return ConvertResult(main_file=MODEL_FILE, details=details)


def open_runner(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> OpenVINORunner:
    from sharp_export.runtime.openvino_runner import OpenVINORunner

    hint = INFERENCE_PRECISION[manifest.precision]
    return OpenVINORunner(Path(artifact_dir) / manifest.main_file, manifest.io, device, hint)


OPENVINO_TARGET = register_target(
    Target(
        name="openvino",
        suffix=".xml",
        extra="openvino",
        description="OpenVINO IR for CPUs; bf16 runs on AVX-512 BF16 / AMX (the fastest CPU path measured)",
        precisions=("fp32", "bf16"),
        supports_dynamic_batch=True,
        devices=("cpu",),
        options=(OPSET_OPTION,),
        tolerance_profiles={"bf16": "bf16-openvino"},
        check_environment=check_environment,
        convert=convert,
        open_runner=open_runner,
        validate=validate,
    )
)
