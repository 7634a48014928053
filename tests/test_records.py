"""Weight records: the table of published files, records attached to loaded models and kept in checkpoints,
hashes checked for files named like published ones, preprocessing that travels with the weights into
`convzoo predict` and `convzoo eval`, torchvision's transform_input folded at import, and ambiguous layouts."""

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import convzoo
from convzoo.cli import main
from convzoo.errors import WeightsError
from convzoo.data.transforms import ImageTransform
from convzoo import registry
from convzoo.models.spec import WeightRecord
from convzoo.preprocess import mode_stats
from convzoo.weights import records
from convzoo.weights.layouts import fit_kernel

from test_parity import _sane_init_
from test_train import write_cifar

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _published(path: Path, preprocessing: str, model: str = "resnext29_32x4d") -> WeightRecord:
    """A record naming ``path`` as a published file, with its SHA-256 and ``preprocessing``."""
    mean, std, _ = mode_stats(preprocessing)
    found = records.record_for_file(convzoo.get_model_cfg(model), path, "test", True)
    return replace(found, name=f"{model}.test", source="test", url=f"https://example.invalid/{path.name}",
                   preprocessing=preprocessing, mean=mean, std=std, classes="test-10")


# The table


def test_record_table_is_honest():
    by_name = {r.name: r for r in registry.list_records()}
    assert {n: by_name[n].top1 for n in ("xception.keras", "inception_v3_keras.keras", "resnet50.keras",
                                         "resnet50v2.keras", "inception_v3.torchvision",
                                         "resnext50_32x4d.torchvision")} == {
        "xception.keras": 79.0, "inception_v3_keras.keras": 77.9, "resnet50.keras": 74.9, "resnet50v2.keras": 76.0,
        "inception_v3.torchvision": 77.294, "resnext50_32x4d.torchvision": 77.618}
    for r in by_name.values():
        assert r.size is None and r.classes == "imagenet-1k" and r.file_name and r.url.endswith(r.file_name)
        assert r.preprocessing == convzoo.get_model_cfg(r.model).preprocessing, r.name
        assert (r.mean, r.std) == mode_stats(r.preprocessing)[:2]
        assert (r.top1 is None) == (r.top1_source is None)
        if not r.include_top:
            assert r.top1 is None
        expected_kind = {"keras": "md5", "torchvision": "sha256 prefix (8 hex digits)", "timm": None}[r.source]
        assert r.hash_kind == expected_kind, r.name
        for test in (r.parity or "").split(", ") if r.parity else []:
            file, func = re.fullmatch(r"(tests/\w+\.py)::(\w+)(?:\[.*\])?", test).groups()
            assert f"def {func}(" in (ROOT / file).read_text(), test
    assert by_name["inception_v3.torchvision"].transform_input
    assert sum(r.transform_input for r in by_name.values()) == 1


