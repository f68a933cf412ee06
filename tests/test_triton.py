"""`sharp-export triton`: config.pbtxt against Triton's own schema, the repository layout, refusals, atomicity.

Two real tiny ONNX artifacts are exported once for the module (fixed batch with external data, and
--dynamic-batch); TensorRT, Core ML and OpenVINO artifacts are stand-ins made by editing a copy of the ONNX
artifact's manifest (their model files are never loaded here). Tests that parse a config need tritonclient
(the `triton` extra, part of `all`) and skip without it.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sharp_export import triton
from sharp_export.artifact import MANIFEST_NAME, TensorSpec, read_manifest
from sharp_export.cli import cli
from sharp_export.contract import ExportRequest
from sharp_export.errors import ConversionError, MissingDependencyError, UserInputError
from sharp_export.export import run_export
from sharp_export.triton import triton_config, validate_config, write_triton_repository

try:
    from tritonclient.grpc import model_config_pb2

    HAVE_TRITONCLIENT = True
except (ImportError, RuntimeError):  # RuntimeError: tritonclient installed without its grpc extra
    model_config_pb2 = None
    HAVE_TRITONCLIENT = False

needs_tritonclient = pytest.mark.skipif(
    not HAVE_TRITONCLIENT, reason="tritonclient[grpc] not installed: pip install 'sharp-export[triton]'"
)


# ---- artifacts ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny ONNX, fixed batch 1, weights in model.onnx.data (the layout of the full-size model)."""
    out = tmp_path_factory.mktemp("triton") / "fixed"
    request = ExportRequest(
        target="onnx", output=out, preset="tiny", seed=0, parity=False, options={"external_data": "always"}
    )
    run_export(request)
    assert (out / "model.onnx.data").is_file()
    return out


@pytest.fixture(scope="module")
def dynamic_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "dynamic"
    run_export(ExportRequest(target="onnx", output=out, preset="tiny", seed=0, parity=False, dynamic_batch=True))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edited_artifact(source: Path, target: Path, change, files: dict[str, bytes] | None = None) -> Path:
    """A copy of ``source``'s manifest, edited by ``change(data)``, with ``files`` written and listed instead.

    The manifest's "files" list is rebuilt from what is written, so check_file_sizes passes.
    """
    target.mkdir(parents=True)
    data = json.loads((source / MANIFEST_NAME).read_text())
    change(data)
    listed = {}
    for name, content in (files or {}).items():
        (target / name).write_bytes(content)
        listed[name] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    data["files"] = listed
    (target / MANIFEST_NAME).write_text(json.dumps(data, indent=2))
    return target


def plan_artifact(source: Path, target: Path, profile=(1, 1, 8)) -> Path:
    """A stand-in TensorRT artifact: the dynamic ONNX manifest, target tensorrt, a few bytes as model.plan."""

    def change(data):
        data["target"] = "tensorrt"
        data["main_file"] = "model.plan"
        data["conversion"]["tensorrt"] = {
            "tensorrt_version": "10.3.0",
            "gpu_compute_capability": "9.0",
            "gpu_name": "NVIDIA H100",
            "batch_profile": list(profile),
        }

    return edited_artifact(source, target, change, {"model.plan": b"not really a plan\x00\x01"})


def resolution(artifact: Path) -> int:
    return int(read_manifest(artifact).preprocessing["resolution"])


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ---- config text ----------------------------------------------------------------------------------------------------


