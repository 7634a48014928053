"""Self-checking imports: compare_with_keras/compare_with_torch find planted conversion errors layer by layer,
`convzoo verify-import` compares a Keras file's import with Keras itself, BatchNorm conventions come from a
file's own model configuration, and kernels stored in another layout load unless ambiguous.

One Keras application per architecture (random weights, written once with Keras' legacy HDF5 writer) is
shared by the module; inputs are batch 1."""

import copy
import json
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch

import convzoo
from convzoo.cli import main
from convzoo.errors import WeightsError
from convzoo.weights import compare_with_keras, compare_with_torch

from test_parity import KERAS_APPS, _randomize_keras, _sane_init_

# One Keras application per family, with the registered model that reproduces it.
APPS = {app: KERAS_APPS[app] for app in ("Xception", "InceptionV3", "ResNet50")}


class Ref:
    """A Keras application with random weights, its legacy .h5 file, the convzoo model loaded from that file
    and a batch-1 NCHW input."""

    def __init__(self, app: str, folder) -> None:
        import keras
        from keras.src.legacy.saving import legacy_h5_format

        self.keras = getattr(keras.applications, app)(weights=None, classifier_activation=None)
        _randomize_keras(self.keras, np.random.default_rng(sum(map(ord, app))))
        self.path = folder / f"{app}.h5"
        with h5py.File(self.path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, self.keras)
        self.model = convzoo.create_model(APPS[app], weights=self.path).eval()
        size = self.keras.input_shape[1]
        self.x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def keras_name(self, kind: str, array: np.ndarray) -> str:
        """The Keras layer of class ``kind`` holding ``array`` as its first weight (found by value, not by the
        importer's naming rules)."""
        import keras

        return next(layer.name for layer in self.keras.layers if type(layer).__name__ == kind
                    and np.array_equal(keras.ops.convert_to_numpy(layer.weights[0]), array))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    cache: dict[str, Ref] = {}

    def get(app: str) -> Ref:
        if app not in cache:
            cache[app] = Ref(app, tmp_path_factory.mktemp(app))
        return cache[app]

    return get


# compare_with_keras / compare_with_torch


@pytest.mark.parametrize("app", list(APPS))
def test_clean_import_has_no_divergent_layer(refs, app):
    ref = refs(app)
    report = compare_with_keras(ref.keras, ref.model, ref.x)
    assert report.first_divergent is None and report.agree and report.max_abs_logit_diff < 1e-4
    names = [r.name for r in report.rows]
    assert "predictions" in names and len(names) == len(set(names)) > 90
    # Keras numbers unnamed layers per session ("add", "add_3", ...), so Xception's is matched by prefix.
    expected = {"Xception": "add", "InceptionV3": "mixed5", "ResNet50": "conv3_block2_out"}[app]
    row = next(r for r in report.rows if r.name == expected or (app == "Xception" and r.name.startswith("add_")))
    assert row.shape[0] == 1 and len(row.shape) == 4


def _eps_plant(ref: Ref, path: str) -> tuple[torch.nn.Module, str]:
    model = copy.deepcopy(ref.model)
    bn = model.get_submodule(path)
    bn.eps *= 10
    first = bn.bias if bn.weight is None else bn.weight
    return model, ref.keras_name("BatchNormalization", first.detach().numpy())


def _transposed_kernel_plant(ref: Ref, path: str) -> tuple[torch.nn.Module, str]:
    model = copy.deepcopy(ref.model)
    conv = model.get_submodule(path)
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy()
    with torch.no_grad():
        conv.weight.copy_(conv.weight.transpose(2, 3).clone())
    return model, ref.keras_name("Conv2D", kernel)


def _block_swap_plant(ref: Ref, a: str, b: str) -> tuple[torch.nn.Module, str]:
    model = copy.deepcopy(ref.model)
    block_a, block_b = model.get_submodule(a), model.get_submodule(b)
    state_a = copy.deepcopy(block_a.state_dict())
    block_a.load_state_dict(block_b.state_dict())
    block_b.load_state_dict(state_a)
    first = next(n for n, m in block_a.named_modules() if hasattr(m, "pointwise"))
    depthwise = ref.model.get_submodule(f"{a}.{first}").depthwise.weight.detach().numpy()
    return model, ref.keras_name("SeparableConv2D", depthwise.transpose(2, 3, 0, 1))