def test_weights_list_command(capsys):
    code, out, _ = _run(capsys, "weights", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["record", "source", "file"]
    assert len(lines) == 2 + len(registry.list_records())
    code, out, _ = _run(capsys, "weights", "list", "resnet50", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["resnet50.keras", "resnet50.keras_notop"]
    assert rows[0]["hash_kind"] == "md5" and rows[0]["preprocessing"] == "caffe" and rows[0]["top1"] == 74.9
    code, _, err = _run(capsys, "weights", "list", "resnext29_32x4d")
    assert code == 2 and err.count("\n") == 1 and "no known weight files" in err


# Records on models and in checkpoints


def test_unlisted_file_gets_a_record_that_checkpoints_keep(tmp_path):
    ref = convzoo.create_model("resnext29_32x4d")
    path = tmp_path / "mine.safetensors"
    save_file(ref.state_dict(), path)
    model = convzoo.create_model("resnext29_32x4d", weights=path)
    meta = model.weights_meta
    assert meta.hash == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() and meta.hash_kind == "sha256"
    assert (meta.size, meta.file_name, meta.source) == (path.stat().st_size, "mine.safetensors", "file (safetensors)")
    assert meta.preprocessing == "cifar" and meta.classes is None and meta.top1 is None and meta.include_top
    ck = convzoo.save_checkpoint(model, tmp_path / "ck.safetensors")
    assert convzoo.weights.read_checkpoint(ck).weights_meta == meta.as_dict()
    assert convzoo.load_checkpoint(ck).weights_meta == meta
    again = convzoo.create_model("resnext29_32x4d", weights=ck)
    assert again.weights_meta == meta
    assert convzoo.load_checkpoint(convzoo.save_checkpoint(ref, tmp_path / "bare.safetensors")).weights_meta is None


def test_file_named_like_a_published_one_must_match_its_hash(tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40)).save(photo)
    fake = tmp_path / "resnext50_32x4d-7cdf4587.pth"
    torch.save({"fc.weight": torch.zeros(1)}, fake)
    code, _, err = _run(capsys, "predict", "--model", "resnext50_32x4d", "--weights", fake, photo)
    assert code == 2 and err.count("\n") == 1 and err.startswith("convzoo: error:")
    assert "expected sha256 7cdf4587, found" in err and "resnext50_32x4d.torchvision" in err


# Preprocessing travels with the weights


@pytest.fixture(scope="module")
def caffe_case(tmp_path_factory):
    """A fixed-seed random resnext29_32x4d and a synthetic 32x32 image on which 'tf' and 'caffe'
    preprocessing give different top-1 classes (searched over a few seeds)."""
    folder = tmp_path_factory.mktemp("caffe")
    image = folder / "img.png"
    for seed in range(20):
        torch.manual_seed(seed)
        model = convzoo.create_model("resnext29_32x4d").eval()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
        with torch.no_grad():
            answers = {mode: str(int(model(ImageTransform((32, 32), 1.0, "bilinear", mode)([image])).argmax()))
                       for mode in ("tf", "caffe", "cifar")}
        if answers["tf"] != answers["caffe"] != answers["cifar"]:
            break
    else:
        pytest.fail("no seed gives different answers for 'tf' and 'caffe'")
    path = folder / "r29-caffe.safetensors"
    save_file(model.state_dict(), path)
    return path, image, answers


def _top1(capsys, *argv):
    code, out, err = _run(capsys, "predict", *argv, "--top", "1", "--json")
    assert code == 0, err
    return json.loads(out)["predictions"][0]["class_id"], err


@pytest.mark.parametrize("via", ["published file", "checkpoint"])
def test_predict_uses_the_recorded_preprocessing(caffe_case, monkeypatch, tmp_path, capsys, via):
    path, image, answers = caffe_case
    monkeypatch.setitem(registry.RECORDS, "resnext29_32x4d", (_published(path, "caffe"),))
    args = ("--model", "resnext29_32x4d", "--weights", path)
    if via == "checkpoint":
        model = convzoo.create_model("resnext29_32x4d", weights=path)
        monkeypatch.setitem(registry.RECORDS, "resnext29_32x4d", ())
        args = ("--weights", convzoo.save_checkpoint(model, tmp_path / "ck.safetensors"))
    top, err = _top1(capsys, *args, image)
    assert top == answers["caffe"] and err == ""
    top, err = _top1(capsys, *args, image, "--preprocessing", "tf")
    assert top == answers["tf"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convzoo: warning:") and "'caffe'" in lines[0] and "tf" in lines[0]
    assert _top1(capsys, *args, image, "--preprocessing", "caffe") == (answers["caffe"], "")


def test_eval_uses_the_recorded_preprocessing(caffe_case, monkeypatch, tmp_path, capsys):
    from convzoo.preprocess import Normalize
    from convzoo.train.evaluate import _from_checkpoint

    path, _, _ = caffe_case
    monkeypatch.setitem(registry.RECORDS, "resnext29_32x4d", (_published(path, "tf"),))
    data = write_cifar(tmp_path / "cifar", 50, n_test=20)
    classes = (data / "batches.meta.txt").read_text().split()
    ck = convzoo.save_checkpoint(convzoo.create_model("resnext29_32x4d", weights=path), tmp_path / "ck.safetensors",
                                 class_names=classes)
    assert _from_checkpoint(ck).normalize == Normalize(mode="tf")
    runs = {}
    for flag in ((), ("--preprocessing", "tf"), ("--preprocessing", "caffe")):
        code, out, err = _run(capsys, "eval", ck, "--data", data, "--json", "--device", "cpu", *flag)
        assert code == 0, err
        runs[flag[1] if flag else "recorded"] = json.loads(out), err.strip().splitlines()
    assert runs["recorded"][1] == [] and runs["tf"][1] == [] and runs["tf"][0]["top1"] == runs["recorded"][0]["top1"]
    warning = runs["caffe"][1]
    assert len(warning) == 1 and "'tf'" in warning[0] and "caffe" in warning[0]


# torchvision's transform_input, folded


def test_transform_input_fold_matches_torchvision(tmp_path, monkeypatch):
    """torchvision weights that expect transform_input: the folded convzoo model, fed 'torch'-preprocessed
    inputs, equals torchvision's inception_v3(transform_input=True) on the same random weights. The fold
    follows the file's contents: a renamed copy is folded too, the same file without a record is not."""
    import torchvision

    from convzoo.preprocess import preprocess_input

    ref = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                          transform_input=True).eval()
    x = preprocess_input(torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(4)) * 255, "torch")
    _sane_init_(ref, x)
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(ref.state_dict(), path)
    published = registry.RECORDS["inception_v3"][0]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(registry.RECORDS, "inception_v3", (replace(published, hash=f"sha256:{sha}"),))
    with torch.no_grad():
        expected = ref(x)
    assert expected.std() > 0.5
    for file in (path, _copy(path, tmp_path / "renamed.pth")):
        model = convzoo.create_model("inception_v3", aux_logits=True)
        report = convzoo.load_weights(model, file)
        model.eval()
        assert any("transform_input folded into Conv2d_1a_3x3.conv" in n for n in report.notes), file
        assert model.weights_meta.preprocessing == "torch" and model.weights_meta.transform_input
        with torch.no_grad():
            assert (model(x).logits - expected).abs().max().item() < 1e-5
    monkeypatch.setitem(registry.RECORDS, "inception_v3", ())
    plain = convzoo.create_model("inception_v3", aux_logits=True, weights=tmp_path / "renamed.pth").eval()
    assert not plain.weights_meta.transform_input
    with torch.no_grad():
        assert (plain(x).logits - expected).abs().max().item() > 1e-3


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


