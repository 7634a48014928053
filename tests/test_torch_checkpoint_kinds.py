"""Issue 13 §2 and the file heads, beyond the acceptance examples: wrapper prefixes on some keys only
(stripped where present when the result is consistent, refused when two keys collide), a compiled
submodule (``_orig_mod.`` inside the key), nested checkpoint entries, non-tensor entries beside the tensors,
the head a state dict or a convzoo checkpoint holds (``file_head``, and ``create_model`` building it), and
the preprocessing a model's record gives ``ImageTransform.normalize``. Expected logits come from the model
whose state dict is saved."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import convzoo
from convzoo.data.transforms import ImageTransform
from convzoo.errors import WeightsError
from convzoo.preprocess import MODES, preprocess_input
from convzoo.weights import FileHead, file_head
from test_parity import _sane_init_
from user_files import TOL, cli

NAME = "xception_cifar_tiny"


@pytest.fixture(scope="module")
def ref():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    model = convzoo.create_model(NAME).eval()
    _sane_init_(model, x)
    with torch.no_grad():
        return model, x, model(x)


def _load(state: object, path) -> tuple[nn.Module, convzoo.weights.LoadReport]:
    torch.save(state, path)
    model = convzoo.create_model(NAME).eval()
    return model, convzoo.load_weights(model, path)


def _assert_same_logits(model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> None:
    with torch.no_grad():
        assert (model(x) - logits).abs().max().item() < TOL


def test_prefix_on_some_keys_only_is_removed_where_present_and_said(ref, tmp_path):
    model, x, logits = ref
    state = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(model.state_dict().items())}
    loaded, report = _load(state, tmp_path / "half.pth")
    assert report.complete and report.prefixes == ["module."]
    assert any("prefixes differ between keys" in n for n in report.notes), report.notes
    _assert_same_logits(loaded, x, logits)


def test_two_copies_under_and_without_a_prefix_are_refused(ref, tmp_path):
    model, _, _ = ref
    state = {**model.state_dict(), **{f"module.{k}": v for k, v in model.state_dict().items()}}
    with pytest.raises(WeightsError, match=r"mixes two state dicts") as e:
        _load(state, tmp_path / "two.pth")
    assert "\n" not in str(e.value)


def test_compiled_submodule_and_nested_entries(ref, tmp_path):
    """``model.block2 = torch.compile(model.block2)``: its keys hold ``_orig_mod.`` in the middle; the state
    dict sits in ``{'model': {'state_dict': ...}}`` beside an epoch."""
    model, x, logits = ref
    state = {k.replace("block2.", "block2._orig_mod.", 1): v for k, v in model.state_dict().items()}
    loaded, report = _load({"model": {"state_dict": state, "step": 3}, "epoch": 1}, tmp_path / "nested.pth")
    assert report.complete and report.container == "model/state_dict" and report.prefixes == []
    assert any("compiled submodule" in n for n in report.notes) and any("epoch" in n for n in report.notes)
    _assert_same_logits(loaded, x, logits)


def test_non_tensor_entries_beside_the_tensors_are_ignored_and_said(ref, tmp_path):
    model, x, logits = ref
    loaded, report = _load({**model.state_dict(), "epoch": 4, "arch": NAME}, tmp_path / "extra.pth")
    assert report.complete and any("arch, epoch" in n for n in report.notes), report.notes
    _assert_same_logits(loaded, x, logits)


def test_report_text_names_the_entry_and_the_prefixes(ref, tmp_path):
    model, _, _ = ref
    compiled = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    _, report = _load({"state_dict_ema": compiled, "state_dict": model.state_dict()}, tmp_path / "ema.pth")
    text = str(report)
    assert "from entry 'state_dict_ema'" in text and "'_orig_mod.' removed" in text
    assert any("loaded the EMA" in n for n in report.notes)


def test_file_head_of_state_dicts_and_create_model_builds_it(tmp_path):
    five = convzoo.create_model(NAME, num_classes=5)
    torch.save({"model": five.state_dict()}, tmp_path / "five.pth")
    assert file_head(tmp_path / "five.pth", NAME) == FileHead(5, layer="fc")
    assert convzoo.create_model(NAME, weights=tmp_path / "five.pth").num_classes == 5
    headless = {k: v for k, v in five.state_dict().items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "features.pth")
    assert file_head(tmp_path / "features.pth", NAME) == FileHead(0)
    features = convzoo.create_model(NAME, weights=tmp_path / "features.pth")
    assert features.num_classes == 0 and features.global_pool == "avg"
    assert file_head("imagenet", "xception") is None


def test_file_head_of_a_convzoo_checkpoint(tmp_path):
    model = convzoo.create_model(NAME, num_classes=4, global_pool="max", drop_rate=0.3)
    path = convzoo.save_checkpoint(model, tmp_path / "ck.safetensors")
    assert file_head(path, NAME) == FileHead(4, "max", 0.3, None, "fc")
    rebuilt = convzoo.create_model(NAME, weights=path)
    assert (rebuilt.num_classes, rebuilt.global_pool, rebuilt.drop_rate) == (4, "max", pytest.approx(0.3))


def test_weights_info_shows_entry_prefixes_and_head(ref, tmp_path, capsys):
    model, _, _ = ref
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    code, out, err = cli(capsys, "weights", "info", tmp_path / "w.pth", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["container"] == "model" and info["prefixes"] == ["module."] and info["head"]["classes"] == 10


@pytest.mark.parametrize("mode", MODES)
def test_normalize_applies_the_records_mode(mode):
    model = convzoo.create_model(NAME)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255
    got = ImageTransform.from_model(model, mode).normalize(x)
    assert torch.allclose(got, preprocess_input(x, mode))


def test_normalize_applies_a_custom_record(tmp_path):
    """A record with its own mean and std ('custom', e.g. folded from Keras Normalization layers)."""
    from dataclasses import replace

    model = convzoo.create_model(NAME, weights=convzoo.save_checkpoint(convzoo.create_model(NAME),
                                                                       tmp_path / "ck.safetensors"))
    model.weights_meta = replace(model.weights_meta, preprocessing="custom", mean=(1.0, 2.0, 3.0),
                                 std=(4.0, 5.0, 6.0))
    x = torch.rand(1, 3, 4, 4) * 255
    expected = (x - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / torch.tensor([4.0, 5.0, 6.0]).view(1, 3, 1, 1)
    assert torch.allclose(ImageTransform.from_model(model).normalize(x), expected)
