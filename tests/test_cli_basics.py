"""CLI basics: version, help, one-line user errors."""

from __future__ import annotations

from click.testing import CliRunner

from sharp_export import __version__
from sharp_export.cli import cli
from sharp_export.commands.options import PRESET_NAMES, REFERENCE_PRECISIONS, SCENE_FORMATS, Y_UP_FORMATS
from sharp_export.parity.tolerances import REFERENCE_PROFILES
from sharp_export.reference.checkpoint import PRECISIONS as REFERENCE_DTYPES
from sharp_export.reference.model.params import PRESETS


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_preset_choices_match_the_presets_table():
    assert set(PRESET_NAMES) == set(PRESETS)


def test_reference_precisions_are_one_list():
    # Literal in the CLI (no torch at --help), so pinned here to the model's dtypes and the tolerance rows.
    assert set(REFERENCE_PRECISIONS) == set(REFERENCE_DTYPES) == set(REFERENCE_PROFILES)


def test_scene_formats_are_one_list():
    # Literal in the CLI (no torch at --help), so pinned here to the writer's table.
    from sharp_export.reference import ply

    assert SCENE_FORMATS == ply.FORMAT_SUFFIXES and tuple(SCENE_FORMATS) == ply.PLY_FORMATS
    assert Y_UP_FORMATS == ply.Y_UP_FORMATS


def test_help_and_env_import_no_toolchain():
    # A fresh interpreter: `sharp-export --help` (every target command generated) and `env` without torch.
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from sharp_export.cli import cli; "
        "r = CliRunner(); assert r.invoke(cli, ['--help']).exit_code == 0; "
        "assert r.invoke(cli, ['onnx', '--help']).exit_code == 0; assert r.invoke(cli, ['env']).exit_code == 0; "
        "assert r.invoke(cli, ['view', '--help']).exit_code == 0; "
        "assert r.invoke(cli, ['batch', '--help']).exit_code == 0; "
        "names = ('torch', 'onnx', 'onnxruntime', 'coremltools', 'tensorrt', 'tensorrt_rtx_bindings', 'openvino', "
        "'viser', 'gsply', 'matplotlib', 'ray', 'pyarrow', 'executorch', 'torchao'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_unexpected_errors_are_one_line_with_exit_5(monkeypatch, tmp_path):
    from sharp_export.commands import predict

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("sharp_export.reference.checkpoint.build_model", broken)
    result = CliRunner().invoke(cli, ["predict", "--sample", "coffee", "-o", str(tmp_path), "--preset", "tiny",
                                      "--seed", "0"])  # fmt: skip
    assert result.exit_code == 5 and "Traceback" not in result.output, result.output
    assert "unexpected ZeroDivisionError: boom" in result.output and "-v" in result.output
    assert predict.command.name == "predict"


def test_version_and_help_list_every_target():
    assert __version__ in invoke("--version").output
    text = invoke("--help").output
    for name in (
        "predict",
        "render",
        "view",
        "run",
        "batch",
        "parity",
        "env",
        "onnx",
        "coreml",
        "tensorrt",
        "tensorrt-rtx",
        "executorch",
    ):
        assert f"  {name}" in text


def test_predict_user_errors_are_one_line(tmp_path):
    missing = invoke("predict", tmp_path / "nope.jpg", "-o", tmp_path, "--preset", "tiny", "--seed", "0")
    assert missing.exit_code == 1 and missing.output.count("\n") == 1 and "nope.jpg" in missing.output
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    corrupt = invoke("predict", bad, "-o", tmp_path, "--preset", "tiny", "--seed", "0")
    assert corrupt.exit_code == 1 and "bad.jpg" in corrupt.output and "Traceback" not in corrupt.output
    no_weights = invoke("predict", "--sample", "coffee", "-o", tmp_path, "--preset", "tiny")
    assert no_weights.exit_code == 1 and "no weights given" in no_weights.output


def test_predict_writes_a_ply_per_image(golden_dir, tmp_path):
    weights = golden_dir / "weights_perturbed.safetensors"
    result = invoke("predict", golden_dir / "input_640x480.png", "-o", tmp_path, "--preset", "tiny", "-c", weights)
    assert result.exit_code == 0, result.output
    from sharp_export.reference.ply import load_ply

    gaussians, meta = load_ply(tmp_path / "input_640x480.ply")
    assert gaussians.mean_vectors.shape == (1, 73_728, 3)
    assert (meta.width, meta.height) == (640, 480)
