"""`sharp-export coreml`: invalid flag combinations and a missing coremltools fail before any work, in one line."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from sharp_export.commands.export import make_target_command
from sharp_export.errors import MissingDependencyError
from sharp_export.reference import checkpoint
from sharp_export.registry import get_target


@pytest.fixture
def no_work(monkeypatch):
    def explode(*args, **kwargs):
        raise AssertionError("work started before the arguments were validated")

    monkeypatch.setattr(checkpoint, "build_model", explode)


@pytest.fixture
def without_coremltools(monkeypatch):
    """coremltools looks uninstalled to every find_spec-based check (the real check_environment runs)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "coremltools" or name.startswith("coremltools.") else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def invoke(args: list[str]):
    return CliRunner().invoke(make_target_command(get_target("coreml")), args)


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_registered_row():
    target = get_target("coreml")
    assert target.suffix == ".mlpackage" and target.extra == "coreml"
    assert target.precisions == ("fp32", "fp16") and not target.supports_dynamic_batch
    assert {o.name for o in target.options} == {"deployment_target", "compute_units", "split", "weights"}


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["--precision", "int8"], 2, ("'int8' is not one of 'fp32', 'fp16'",)),  # only the row's precisions
        (["--dynamic-batch"], 2, ("No such option '--dynamic-batch'",)),
        (["--compute-units", "cpu_and_ne"], 1, ("the Neural Engine computes only fp16", "--fp16")),
        (["--split", "pieces"], 2, ("Invalid value for '--split'",)),
        (["--deployment-target", "iOS16"], 2, ("Invalid value for '--deployment-target'",)),
        (["--compute-units", "ane"], 2, ("Invalid value for '--compute-units'",)),
        (["--weights", "int4"], 2, ("Invalid value for '--weights'",)),
        (["--device", "cuda"], 2, ("'cuda' is not 'cpu'",)),
    ],
)
def test_invalid_combinations_fail_before_work(tmp_path, no_work, args, code, fragments):
    base = ["--preset", "tiny", "--seed", "0", "-o", str(tmp_path / "a")]
    assert_one_line_error(invoke(base + args), code, *fragments)
    assert not (tmp_path / "a").exists()


def test_missing_coremltools_is_one_line_exit_2(tmp_path, no_work, without_coremltools):
    result = invoke(["--preset", "tiny", "--seed", "0", "-o", str(tmp_path / "a"), "--precision", "fp16"])
    assert_one_line_error(result, 2, "target 'coreml' is not usable here", "pip install 'sharp-export[coreml]'")
    assert not (tmp_path / "a").exists()


def test_missing_coremltools_in_the_library_api(tmp_path, without_coremltools):
    from sharp_export.converters.coreml.convert import convert_coreml

    with pytest.raises(MissingDependencyError, match=r"pip install 'sharp-export\[coreml\]'"):
        convert_coreml(object(), tmp_path, precision="fp16")