# Layouts


def test_ambiguous_depthwise_layout_is_refused():
    """A (3, 1) depthwise kernel over 3 channels reads the same shape in both layouts."""
    conv = nn.Conv2d(3, 3, (3, 1), groups=3, bias=False)
    with pytest.raises(WeightsError) as e:
        fit_kernel(torch.randn(3, 1, 3, 1), conv, False, "'dw.weight'")
    assert str(e.value) == ("'dw.weight': ambiguous depthwise kernel layout: the model expects (3, 1, 3, 1), the "
                            "file holds (3, 1, 3, 1), readable as PyTorch (cin*mult, 1, kh, kw) and Keras "
                            "(kh, kw, cin, mult)")
    conv = nn.Conv2d(4, 8, 3, groups=4, bias=False)
    keras_kernel = torch.randn(3, 3, 4, 2)
    value, layout = fit_kernel(keras_kernel, conv, False, "x")
    assert layout == "Keras (kh, kw, cin, mult)" and torch.equal(value[5, 0], keras_kernel[:, :, 2, 1])
    assert fit_kernel(torch.randn(5, 5), nn.Conv2d(4, 8, 1), True, "x") is None


def test_batchnorm_settings_read_from_keras_configurations(tmp_path):
    """A .keras archive and a whole-model .h5 carry each BatchNorm's epsilon and momentum; weights-only
    files carry none."""
    import keras

    from convzoo.weights.keras_h5 import batchnorm_settings, read_keras_config

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=0.01, momentum=0.9, name="bn")(x)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn_default")(x))
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    model.save_weights(tmp_path / "m.weights.h5")
    expected = {"bn": (0.01, 0.9), "bn_default": (1e-3, 0.99)}
    assert batchnorm_settings(read_keras_config(tmp_path / "m.keras", archive=True)) == expected
    assert batchnorm_settings(read_keras_config(tmp_path / "m.h5")) == expected
    assert read_keras_config(tmp_path / "m.weights.h5") is None
