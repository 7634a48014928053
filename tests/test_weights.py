"""Weight import: Keras layouts and the ResNeXt fold, strictness and its messages, unsafe pickles, heads
that do not fit, format detection, the published-weights cache and download, and the command line."""

import functools
import hashlib
from dataclasses import replace
import pickle
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convzoo
from helpers import randomize_
from convzoo.cli import main
from convzoo.errors import ChecksumError, DownloadError, UnsafeFileError, WeightsError
from convzoo.layers import ConvBnAct
from convzoo import registry
from convzoo.models.spec import WeightRecord
from convzoo.weights import hub, records
from convzoo.weights.keras_map import fold_grouped_conv, gconv_kernel




def _write_keras2(path: Path, layers: list, whole_model: bool = False, order: list[str] | None = None) -> Path:
    """A Keras 2 style legacy file: ``layer_names`` and per-layer ``weight_names`` with ``:0``."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        names = order or [n for n, _ in layers]
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/{role}:0".encode() for role, _ in weights])
            for role, array in weights:
                g.create_dataset(f"{name}/{role}:0", data=np.asarray(array, dtype=np.float32))
    return path


def _np(sd: dict, key: str) -> np.ndarray:
    return sd[key].detach().numpy()


def _bn(sd: dict, prefix: str, scale: bool = True) -> list:
    out = [("gamma", _np(sd, f"{prefix}.weight"))] if scale else []
    return out + [("beta", _np(sd, f"{prefix}.bias")), ("moving_mean", _np(sd, f"{prefix}.running_mean")),
                  ("moving_variance", _np(sd, f"{prefix}.running_var"))]


def _conv(sd: dict, prefix: str) -> list:
    return [("kernel", _np(sd, f"{prefix}.weight").transpose(2, 3, 1, 0))]


def keras_resnext_layers(model: nn.Module, with_gconv: bool = True) -> list:
    """What keras-applications' ResNeXt50 saves for ``model``'s weights: each grouped 3x3 conv as a
    DepthwiseConv2D (``_2_conv``) and the fixed block-diagonal 1x1 (``_2_gconv``)."""
    sd = model.state_dict()
    layers = [("conv1_conv", _conv(sd, "conv1.conv")), ("conv1_bn", _bn(sd, "conv1.bn"))]
    for stage in (n for n in model.stage_names if n.startswith("conv") and n != "conv1"):
        for b, block in enumerate(getattr(model, stage), 1):
            p, k = f"{stage}.block{b}", f"{stage}_block{b}"
            if block.has_projection:
                layers += [(f"{k}_0_conv", _conv(sd, f"{p}.conv0")), (f"{k}_0_bn", _bn(sd, f"{p}.bn0"))]
            layers += [(f"{k}_1_conv", _conv(sd, f"{p}.conv1")), (f"{k}_1_bn", _bn(sd, f"{p}.bn1"))]
            w = _np(sd, f"{p}.conv2.weight")
            filters, c = w.shape[:2]
            dw = np.zeros((3, 3, filters, c), np.float32)
            for o in range(filters):
                g = o // c
                dw[:, :, g * c:(g + 1) * c, o % c] = w[o].transpose(1, 2, 0)
            layers.append((f"{k}_2_conv", [("depthwise_kernel", dw)]))
            if with_gconv:
                layers.append((f"{k}_2_gconv", [("kernel", gconv_kernel(filters, c))]))
            layers += [(f"{k}_2_bn", _bn(sd, f"{p}.bn2")), (f"{k}_3_conv", _conv(sd, f"{p}.conv3")),
                       (f"{k}_3_bn", _bn(sd, f"{p}.bn3"))]
    layers.append(("predictions", [("kernel", _np(sd, "fc.weight").T), ("bias", _np(sd, "fc.bias"))]))
    return layers


def keras_inception_layers(model: nn.Module) -> list:
    """keras-applications' InceptionV3 file for ``model``: unnamed conv2d_N / batch_normalization_N
    (1-based, as the published files), BatchNorm without gamma."""
    sd = model.state_dict()
    slots = [n for n, m in model.named_modules() if isinstance(m, ConvBnAct)]
    layers = []
    for i, slot in enumerate(slots, 1):
        layers.append((f"conv2d_{i}", _conv(sd, f"{slot}.conv")))
        layers.append((f"batch_normalization_{i}", _bn(sd, f"{slot}.bn", scale=False)))
    layers.append(("predictions", [("kernel", _np(sd, "fc.weight").T), ("bias", _np(sd, "fc.bias"))]))
    return layers


@pytest.fixture(scope="module")
def resnext(tmp_path_factory):
    """A random resnext50_32x4d and its weights as a keras-applications ResNeXt50 file (without the fixed
    1x1 kernels, which would make it 600 MB)."""
    model = randomize_(convzoo.create_model("resnext50_32x4d"))
    layers = keras_resnext_layers(model, with_gconv=False)
    return model, _write_keras2(tmp_path_factory.mktemp("resnext") / "resnext50.h5", layers)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    model = randomize_(convzoo.create_model("inception_v3_keras"))
    return model, keras_inception_layers(model), tmp_path_factory.mktemp("inception")


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, sb[k]), k


# ResNeXt fold


def test_fold_equals_keras_depthwise_then_fixed_1x1():
    """keras-applications' construction, in torch primitives: a depthwise conv (c outputs per channel) then
    the fixed block-diagonal 1x1 conv equals one 32-group conv with the folded weight."""
    filters, groups = 128, 32
    c = filters // groups
    rng = np.random.default_rng(0)
    dw = rng.normal(size=(3, 3, filters, c)).astype(np.float32)
    gk = gconv_kernel(filters, c)
    x = torch.randn(2, filters, 9, 9)
    dw_torch = torch.from_numpy(dw.transpose(2, 3, 0, 1).reshape(filters * c, 1, 3, 3))
    y = F.conv2d(F.conv2d(x, dw_torch, stride=2, padding=1, groups=filters), torch.from_numpy(gk.transpose(3, 2, 0, 1)))
    conv = nn.Conv2d(filters, filters, 3, 2, 1, groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(fold_grouped_conv(dw, gk, groups)))
        assert (conv(x) - y).abs().max().item() < 1e-5
    w = fold_grouped_conv(dw, None, groups)
    o, j = 37, 2
    assert np.array_equal(w[o, j], dw[:, :, (o // c) * c + j, o % c])


def test_fold_refuses_a_non_block_diagonal_1x1():
    dw = np.ones((3, 3, 8, 2), np.float32)
    gk = gconv_kernel(8, 2)
    gk[0, 0, 0, 7] = 1.0
    with pytest.raises(ValueError, match="block-diagonal"):
        fold_grouped_conv(dw, gk, 4)


def test_keras_resnext50_file(resnext):
    """Depthwise kernels folded by the fixed pattern (the file holds no ``_2_gconv``)."""
    model, path = resnext
    loaded = convzoo.create_model("resnext50_32x4d").eval()
    report = convzoo.load_weights(loaded, path)
    assert report.complete and report.layout == "keras (legacy)"
    _assert_same_state(model, loaded)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_keras_resnext_file_with_fixed_1x1(tmp_path):
    """Depthwise kernels folded through the ``_2_gconv`` kernels the file holds (ResNeXt-29 keeps it small)."""
    model = randomize_(convzoo.create_model("resnext29_32x4d"))
    path = _write_keras2(tmp_path / "r29.h5", keras_resnext_layers(model, with_gconv=True))
    loaded = convzoo.create_model("resnext29_32x4d").eval()
    assert convzoo.load_weights(loaded, path).complete
    _assert_same_state(model, loaded)


# Keras Inception V3: creation order, counts and shapes


def test_keras_inception_creation_order_not_file_order(inception, tmp_path):
    """Published files list layers in topological order; unnamed layers are matched by their numeric suffix."""
    model, layers, _ = inception
    order = [n for n, _ in layers][::-1]
    path = _write_keras2(tmp_path / "inc.h5", layers, whole_model=True, order=order)
    loaded = convzoo.create_model("inception_v3_keras")
    assert convzoo.load_weights(loaded, path).complete
    _assert_same_state(model, loaded)


def test_keras_inception_shape_mismatch_names_layer_path_and_shapes(inception):
    """Swap the 1x3 and 3x1 convolutions of mixed10 (Mixed_7c): both are named, with both shapes."""
    model, layers, folder = inception
    slots = [n for n, m in model.named_modules() if isinstance(m, ConvBnAct)]
    a = f"conv2d_{slots.index('Mixed_7c.branch3x3_2a') + 1}"
    b = f"conv2d_{slots.index('Mixed_7c.branch3x3_2b') + 1}"
    swapped = dict(layers)
    swapped[a], swapped[b] = swapped[b], swapped[a]
    path = _write_keras2(folder / "swapped.h5", list(swapped.items()))
    with pytest.raises(WeightsError) as e:
        convzoo.load_weights(convzoo.create_model("inception_v3_keras"), path)
    msg = str(e.value)
    assert "\n" not in msg and "2 shape mismatch" in msg
    assert f"Keras '{a}' -> Mixed_7c.branch3x3_2a.conv.weight: model (384, 384, 1, 3), file (384, 384, 3, 1)" in msg
    assert f"Keras '{b}' -> Mixed_7c.branch3x3_2b.conv.weight: model (384, 384, 3, 1), file (384, 384, 1, 3)" in msg


def test_keras_inception_layer_count(inception):
    model, layers, folder = inception
    short = [(n, w) for n, w in layers if n not in ("conv2d_94", "batch_normalization_94")]
    path = _write_keras2(folder / "short.h5", short)
    with pytest.raises(WeightsError, match=r"4 missing \[Mixed_7c\.branch_pool\.conv\.weight"):
        convzoo.load_weights(convzoo.create_model("inception_v3_keras"), path)
    extra = layers + [("conv2d_95", layers[0][1])]
    path = _write_keras2(folder / "extra.h5", extra)
    with pytest.raises(WeightsError, match=r"1 unexpected \[Keras 'conv2d_95' \(the model has 94 convolutions\)\]"):
        convzoo.load_weights(convzoo.create_model("inception_v3_keras"), path)


def test_keras_inception_into_bn_with_gamma_is_refused(inception):
    """inception_v3 (torchvision layout) has BatchNorm gamma; Keras' file has none."""
    _, layers, folder = inception
    path = _write_keras2(folder / "inc2.h5", layers)
    with pytest.raises(WeightsError, match=r"it looks like inception_v3_keras weights\): 94 missing tensors") as e:
        convzoo.load_weights(convzoo.create_model("inception_v3"), path)
    assert "Conv2d_1a_3x3.bn.weight" in e.value.report.missing


