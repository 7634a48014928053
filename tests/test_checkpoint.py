"""convzoo checkpoints: round trips rebuild the same model, the config comes back, writes are atomic,
and broken or foreign files are one-line CheckpointErrors."""

import errno
import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

import convzoo
from helpers import randomize_
from convzoo import load_checkpoint, save_checkpoint
from convzoo.errors import CheckpointError, OutputError
from convzoo.registry import model_kwargs_from_json
from convzoo.weights import read_checkpoint
from convzoo.weights.checkpoint import model_args_of




def _same_state(a, b) -> bool:
    sb = b.state_dict()
    return a.state_dict().keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_round_trip_rebuilds_model_and_config(tmp_path):
    model = randomize_(convzoo.create_model("resnext29_32x4d", num_classes=5, in_chans=1, global_pool="max",
                                             input_size=(40, 40), drop_rate=0.2))
    model.default_cfg = replace(model.default_cfg, preprocessing="tf")
    names = ["a", "b", "c", "d", "e"]
    path = save_checkpoint(model, tmp_path / "best.safetensors", class_names=names,
                           extra={"epoch": 7, "metrics": {"top1": 0.5}})
    assert path == tmp_path / "best.safetensors" and [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]
    info = read_checkpoint(path)
    assert info.model == "resnext29_32x4d"
    assert info.model_args == {"num_classes": 5, "global_pool": "max", "in_chans": 1, "input_size": [40, 40],
                               "drop_rate": 0.2}
    loaded = load_checkpoint(path).eval()
    assert _same_state(model, loaded)
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.class_names == names and loaded.checkpoint_info.extra == {"epoch": 7, "metrics": {"top1": 0.5}}
    assert loaded.default_cfg.input_size == (1, 40, 40) and loaded.default_cfg.preprocessing == "tf"
    assert loaded.global_pool == "max" and loaded.drop_rate == 0.2


def test_headless_model_and_folder(tmp_path):
    model = randomize_(convzoo.create_model("xception_cifar_slim_thinner", include_top=False))
    assert model_args_of(model) == {"include_top": False}
    assert save_checkpoint(model, tmp_path) == tmp_path / "model.safetensors"
    loaded = load_checkpoint(tmp_path).eval()
    assert _same_state(model, loaded) and loaded.class_names is None and loaded.num_classes == 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_arguments_not_readable_from_the_model(tmp_path):
    """depth_multiplier leaves no trace the checkpoint can read back: save asks for model_args."""
    model = randomize_(convzoo.create_model("inception_v3_cifar", aux_logits=True, depth_multiplier=0.25))
    with pytest.raises(CheckpointError, match=r"does not rebuild this model .*pass model_args="):
        save_checkpoint(model, tmp_path / "m.safetensors")
    args = {"aux_logits": True, "depth_multiplier": 0.25}
    path = save_checkpoint(model, tmp_path / "m.safetensors", model_args=args)
    loaded = load_checkpoint(path)
    assert loaded.AuxLogits is not None and _same_state(model, loaded)


def test_table_arguments_saved_as_json_come_back_as_tables(tmp_path):
    """Tables (Xception's blocks) are saved as JSON lists and objects and rebuilt as dataclasses."""
    args = {"stem": [[8, 2], [16, 1]], "blocks": [{"widths": [16, 16]}, {"widths": [24], "stride": 1}]}
    tables = model_kwargs_from_json("xception_cifar_tiny", args)
    model = randomize_(convzoo.create_model("xception_cifar_tiny", **tables))
    path = save_checkpoint(model, tmp_path / "m.safetensors", model_args=args)
    assert read_checkpoint(path).model_args == args
    loaded = load_checkpoint(path).eval()
    assert _same_state(model, loaded)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_through_load_weights_and_create_model(tmp_path):
    model = randomize_(convzoo.create_model("resnext29_32x4d"))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    other = convzoo.create_model("resnext29_32x4d")
    report = convzoo.load_weights(other, path)
    assert report.format == "convzoo-checkpoint" and report.complete and _same_state(model, other)
    assert _same_state(model, convzoo.create_model("resnext29_32x4d", weights=tmp_path / "m.safetensors"))
    with pytest.warns(UserWarning, match="classifier"):
        convzoo.create_model("resnext29_32x4d", num_classes=3, weights=path)


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    model = randomize_(convzoo.create_model("resnext29_32x4d"))
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"v": 1})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OutputError, match=r"cannot write .*m\.safetensors: No space left on device"):
        save_checkpoint(randomize_(model, seed=1), path, extra={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    save_checkpoint(model, path, extra={"v": 3})
    assert read_checkpoint(path).extra == {"v": 3}


def test_bad_arguments(tmp_path):
    model = convzoo.create_model("resnext29_32x4d")
    with pytest.raises(CheckpointError, match="3 class names for a model with 10 classes"):
        save_checkpoint(model, tmp_path / "m.safetensors", class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(model, tmp_path / "m.safetensors", extra={"t": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="built by create_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not a feature extractor"):
        save_checkpoint(convzoo.create_model("resnext29_32x4d", features_only=True), tmp_path / "m.safetensors")
    assert not any(tmp_path.iterdir())


def test_foreign_and_broken_files(tmp_path):
    model = randomize_(convzoo.create_model("resnext29_32x4d"))
    state = model.state_dict()
    save_file(state, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a convzoo checkpoint \\(safetensors\\); load it with load_weights"):
        load_checkpoint(tmp_path / "plain.safetensors")
    save_file(state, tmp_path / "broken.safetensors", metadata={"convzoo": "{not json"})
    with pytest.raises(CheckpointError, match="broken checkpoint config"):
        load_checkpoint(tmp_path / "broken.safetensors")
    header = {"model": "xception_cifar", "model_args": {}, "class_names": None, "default_cfg": {}, "extra": {}}
    save_file(state, tmp_path / "other.safetensors", metadata={"convzoo": json.dumps(header)})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "other.safetensors")
    assert "does not fit xception_cifar" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    empty = tmp_path / "run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no convzoo checkpoint"):
        load_checkpoint(empty)