PLANTS = [
    ("Xception", "middle-flow blocks 7 and 8 swapped", lambda r: _block_swap_plant(r, "block7", "block8")),
    ("Xception", "BatchNorm eps", lambda r: _eps_plant(r, "block3.sepconv2_bn")),
    ("InceptionV3", "kernel transposed", lambda r: _transposed_kernel_plant(r, "Mixed_5b.branch3x3dbl_2.conv")),
    ("InceptionV3", "BatchNorm eps", lambda r: _eps_plant(r, "Mixed_6c.branch7x7_2.bn")),
    ("ResNet50", "kernel transposed", lambda r: _transposed_kernel_plant(r, "conv3.block2.conv2")),
]


@pytest.mark.parametrize("app,what,plant", PLANTS, ids=[f"{a}-{w}" for a, w, _ in PLANTS])
def test_planted_error_is_named(refs, app, what, plant):
    ref = refs(app)
    model, planted = plant(ref)
    report = compare_with_keras(ref.keras, model, ref.x)
    assert report.first_divergent == planted, (what, report.first_divergent)
    first = next(r for r in report.rows if r.diverges)
    assert first.max_abs > 1e-4
    assert any(line.startswith(">>") and planted in line for line in report.table())


def test_plants_are_what_the_test_says(refs):
    """The names the plants expect come from Keras' weights, not from the importer's naming rules."""
    assert _block_swap_plant(refs("Xception"), "block7", "block8")[1] == "block7_sepconv1"
    assert _transposed_kernel_plant(refs("ResNet50"), "conv3.block2.conv2")[1] == "conv3_block2_2_conv"


def test_compare_with_torch_names_a_planted_error(tmp_path):
    import torchvision

    reference = torchvision.models.resnext50_32x4d(weights=None).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _sane_init_(reference, x)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    model = convzoo.create_model("resnext50_32x4d", weights=tmp_path / "tv.pth").eval()
    clean = compare_with_torch(reference, model, x)
    assert clean.first_divergent is None and clean.agree
    assert [r.name for r in clean.rows[:3]] == ["conv1", "bn1", "layer1.0.conv1"]
    with torch.no_grad():
        model.conv3.block2.conv2.weight.copy_(model.conv3.block2.conv2.weight.transpose(2, 3).clone())
    planted = compare_with_torch(reference, model, x)
    assert planted.first_divergent == "layer2.1.conv2" and not planted.agree


# BatchNorm conventions from the file


def test_batchnorm_conventions_from_a_whole_model_file(refs, tmp_path):
    """A whole-model .h5 states each BatchNorm's epsilon and momentum: convzoo applies them (and matches a
    Keras model built from that file); a weights-only file keeps the registered values."""
    import keras

    ref = refs("ResNet50")
    path = tmp_path / "whole.h5"
    ref.keras.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layer = next(x for x in config["config"]["layers"] if x["config"]["name"] == "conv2_block2_1_bn")
        layer["config"]["epsilon"], layer["config"]["momentum"] = 0.5, 0.9
        f.attrs["model_config"] = json.dumps(config)
    model = convzoo.create_model("resnet50").eval()
    report = convzoo.load_weights(model, path)
    bn = model.conv2.block2.bn1
    assert bn.eps == 0.5 and bn.momentum == pytest.approx(0.1)
    assert model.conv2.block1.bn1.eps == pytest.approx(1.001e-5)
    note = next(n for n in report.notes if n.startswith("BatchNorm conventions"))
    assert "1 layers [conv2.block2.bn1: eps 1.001e-05 -> 0.5, momentum 0.01 -> 0.1]" in note
    rebuilt = keras.models.load_model(path, compile=False)
    assert compare_with_keras(rebuilt, model, ref.x).first_divergent is None
    registered = convzoo.create_model("resnet50", weights=ref.path)
    assert registered.conv2.block2.bn1.eps == pytest.approx(1.001e-5)
    assert compare_with_keras(rebuilt, registered, ref.x).first_divergent == "conv2_block2_1_bn"


# Kernel layouts


