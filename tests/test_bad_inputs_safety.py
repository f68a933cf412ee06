"""Bad-input catalogue, no data loss and no silent garbage (issue 32), across commands (machinery: tests/catalogue.py).

* ``--force`` replaces only what provably is ours: a folder whose manifest parses as ours and that holds nothing
  its manifest does not list (artifacts, golden bundles, Triton model folders, PNG frame folders);
* non-finite weights are refused at load; non-finite outputs are an error naming the input (exit 1 from the
  reference model, 3 from an artifact) and nothing is written for that input;
* SIGTERM is handled like Ctrl-C (exit 143, partial outputs removed);
* of two runs writing one output exactly one wins: the other gets the "already exists" line.

Each case runs under ``run_case``, which also checks that no existing file changed and nothing else was left.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from catalogue import RENDER, TINY, Case, Workspace, registrar, run_case
from conftest import StandInPredictor, find_golden_dir, use_standin_model

from sharp_export.reference.gaussians import Gaussians3D

CASES: list[Case] = []
case = registrar(CASES)

WEB_APP_MANIFEST = {"name": "My App", "short_name": "app", "start_url": "/", "icons": []}


# ---- --force deletes only what is provably ours --------------------------------------------------------------------


@case("onnx/force-over-a-web-app-folder", 1, "site", "not provably a sharp-export artifact",
      "its manifest.json is not a sharp-export artifact manifest", "nothing was touched")  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    ws.file("site/manifest.json", json.dumps(WEB_APP_MANIFEST).encode())
    ws.file("site/index.html", b"<html>the user's app</html>")
    return ["onnx", *TINY, "-o", ws.path("site"), "--force", "--no-parity"]


@case("onnx/force-over-an-artifact-with-a-user-file", 1, "it holds notes.txt, which its manifest.json does not list")
def _(ws: Workspace) -> list[Any]:
    ws.artifact("art")
    ws.file("art/notes.txt", b"written by the user after the export")
    return ["onnx", *TINY, "-o", ws.path("art"), "--force", "--no-parity"]


@case("onnx/force-over-an-artifact-holding-a-link", 1, "it holds a symbolic link, data")
def _(ws: Workspace) -> list[Any]:
    ws.artifact("art")
    ws.path("elsewhere").mkdir()
    os.symlink(ws.path("elsewhere"), ws.path("art/data"))
    return ["onnx", *TINY, "-o", ws.path("art"), "--force", "--no-parity"]


@case("onnx/force-over-a-link-to-an-artifact", 1, "art", "is a symbolic link; an output is never written through one")
def _(ws: Workspace) -> list[Any]:
    os.symlink(ws.artifact("real"), ws.path("art"))  # --force would replace what the link points at
    return ["onnx", *TINY, "-o", ws.path("art"), "--force", "--no-parity"]


@case("onnx/force-over-a-manifest-that-is-not-json", 1, "not provably a sharp-export artifact", "not a sharp-export")
def _(ws: Workspace) -> list[Any]:
    ws.file("art/manifest.json", b"\x00\x01 binary")
    return ["onnx", *TINY, "-o", ws.path("art"), "--force", "--no-parity"]


@case("parity/write-golden-force-over-a-folder-with-more-files", 1, "not provably a sharp-export golden bundle",
      "photos.zip")  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    index = {"schema_version": 1, "resolution": 384, "poses": [], "images": [], "source": {}}
    ws.file("golden/golden.json", json.dumps(index).encode())
    ws.file("golden/golden.npz", b"arrays")
    ws.file("golden/photos.zip", b"the user's photos")
    return ["parity", *TINY, "--images", ws.photo(), "--write-golden", ws.path("golden"), "--force"]


@case("render/force-over-a-frames-folder-with-other-files", 1, "scene_frames",
      "not provably a folder of rendered frames", "holiday.jpg")  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    ws.file("out/scene_frames/color_0000.png", b"an old frame")
    ws.file("out/scene_frames/holiday.jpg", b"not a frame")
    return ["render", ws.scene(), "-o", ws.out, *RENDER, "--png", "--force"]


@case("triton/force-over-a-model-folder-with-extra-files", 1, "not provably a model folder", "weights.bak")
def _(ws: Workspace) -> list[Any]:
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    model = ws.path("repo/sharp")
    model.mkdir(parents=True)
    (model / "sharp_export_manifest.json").write_bytes((ws.artifact_source / "manifest.json").read_bytes())
    ws.file("repo/sharp/config.pbtxt", b'name: "sharp"\n')
    ws.file("repo/sharp/1/weights.bak", b"someone's backup")
    return ["triton", ws.artifact_source, "-o", ws.path("repo"), "--force"]


# ---- non-finite weights and outputs ----------------------------------------------------------------------------


def nan_weights(ws: Workspace, rel: str) -> Path:
    """The tiny golden weights with three NaN values in one tensor, as a .pt file."""
    from safetensors.torch import load_file

    state = load_file(find_golden_dir() / "weights_perturbed.safetensors")
    state["prediction_head.texture_prediction_head.weight"].view(-1)[:3] = float("nan")
    path = ws.path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def nan_model(ws: Workspace, when: str = "always") -> None:
    """build_model returns the 64 px stand-in whose colours are NaN (``when="dark"``: only for a dark image)."""
    from sharp_export.reference import checkpoint

    class NaNPredictor(StandInPredictor):
        def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> Gaussians3D:
            out = super().forward(image, disparity_factor)
            if when == "dark" and float(image.mean()) > 0.05:
                return out
            colors = out.colors.clone()
            colors[:, ::7] = float("nan")  # [B, N, 3]: every 7th Gaussian
            return out._replace(colors=colors)

    def build(preset, checkpoint_path=None, seed=None, device="cpu", precision="fp32") -> checkpoint.LoadedModel:
        return checkpoint.LoadedModel(NaNPredictor().eval(), preset, None, None, seed, precision)

    ws.monkeypatch.setattr(checkpoint, "build_model", build)


def damaged_artifact(ws: Workspace) -> Path:
    """A copy of the session artifact whose weights file has NaN bytes over its first 64 KB (same size, so only
    --verify could tell)."""
    art = ws.artifact("art")
    data = bytearray((art / "model.onnx.data").read_bytes())
    data[:65536] = np.full(16384, np.nan, np.float32).tobytes()
    (art / "model.onnx.data").write_bytes(bytes(data))
    return art


@case("predict/checkpoint-with-nan-weights", 1, "nan.pt", "non-finite weights: 3 NaN or Inf values in",
      "prediction_head.texture_prediction_head.weight")  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    return ["predict", ws.photo(), "-o", ws.out, "--preset", "tiny", "-c", nan_weights(ws, "in/nan.pt")]


@case("predict/model-outputs-nan", 1, "photo.png", "produced NaN or Inf values in 293 of 2,048 Gaussians",
      "first attribute: colors", "nothing was written", quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    nan_model(ws)
    return ["predict", ws.photo(), "-o", ws.out, *TINY]


@case("predict/batch-one-input-goes-nan", 1, "1 of 2 inputs failed", "dark.png", new=("out/good.ply",),
      quiet=False, failed=("dark.png",))  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    from PIL import Image

    nan_model(ws, when="dark")
    ws.photo("in/good.png")
    Image.new("RGB", (64, 48)).save(ws.path("in/dark.png"))  # black: the model gives NaN for it only
    return ["predict", ws.path("in"), "-o", ws.out, *TINY]


@case("run/artifact-outputs-nan", 3, "photo.png", "artifact", "produced NaN or Inf values in", "first attribute:",
      "nothing was written", quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    return ["run", damaged_artifact(ws), ws.photo(), "-o", ws.out]


@case("parity/artifact-outputs-nan", 3, "photo.png", "the artifact produced NaN or Inf values in", quiet=False)
def _(ws: Workspace) -> list[Any]:
    return ["parity", damaged_artifact(ws), "--images", ws.photo(), "--poses", "0", "--report", ws.path("p.json")]


# ---- SIGTERM is Ctrl-C -------------------------------------------------------------------------------------------


def sigterm_when(ws: Workspace, module: Any, name: str) -> None:
    """``module.name`` sends this process SIGTERM, then goes on as before (the handler raises at the next step)."""
    real = getattr(module, name)

    def terminate(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    ws.monkeypatch.setattr(module, name, terminate)


@case("predict/sigterm-while-publishing-the-ply", 143, "terminated by SIGTERM", "partial outputs were removed",
      quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    from sharp_export.reference import publish

    sigterm_when(ws, publish, "publish_file")
    return ["predict", ws.photo(), "-o", ws.out, *TINY]


@case("onnx/sigterm-writing-the-manifest", 143, "terminated by SIGTERM", quiet=False)
def _(ws: Workspace) -> list[Any]:
    use_standin_model(ws.monkeypatch)
    from sharp_export import export

    sigterm_when(ws, export, "write_manifest")
    return ["onnx", *TINY, "-o", ws.path("art"), "--no-parity"]


@case("render/sigterm-between-frames", 143, "terminated by SIGTERM", quiet=False)
def _(ws: Workspace) -> list[Any]:
    from sharp_export.reference.render import video

    sigterm_when(ws, video, "render_scene")
    return ["render", ws.scene(), "-o", ws.out, *RENDER]


# ---- of two writers, exactly one wins ----------------------------------------------------------------------------


def competitor_first(ws: Workspace, module: Any, name: str, rel: str, make: Any) -> None:
    """Another run publishes ``rel`` (``make(path)``) just before this one publishes it."""
    real = getattr(module, name)

    def later(temp: Path, final: Path, **kwargs: Any) -> Any:
        if Path(final).name == Path(rel).name and not Path(final).exists():
            make(ws.path(rel))
        return real(temp, final, **kwargs)

    ws.monkeypatch.setattr(module, name, later)


@case("predict/another-run-publishes-the-ply-first", 1, "photo.ply", "already exists; nothing was overwritten",
      new=("out/photo.ply",), quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    from sharp_export.reference import publish

    competitor_first(ws, publish, "publish_file", "out/photo.ply", lambda p: p.write_bytes(b"ply\nthe other run"))
    return ["predict", ws.photo(), "-o", ws.out, *TINY]


@case("render/another-run-publishes-the-depth-video-first", 1, "scene.depth.mp4", "already exists",
      new=("out/scene.depth.mp4",), quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    from sharp_export.reference.render import video

    competitor_first(ws, video, "publish_file", "out/scene.depth.mp4", lambda p: p.write_bytes(b"their video"))
    return ["render", ws.scene(), "-o", ws.out, *RENDER]  # our colour video is withdrawn: both or neither


@case("onnx/another-export-publishes-first", 1, "art", "already exists; nothing was overwritten",
      new=("art/manifest.json",), quiet=False)  # fmt: skip
def _(ws: Workspace) -> list[Any]:
    use_standin_model(ws.monkeypatch)
    from sharp_export import artifact

    def make(path: Path) -> None:
        path.mkdir()
        (path / "manifest.json").write_text("{}")

    competitor_first(ws, artifact, "publish_folder", "art", make)
    return ["onnx", *TINY, "-o", ws.path("art"), "--no-parity"]


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_bad_input(item: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_artifact: Path) -> None:
    run_case(item, tmp_path, monkeypatch, session_artifact)