# Strictness and messages


def test_truncated_h5_is_one_line_error(resnext, tmp_path):
    _, path = resnext
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as e:
        convzoo.load_weights(convzoo.create_model("resnext50_32x4d"), cut)
    assert str(e.value).startswith(str(cut)) and "\n" not in str(e.value)


def test_weights_of_another_architecture_name_tensors(resnext, tmp_path):
    _, path = resnext
    with pytest.raises(WeightsError) as e:
        convzoo.load_weights(convzoo.create_model("xception"), path)
    msg = str(e.value)
    assert "\n" not in msg and "does not fit xception (it looks like resnext50_32x4d weights)" in msg
    assert msg.endswith("; load it into resnext50_32x4d") and len(msg) < 300 + len(str(path))
    problems = e.value.report.problems()
    assert "missing [block1.conv1.weight" in problems and "Keras 'conv1_conv'" in problems and "more]" in problems
    ref = randomize_(convzoo.create_model("resnext29_32x4d"))
    torch.save(ref.state_dict(), tmp_path / "r29.pth")
    with pytest.raises(WeightsError, match=r"does not fit resnet50 \(it looks like resnext29_32x4d weights\): ") as e:
        convzoo.load_weights(convzoo.create_model("resnet50"), tmp_path / "r29.pth")
    assert "conv1.conv.bias" in e.value.report.missing