@needs_tritonclient
def test_dynamic_batch_config_parses_with_tritons_schema(dynamic_artifact):
    manifest = read_manifest(dynamic_artifact)
    text = triton_config(manifest, model_name="sharp", max_batch_size=None, instances=2, kind="gpu")
    config = validate_config(text, manifest)
    r = resolution(dynamic_artifact)
    n = 2 * (r // 2) ** 2
    assert config.name == "sharp"
    assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"
    assert config.max_batch_size == 8  # the default, under the export's limit of 64
    image, disparity = config.input
    assert (image.name, list(image.dims), image.HasField("reshape")) == ("image", [3, r, r], False)
    assert image.data_type == model_config_pb2.TYPE_FP32
    # [batch] has no dims once batch is left out: declared [1], reshaped to [] for the model.
    assert (disparity.name, list(disparity.dims)) == ("disparity_factor", [1])
    assert disparity.HasField("reshape") and list(disparity.reshape.shape) == []
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs == {
        "mean_vectors": [n, 3],
        "singular_values": [n, 3],
        "quaternions": [n, 4],
        "colors": [n, 3],
        "opacities": [n],
    }
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 10_000
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["sharp_export.preset"] == "tiny" and params["sharp_export.precision"] == "fp32"
    assert params["sharp_export.checkpoint_sha256"] == "none"  # seeded weights: no checkpoint
    assert text.startswith("# ") and "UNTRAINED" in text.splitlines()[2]


@needs_tritonclient
def test_fixed_batch_config_has_full_shapes_and_no_batcher(fixed_artifact):
    manifest = read_manifest(fixed_artifact)
    config = validate_config(triton_config(manifest, kind="cpu"), manifest)
    r = resolution(fixed_artifact)
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    image, disparity = config.input
    assert list(image.dims) == [1, 3, r, r]
    assert list(disparity.dims) == [1] and not disparity.HasField("reshape")
    assert list(config.output[4].dims) == [1, 2 * (r // 2) ** 2]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_max_batch_must_fit_the_artifact(dynamic_artifact, fixed_artifact):
    dynamic = read_manifest(dynamic_artifact)
    assert "max_batch_size: 64\n" in triton_config(dynamic, max_batch_size=64)
    assert "preferred_batch_size: [ 3 ]" in triton_config(dynamic, max_batch_size=3)
    for bad in (0, -1, 65):
        with pytest.raises(UserInputError, match=rf"--max-batch {bad} .*1\.\.64"):
            triton_config(dynamic, max_batch_size=bad)
    fixed = read_manifest(fixed_artifact)
    assert "max_batch_size: 0\n" in triton_config(fixed, max_batch_size=0)
    with pytest.raises(UserInputError, match="fixed batch of 1.*--dynamic-batch"):
        triton_config(fixed, max_batch_size=2)


def test_bad_names_kinds_and_instances_are_refused(dynamic_artifact):
    manifest = read_manifest(dynamic_artifact)
    for name in ("../evil", "a/b", "", ".hidden", "-x", "sp ace", "dot."):
        with pytest.raises(UserInputError, match="not a safe model name"):
            triton_config(manifest, model_name=name)
    assert 'name: "sharp-v1.2_b"' in triton_config(manifest, model_name="sharp-v1.2_b")
    with pytest.raises(UserInputError, match="--kind"):
        triton_config(manifest, kind="tpu")
    with pytest.raises(UserInputError, match="--instances 0"):
        triton_config(manifest, instances=0)


@needs_tritonclient
def test_tensorrt_plan_config(dynamic_artifact, tmp_path):
    artifact = plan_artifact(dynamic_artifact, tmp_path / "plan", profile=(1, 1, 8))
    manifest = read_manifest(artifact)
    text = triton_config(manifest, max_batch_size=None)
    config = validate_config(text, manifest)
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.max_batch_size == 8  # min(default 8, profile max 8)
    assert "TensorRT 10.3.0" in text and "NVIDIA H100" in text  # the header says which TensorRT the server needs
    with pytest.raises(UserInputError, match=r"--max-batch 9 .*1\.\.8.*TensorRT batch profile"):
        triton_config(manifest, max_batch_size=9)
    with pytest.raises(UserInputError, match="only on the GPU"):
        triton_config(manifest, kind="cpu")
    small = read_manifest(plan_artifact(dynamic_artifact, tmp_path / "plan4", profile=(1, 2, 4)))
    assert validate_config(triton_config(small), small).max_batch_size == 4  # capped at the profile's max
    odd = read_manifest(plan_artifact(dynamic_artifact, tmp_path / "plan2", profile=(2, 2, 4)))
    with pytest.raises(UserInputError, match="starts at 2"):
        triton_config(odd)


@needs_tritonclient
def test_tensorrt_ready_onnx_is_served_by_onnxruntime(fixed_artifact, tmp_path):
    # `sharp-export tensorrt --no-build`: target tensorrt, but the main file is model.onnx (no plan).
    artifact = tmp_path / "ready"
    shutil.copytree(fixed_artifact, artifact)
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    data["target"] = "tensorrt"
    (artifact / MANIFEST_NAME).write_text(json.dumps(data))
    manifest = read_manifest(artifact)
    assert validate_config(triton_config(manifest), manifest).platform == "onnxruntime_onnx"
    model = write_triton_repository(artifact, tmp_path / "repo")
    assert listing(model) == {"config.pbtxt", "1/model.onnx", "1/model.onnx.data", "sharp_export_manifest.json"}


@pytest.mark.parametrize("target, main_file", [("coreml", "model.mlpackage"), ("openvino", "model.xml")])
def test_other_targets_are_refused_in_one_line(fixed_artifact, tmp_path, target, main_file):
    def change(data):
        data["target"] = target
        data["main_file"] = main_file

    artifact = edited_artifact(fixed_artifact, tmp_path / target, change, {main_file: b"x"})
    with pytest.raises(UserInputError, match=rf"is a {target} artifact; Triton can serve onnx artifacts"):
        triton_config(read_manifest(artifact), artifact=artifact)
    result = CliRunner().invoke(cli, ["triton", str(artifact), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert f"is a {target} artifact" in result.output
    assert not (tmp_path / "repo").exists()


# ---- the schema check -----------------------------------------------------------------------------------------------


@needs_tritonclient
def test_validate_config_rejects_text_that_does_not_parse(dynamic_artifact):
    text = triton_config(read_manifest(dynamic_artifact))
    broken = text.replace("platform:", "platfrom:")
    with pytest.raises(ConversionError, match=r"does not parse with Triton's ModelConfig schema.*platfrom.*line \d+"):
        validate_config(broken)
    with pytest.raises(ConversionError, match="does not parse"):
        validate_config(text.replace("kind: KIND_GPU", "kind: KIND_TPU"))


@needs_tritonclient
def test_validate_config_catches_a_writer_typo_the_parser_accepts(dynamic_artifact):
    manifest = read_manifest(dynamic_artifact)
    text = triton_config(manifest)
    r = resolution(dynamic_artifact)
    validate_config(text)  # without a manifest only the schema is checked
    wrong_dims = text.replace(f"dims: [ 3, {r}, {r} ]", f"dims: [ 3, {r}, {r + 1} ]")
    assert wrong_dims != text
    with pytest.raises(ConversionError, match=rf"input 'image' has dims \[3, {r}, {r + 1}\], expected"):
        validate_config(wrong_dims, manifest)
    no_reshape = text.replace("    reshape: { shape: [ ] }\n", "")
    assert no_reshape != text
    with pytest.raises(ConversionError, match="'disparity_factor' has reshape None, expected"):
        validate_config(no_reshape, manifest)
    with pytest.raises(ConversionError, match="platform is 'tensorrt_plan'"):
        validate_config(text.replace('"onnxruntime_onnx"', '"tensorrt_plan"'), manifest)
    with pytest.raises(ConversionError, match="max_batch_size 0 but the artifact has a dynamic batch"):
        validate_config(text.replace("max_batch_size: 8", "max_batch_size: 0"), manifest)


@needs_tritonclient
def test_hostile_manifest_strings_are_escaped(dynamic_artifact):
    # A tensor name with a quote and a newline must round-trip through the text format, not inject lines.
    manifest = read_manifest(dynamic_artifact)
    first = manifest.io.inputs[0]
    odd = TensorSpec('im"age\n\\x', first.shape, first.dtype, "line one\nmax_batch_size: 99")
    io = dataclasses.replace(manifest.io, inputs=(odd, *manifest.io.inputs[1:]))
    manifest = dataclasses.replace(manifest, io=io, source={**manifest.source, "preset": 'ti"ny\n'})
    config = validate_config(triton_config(manifest), manifest)
    assert config.input[0].name == 'im"age\n\\x' and config.max_batch_size == 8
    assert config.parameters["sharp_export.preset"].string_value == 'ti"ny\n'


def test_missing_tritonclient_is_a_missing_dependency(monkeypatch, dynamic_artifact):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"sharp-export\[triton\]") as caught:
        validate_config("name: 'x'")
    assert caught.value.exit_code == 2


# ---- the repository -------------------------------------------------------------------------------------------------


@needs_tritonclient
def test_repository_layout_and_provenance(fixed_artifact, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)  # a repository holds many models: this one must stay untouched
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    model = write_triton_repository(fixed_artifact, repo, model_name="sharp_fixed", kind="cpu")
    assert model == (repo / "sharp_fixed").absolute()
    assert listing(model) == {"config.pbtxt", "1/model.onnx", "1/model.onnx.data", "sharp_export_manifest.json"}
    for name in ("model.onnx", "model.onnx.data"):
        assert sha256(model / "1" / name) == sha256(fixed_artifact / name)
    assert (model / "sharp_export_manifest.json").read_bytes() == (fixed_artifact / MANIFEST_NAME).read_bytes()
    config = validate_config((model / "config.pbtxt").read_text(), read_manifest(fixed_artifact))
    assert config.name == "sharp_fixed" and config.max_batch_size == 0
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'
    assert sorted(p.name for p in repo.iterdir()) == ["other", "sharp_fixed"]  # no temp folders left


@needs_tritonclient
def test_plan_is_placed_as_model_plan(dynamic_artifact, tmp_path):
    artifact = plan_artifact(dynamic_artifact, tmp_path / "plan")
    model = write_triton_repository(artifact, tmp_path / "repo")
    assert listing(model) == {"config.pbtxt", "1/model.plan", "sharp_export_manifest.json"}
    assert (model / "1" / "model.plan").read_bytes() == (artifact / "model.plan").read_bytes()


def test_place_file_copies_when_hard_links_fail(tmp_path, monkeypatch):
    source = tmp_path / "a.bin"
    source.write_bytes(b"weights")
    assert triton.place_file(source, tmp_path / "linked.bin") == "linked"
    assert os.stat(tmp_path / "linked.bin").st_ino == os.stat(source).st_ino

    def no_links(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(triton.os, "link", no_links)
    assert triton.place_file(source, tmp_path / "copied.bin") == "copied"
    assert (tmp_path / "copied.bin").read_bytes() == b"weights"


@needs_tritonclient
def test_truncated_artifact_is_refused_before_writing(fixed_artifact, tmp_path):
    artifact = tmp_path / "copy"
    shutil.copytree(fixed_artifact, artifact)
    data = artifact / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UserInputError, match="model.onnx.data has 100 bytes.*truncated"):
        write_triton_repository(artifact, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@needs_tritonclient
def test_existing_model_needs_force_and_only_ours_is_replaced(dynamic_artifact, tmp_path):
    repo = tmp_path / "repo"
    model = write_triton_repository(dynamic_artifact, repo, max_batch_size=4)
    with pytest.raises(UserInputError, match="already exists.*--force"):
        write_triton_repository(dynamic_artifact, repo, max_batch_size=2)
    assert "max_batch_size: 4\n" in (model / "config.pbtxt").read_text()
    write_triton_repository(dynamic_artifact, repo, max_batch_size=2, force=True)
    assert "max_batch_size: 2\n" in (model / "config.pbtxt").read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["sharp"]
    foreign = repo / "theirs"
    (foreign / "1").mkdir(parents=True)
    (foreign / "config.pbtxt").write_text('name: "theirs"\n')
    with pytest.raises(UserInputError, match="not provably a model folder written by `sharp-export triton`"):
        write_triton_repository(dynamic_artifact, repo, model_name="theirs", force=True)
    assert listing(foreign) == {"config.pbtxt"}


@needs_tritonclient
def test_failure_midway_leaves_no_partial_model(fixed_artifact, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    calls = []

    def fail_on_second(source, target):
        calls.append(target.name)
        if len(calls) == 2:  # model.onnx placed, model.onnx.data not
            raise RuntimeError("simulated crash while copying the weights")
        shutil.copyfile(source, target)
        return "copied"

    monkeypatch.setattr(triton, "place_file", fail_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_triton_repository(fixed_artifact, repo)
    assert calls == ["model.onnx", "model.onnx.data"]
    assert list(repo.iterdir()) == []  # neither sharp/ nor sharp.tmp-*
    monkeypatch.undo()
    model = write_triton_repository(fixed_artifact, repo)
    before = {name: sha256(model / name) for name in listing(model)}
    calls.clear()
    monkeypatch.setattr(triton, "place_file", fail_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_triton_repository(fixed_artifact, repo, force=True)
    assert {name: sha256(model / name) for name in listing(model)} == before  # the old model is intact
    assert [p.name for p in repo.iterdir()] == ["sharp"]


# ---- the command ----------------------------------------------------------------------------------------------------


@needs_tritonclient
def test_cli_writes_the_model_and_prints_its_folder(dynamic_artifact, tmp_path):
    repo = tmp_path / "repo"
    args = ["triton", str(dynamic_artifact), "-o", str(repo), "--name", "sharp_dyn", "--max-batch", "4"]
    result = CliRunner().invoke(cli, [*args, "--instances", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str((repo / "sharp_dyn").absolute())
    assert "onnxruntime_onnx" in result.stderr and "tritonserver --model-repository" in result.stderr
    config = (repo / "sharp_dyn" / "config.pbtxt").read_text()
    assert "max_batch_size: 4\n" in config and "count: 2\n" in config
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and again.output.count("\n") == 1 and "--force" in again.output
    too_big = CliRunner().invoke(cli, [*args[:-1], "65", "--force"])
    assert too_big.exit_code == 1 and too_big.output.count("\n") == 1 and "1..64" in too_big.output


def test_cli_missing_artifact_is_one_line(tmp_path):
    missing = tmp_path / "nope"
    result = CliRunner().invoke(cli, ["triton", str(missing), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {missing}: does not exist")
    assert "Traceback" not in result.output and not (tmp_path / "repo").exists()