def _rewrite(path, layer: str, role: str, array: np.ndarray) -> None:
    """Replace one dataset of a legacy .h5 (``layer/role``) with ``array``."""
    with h5py.File(path, "r+") as f:
        group = f[layer]
        key = next(k for k in (n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"])
                   if k.split("/")[-1].split(":")[0] == role)
        del group[key]
        group.create_dataset(key, data=array)


def test_kernels_in_other_layouts_load_and_ambiguity_is_named(refs, tmp_path):
    ref = refs("Xception")
    path = tmp_path / "layouts.h5"
    shutil.copy(ref.path, path)
    sd = ref.model.state_dict()
    _rewrite(path, "block2_sepconv1", "pointwise_kernel", sd["block2.sepconv1.pointwise.weight"][:, :, 0, 0].T.numpy())
    _rewrite(path, "block3_sepconv1", "pointwise_kernel", sd["block3.sepconv1.pointwise.weight"][:, :, 0, 0].numpy())
    _rewrite(path, "block4_sepconv2", "depthwise_kernel", sd["block4.sepconv2.depthwise.weight"].numpy())
    model = convzoo.create_model("xception").eval()
    report = convzoo.load_weights(model, path)
    assert report.complete
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert sum("kernel stored as" in n for n in report.notes) == 3
    square = sd["block5.sepconv1.pointwise.weight"][:, :, 0, 0].numpy()
    _rewrite(path, "block5_sepconv1", "pointwise_kernel", square)
    with pytest.raises(WeightsError) as e:
        convzoo.load_weights(convzoo.create_model("xception"), path)
    msg = str(e.value)
    assert "\n" not in msg and "Keras 'block5_sepconv1' -> block5.sepconv1.pointwise.weight" in msg
    assert "the model expects (728, 728, 1, 1), the file holds (728, 728)" in msg


def test_torch_file_with_keras_layout_kernels(tmp_path):
    """A state dict whose pointwise kernels are (out, in) and depthwise kernels Keras' (kh, kw, cin, mult)."""
    ref = convzoo.create_model("xception_cifar_slim_thinner").eval()
    state = {}
    for key, value in ref.state_dict().items():
        if key.endswith("pointwise.weight"):
            value = value[:, :, 0, 0]
        elif key.endswith("depthwise.weight"):
            value = value.reshape(value.shape[0], 1, *value.shape[2:]).permute(2, 3, 0, 1).contiguous()
        state[key] = value
    torch.save(state, tmp_path / "mixed.pth")
    model = convzoo.create_model("xception_cifar_slim_thinner")
    report = convzoo.load_weights(model, tmp_path / "mixed.pth")
    assert report.complete and any("Keras (kh, kw, cin, mult)" in n for n in report.notes)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


# convzoo verify-import


def _verify(capsys, *argv):
    code = main(["verify-import", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, fragment):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convzoo: error:") and fragment in lines[0], err


def test_verify_import_correct_file(refs, capsys):
    ref = refs("Xception")
    code, out, _ = _verify(capsys, ref.path, "--model", "xception")
    lines = out.splitlines()
    assert code == 0, out
    assert "first divergent layer: none" in lines[-1] and not any(line.startswith(">>") for line in lines)
    assert len(lines) == 3 + len(compare_with_keras(ref.keras, ref.model, ref.x).rows) + 1


def test_keras_file_record_has_the_keras_preprocessing(refs):
    """An unlisted Keras file gets a record with the model's Keras preprocessing and the file's own hash."""
    for app, mode in (("Xception", "tf"), ("ResNet50", "caffe")):
        meta = refs(app).model.weights_meta
        assert (meta.preprocessing, meta.source, meta.hash_kind) == (mode, "file (keras-h5)", "sha256")
        assert meta.size == refs(app).path.stat().st_size


def test_verify_import_file_with_a_planted_error(refs, tmp_path, capsys):
    """The file lists block12's second and third BatchNorms in each other's places: Keras' legacy loader goes
    by position, convzoo by name, and the report says where they part."""
    ref = refs("Xception")
    path = tmp_path / "scrambled.h5"
    shutil.copy(ref.path, path)
    with h5py.File(path, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        i, j = names.index("block12_sepconv2_bn"), names.index("block12_sepconv3_bn")
        names[i], names[j] = names[j], names[i]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
    code, out, _ = _verify(capsys, path, "--model", "xception", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["first_divergent"] == "block12_sepconv2_bn" and report["agree"] is False
    assert report["max_abs_logit_diff"] > 1e-4 and len(out.strip().splitlines()) == 1


def test_verify_import_bad_inputs(refs, tmp_path, capsys, monkeypatch):
    xception, resnet = refs("Xception"), refs("ResNet50")
    _one_line_error(*_verify(capsys, resnet.path, "--model", "xception")[::2],
                    "holds resnet50 weights, not xception")
    _one_line_error(*_verify(capsys, xception.path, "--model", "resnext50_32x4d")[::2], "has no Keras reference")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(xception.path.read_bytes()[: xception.path.stat().st_size // 2])
    _one_line_error(*_verify(capsys, cut, "--model", "xception")[::2], str(cut))
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    _one_line_error(*_verify(capsys, tmp_path / "w.pth", "--model", "xception")[::2], "a torch file")
    monkeypatch.setitem(sys.modules, "keras", None)
    _one_line_error(*_verify(capsys, xception.path, "--model", "xception")[::2], "Keras is not installed")