def test_keras_resnext_into_resnet50(resnext):
    """ResNet50 has conv biases and ungrouped 3x3 convs: shapes differ, biases are missing."""
    _, path = resnext
    with pytest.raises(WeightsError) as e:
        convzoo.load_weights(convzoo.create_model("resnet50"), path)
    msg = str(e.value)
    assert "(it looks like resnext50_32x4d weights): 53 missing and 176 mismatched tensors" in msg
    problems = e.value.report.problems()
    assert "53 missing [conv1.conv.bias, " in problems
    assert ("176 shape mismatch [Keras 'conv2_block1_1_conv' -> conv2.block1.conv1.weight: model (64, 64, 1, 1), "
            "file (128, 64, 1, 1), ") in problems


def test_not_strict_loads_what_fits(resnext):
    model, path = resnext
    target = convzoo.create_model("resnext50_32x4d", in_chans=1)
    with pytest.warns(UserWarning, match="partial load"):
        report = convzoo.load_weights(target, path, strict=False)
    assert report.mismatched == ["Keras 'conv1_conv' -> conv1.conv.weight: model (64, 1, 7, 7), file (64, 3, 7, 7)"]
    assert "conv1.conv.weight" not in report.loaded and len(report.loaded) == len(model.state_dict()) - 54
    assert torch.equal(target.conv2.block1.conv1.weight, model.conv2.block1.conv1.weight)


