"""Checkpoint loading: formats, strictness, readable errors, precision casts."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from sharp_export.errors import CheckpointError, UserInputError
from sharp_export.reference.checkpoint import build_model, sha256_file


@pytest.fixture(scope="module")
def golden_state(golden_dir):
    return load_file(golden_dir / "weights_perturbed.safetensors")


def test_pt_and_safetensors_load_the_same_weights(golden_dir, golden_state, tmp_path):
    pt = tmp_path / "tiny.pt"
    torch.save(golden_state, pt)
    from_pt = build_model("tiny", checkpoint=pt)
    from_st = build_model("tiny", checkpoint=golden_dir / "weights_perturbed.safetensors")
    for (key, a), b in zip(from_pt.model.state_dict().items(), from_st.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert from_pt.checkpoint_sha256 == sha256_file(pt)
    assert from_pt.trained and "sha256" in from_pt.source_label


def test_seeded_weights_are_labelled_untrained():
    loaded = build_model("tiny", seed=3)
    assert not loaded.trained
    assert "UNTRAINED" in loaded.source_label and "seed 3" in loaded.source_label


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        build_model("tiny", checkpoint=tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)


def test_truncated_checkpoint(golden_state, tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(golden_state, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        build_model("tiny", checkpoint=path)
    assert "cut.pt" in str(info.value)


def test_wrong_and_missing_keys_are_listed(golden_state, tmp_path):
    state = dict(golden_state)
    state["not.a.key"] = torch.zeros(1)
    del state["prediction_head.texture_prediction_head.bias"]
    path = tmp_path / "keys.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as info:
        build_model("tiny", checkpoint=path)
    text = str(info.value)
    assert "1 missing keys [prediction_head.texture_prediction_head.bias]" in text
    assert "1 unexpected keys [not.a.key]" in text and "keys.safetensors" in text


def test_wrong_preset_lists_misshaped_keys(golden_dir):
    with pytest.raises(CheckpointError, match="does not fit preset 'sharp'.*mis-shaped keys"):
        with torch.device("meta"):
            build_model("sharp", checkpoint=golden_dir / "weights_perturbed.safetensors")


def test_half_checkpoint_is_cast_with_an_info_line(golden_state, tmp_path, caplog):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in golden_state.items()}, path)
    with caplog.at_level(logging.INFO):
        loaded = build_model("tiny", checkpoint=path)
    assert "float16" in caplog.text and "casting to float32" in caplog.text
    weight = loaded.model.state_dict()["prediction_head.texture_prediction_head.weight"]
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, golden_state["prediction_head.texture_prediction_head.weight"].half().float())


def test_weights_must_be_chosen_explicitly():
    with pytest.raises(UserInputError, match="no weights given"):
        build_model("tiny")
    with pytest.raises(UserInputError, match="not both"):
        build_model("tiny", checkpoint="x.pt", seed=0)