# Unsafe pickles


class _Payload:
    """Unpickling this runs open(marker, 'w'): what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch_zip", "plain_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    if writer == "torch_zip":
        torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"conv1.weight": [0.0], "x": _Payload(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"evil\.pth: refused to unpickle: it calls io\.open"):
        convzoo.load_weights(convzoo.create_model("resnext29_32x4d"), path)
    assert not marker.exists()


def test_legacy_torch_pickle_and_wrapped_state_dict(tmp_path):
    ref = randomize_(convzoo.create_model("resnext29_32x4d"))
    path = tmp_path / "legacy.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path,
               _use_new_zipfile_serialization=False)
    loaded = convzoo.create_model("resnext29_32x4d")
    assert convzoo.load_weights(loaded, path).complete
    _assert_same_state(ref, loaded)


# Heads that do not fit


def test_include_top_false_and_other_num_classes(resnext):
    model, path = resnext
    x = torch.randn(1, 3, 64, 64)
    features = convzoo.create_model("resnext50_32x4d", include_top=False, pooling="avg").eval()
    with pytest.warns(UserWarning, match=r"classifier/auxiliary head not loaded: 2 tensors"):
        report = convzoo.load_weights(features, path)
    assert [s.split(" ")[0] for s in report.skipped] == ["Keras", "Keras"] and not report.problems()
    with torch.no_grad():
        assert torch.equal(features(x), model.forward_head(model.forward_features(x), pre_logits=True))
    ten = convzoo.create_model("resnext50_32x4d", num_classes=10).eval()
    with pytest.warns(UserWarning):
        report = convzoo.load_weights(ten, path)
    assert "Keras 'predictions' -> fc.weight: model (10, 2048), file (1000, 2048)" in report.skipped
    assert torch.equal(ten.conv5.block3.conv3.weight, model.conv5.block3.conv3.weight)


def test_notop_file_into_model_with_classifier(resnext, tmp_path):
    model, _ = resnext
    layers = [(n, w) for n, w in keras_resnext_layers(model) if n != "predictions"]
    path = _write_keras2(tmp_path / "notop.h5", layers)
    with pytest.warns(UserWarning):
        report = convzoo.load_weights(convzoo.create_model("resnext50_32x4d"), path)
    assert report.skipped == ["fc.weight (not in the file; left as initialised)",
                              "fc.bias (not in the file; left as initialised)"]


# Formats


def test_keras3_file_without_layer_names(tmp_path):
    path = tmp_path / "old.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/conv2d/vars").create_dataset("0", data=np.zeros((3, 3, 3, 8), np.float32))
    with pytest.raises(WeightsError, match="no 'name' attribute"):
        convzoo.load_weights(convzoo.create_model("xception"), path)


@pytest.mark.parametrize("content", [b"", b"hello world, not weights", b"PK\x03\x04broken zip"])
def test_unknown_or_broken_files(tmp_path, content):
    path = tmp_path / "w.bin"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as e:
        convzoo.load_weights(convzoo.create_model("resnext29_32x4d"), path)
    assert "\n" not in str(e.value)


def test_missing_file_and_feature_extractor(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        convzoo.load_weights(convzoo.create_model("resnext29_32x4d"), tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="whole model"):
        convzoo.load_weights(convzoo.create_model("resnext29_32x4d", features_only=True), tmp_path / "nope.pth")


def test_create_model_with_weights_path(tmp_path):
    from safetensors.torch import save_file

    ref = randomize_(convzoo.create_model("resnext29_32x4d"))
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    model = convzoo.create_model("resnext29_32x4d", weights=tmp_path / "w.safetensors")
    _assert_same_state(ref, model)
    feats = convzoo.create_model("resnext29_32x4d", weights=str(tmp_path / "w.safetensors"), features_only=True)
    assert torch.equal(feats.conv2.block1.conv1.weight, ref.conv2.block1.conv1.weight)


# Published weights: cache, download, hashes (a local server; nothing touches the network)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Files in ``root`` served on 127.0.0.1; $CONVZOO_HOME in tmp_path; the table emptied."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CONVZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(registry, "RECORDS", {})
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


def _entry(url: str, file_name: str, file_hash: str | None, **fields) -> WeightRecord:
    """A published-file record for the local server (resnext29_32x4d's evaluation transform)."""
    base = records.record_for_file(convzoo.get_model_cfg("resnext29_32x4d"), Path(__file__), "test", True)
    return replace(base, **{"name": f"resnext29_32x4d.{file_name}", "source": "keras", "url": url,
                            "file_name": file_name, "hash": file_hash, "size": None, **fields})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_weights(root: Path, name: str = "r29.safetensors") -> tuple[nn.Module, str]:
    from safetensors.torch import save_file

    ref = randomize_(convzoo.create_model("resnext29_32x4d"))
    save_file(ref.state_dict(), root / name)
    return ref, hashlib.md5((root / name).read_bytes()).hexdigest()


def test_imagenet_download_then_cache_hit(server, capsys):
    root, url, httpd = server
    ref, md5 = _serve_weights(root)
    registry.RECORDS["resnext29_32x4d"] = (_entry(f"{url}/r29.safetensors", "r29.safetensors", f"md5:{md5}"),)
    model = convzoo.create_model("resnext29_32x4d", weights="imagenet")
    _assert_same_state(ref, model)
    cached = hub.cache_dir() / "r29.safetensors"
    assert cached.is_file() and [p.name for p in cached.parent.iterdir()] == ["r29.safetensors"]
    httpd.shutdown()
    (root / "r29.safetensors").unlink()
    _assert_same_state(ref, convzoo.create_model("resnext29_32x4d", weights="imagenet"))
    assert main(["weights", "fetch", "resnext29_32x4d"]) == 0
    assert capsys.readouterr().out.strip() == str(cached)


def test_imagenet_sha256_prefix_and_preprocessing(server):
    """The record travels with the weights: the model's default_cfg stays, weights_meta says 'tf'."""
    root, url, _ = server
    _serve_weights(root, "r29-x.safetensors")
    sha = hashlib.sha256((root / "r29-x.safetensors").read_bytes()).hexdigest()
    entry = _entry(f"{url}/r29-x.safetensors", "r29-x.safetensors", f"sha256:{sha[:8]}", preprocessing="tf")
    registry.RECORDS["resnext29_32x4d"] = (entry,)
    model = convzoo.create_model("resnext29_32x4d")
    report = convzoo.load_weights(model, "imagenet")
    assert report.record is entry and model.weights_meta is entry
    assert model.weights_meta.preprocessing == "tf" and model.default_cfg.preprocessing == "cifar"


def test_imagenet_wrong_hash_removes_download(server):
    root, url, _ = server
    _serve_weights(root)
    registry.RECORDS["resnext29_32x4d"] = (_entry(f"{url}/r29.safetensors", "r29.safetensors", "md5:" + "0" * 32),)
    with pytest.raises(ChecksumError, match=r"r29\.safetensors: expected md5 0{32}, found [0-9a-f]{32} "
                                            r"\(downloaded from http://.*; not kept\)"):
        convzoo.create_model("resnext29_32x4d", weights="imagenet")
    assert not hub.cache_dir().exists() or not any(hub.cache_dir().iterdir())


def test_imagenet_corrupt_cached_file(server):
    _, url, _ = server
    registry.RECORDS["resnext29_32x4d"] = (_entry(f"{url}/r29.safetensors", "r29.safetensors", "md5:" + "0" * 32),)
    hub.cache_dir().mkdir(parents=True)
    (hub.cache_dir() / "r29.safetensors").write_bytes(b"junk")
    with pytest.raises(ChecksumError, match="delete it to download again"):
        convzoo.create_model("resnext29_32x4d", weights="imagenet")


@pytest.mark.parametrize("where", ["closed_port", "not_found"])
def test_imagenet_no_network(server, where):
    _, url, _ = server
    url = f"http://127.0.0.1:{_closed_port()}/w.h5" if where == "closed_port" else f"{url}/absent.h5"
    registry.RECORDS["resnext29_32x4d"] = (_entry(url, "w.h5", None),)
    with pytest.raises(DownloadError) as e:
        convzoo.create_model("resnext29_32x4d", weights="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"could not download {url} (")
    assert f"put it at {hub.cache_dir() / 'w.h5'}" in msg
    assert not any(hub.cache_dir().iterdir())


def test_imagenet_selection(server):
    _, url, _ = server
    top = _entry(f"{url}/top.h5", "top.h5", None)
    notop = _entry(f"{url}/notop.h5", "notop.h5", None, include_top=False)
    tv = _entry(f"{url}/tv.pth", "tv.pth", None, source="torchvision")
    registry.RECORDS["resnext50_32x4d"] = (tv, top, notop)
    assert hub.select("resnext50_32x4d") is tv
    assert hub.select("resnext50_32x4d", "imagenet:keras", num_classes=0) is notop
    assert hub.select("resnext50_32x4d", "imagenet:keras", num_classes=1000) is top
    with pytest.raises(WeightsError, match="sources: keras, torchvision"):
        hub.select("resnext50_32x4d", "imagenet:timm")
    with pytest.raises(WeightsError, match="no published 'imagenet' weights for xception"):
        convzoo.create_model("xception", weights="imagenet")


def test_published_table_entries():
    """Every entry names a registered model, a file name matching its URL and a well-formed hash."""
    for name, files in registry.RECORDS.items():
        convzoo.get_model_cfg(name)
        for f in files:
            assert f.model == name and f.url.endswith("/" + f.file_name)
            if f.hash is not None:
                algorithm, _, hexdigest = f.hash.partition(":")
                assert algorithm in ("md5", "sha256") and int(hexdigest, 16) >= 0
                assert algorithm != "md5" or len(hexdigest) == 32


# Command line


def test_cli_info_and_convert(resnext, tmp_path, capsys):
    model, path = resnext
    assert main(["weights", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "keras (legacy)" in out and "resnext50_32x4d" in out and "tensors  267" in out
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"c{i}" for i in range(1000)))
    out_file = tmp_path / "ck.safetensors"
    assert main(["weights", "convert", str(path), str(out_file), "--model", "resnext50_32x4d",
                 "--class-names", str(names)]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = convzoo.load_checkpoint(out_file)
    _assert_same_state(model, loaded)
    assert loaded.class_names[999] == "c999"
    assert loaded.checkpoint_info.extra["source_format"] == "keras-h5"
    assert main(["weights", "info", str(out_file), "--json"]) == 0
    assert '"format": "convzoo-checkpoint"' in capsys.readouterr().out
    assert main(["weights", "convert", str(path), str(tmp_path / "x.safetensors"), "--model", "xception"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convzoo: error:") and err.count("\n") == 1
