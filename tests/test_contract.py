"""Issue 13 §8: code written for timm or Keras runs unchanged on convzoo. What timm's tests/test_models.py
and Keras' applications_test.py / imagenet_utils_test.py check, parametrized over convzoo's registry:
``default_cfg``/``pretrained_cfg`` are mappings with timm's keys (``pool_size`` = the unpooled feature size at
``input_size``, ``mean``/``std`` = the weights' normalisation, so ``timm.data.resolve_data_config(model=m)``
gives 0.5/0.5 for 'tf' weights), ``num_features``/``head_hidden_size``, ``num_classes=0, global_pool=""``,
``pretrained=``, ``list_models`` with a list of filters and ``exclude_filters``, ``features_only`` with
``feature_info.channels()/.reduction()`` and out-of-range ``out_indices`` refused; Keras' ``include_top=True``
ignores ``pooling``, ``classifier_activation``, ``preprocess_input`` on integer, single-image and numpy
input; and the ImageNet class index Keras publishes. Shapes are checked on the meta device or at the
models' minimum input size."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import fnmatch  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from importlib import resources  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import convzoo  # noqa: E402
from convzoo.errors import ConfigError, ConvzooError  # noqa: E402
from convzoo.preprocess import preprocess_input  # noqa: E402
from user_files import TOL, calibrate_last_dense_, keras_run, keras_save, max_diff, nchw, randomize_keras_  # noqa: E402

NAMES = convzoo.list_models()
CFG_KEYS = ("input_size", "pool_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier",
            "num_classes")
# timm's mean/std (RGB, 0..1 units) for Keras' 'tf' mode, ImageNet's ('torch'), and the seed's CIFAR-10 statistics
MEAN_STD = {"tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "cifar": ((125.307 / 255, 122.95 / 255, 113.865 / 255), (62.9932 / 255, 62.0887 / 255, 66.7048 / 255))}
KERAS_MODES = ("tf", "caffe", "torch")


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return convzoo.create_model(name, **kwargs).eval()


def small_size(model) -> int:
    """timm's test size: the input size, or the minimum input size when the input is over 96 pixels."""
    cfg = model.default_cfg
    return cfg["input_size"][-1] if cfg["input_size"][-1] <= 96 else cfg["min_input_size"][-1]


def meta_input(size: int, chans: int = 3) -> torch.Tensor:
    return torch.empty(1, chans, size, size, device="meta")


# timm: the model contract


@pytest.mark.parametrize("name", NAMES)
def test_cfg_is_a_mapping_with_timms_keys(name):
    model = on_meta(name)
    for cfg in (model.default_cfg, model.pretrained_cfg):
        assert isinstance(cfg, Mapping)
        assert not cfg.get("fixed_input_size") and cfg.get("no_such_key") is None
        assert "input_size" in cfg and "no_such_key" not in cfg
        assert set(CFG_KEYS) <= set(cfg.keys())
        assert len(cfg["mean"]) == len(cfg["std"]) == 3
        assert cfg["num_classes"] == model.num_classes
    cfg = model.default_cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    features = model.forward_features(meta_input(cfg["input_size"][-1]))
    assert tuple(features.shape[2:]) == tuple(cfg["pool_size"]) and features.shape[1] == model.num_features


@pytest.mark.parametrize("name", NAMES)
def test_timm_resolve_data_config_gives_the_weights_normalisation(name):
    import timm.data

    model = on_meta(name)
    config = timm.data.resolve_data_config(model=model)
    cfg = model.pretrained_cfg
    assert tuple(config["input_size"]) == tuple(cfg["input_size"])
    assert config["interpolation"] == cfg["interpolation"] and config["crop_pct"] == cfg["crop_pct"]
    assert tuple(config["mean"]) == pytest.approx(tuple(cfg["mean"]))
    assert tuple(config["std"]) == pytest.approx(tuple(cfg["std"]))
    mode = convzoo.get_model_cfg(name)["preprocessing"]
    if mode in MEAN_STD:
        mean, std = MEAN_STD[mode]
        assert tuple(config["mean"]) == pytest.approx(mean, abs=1e-4)
        assert tuple(config["std"]) == pytest.approx(std, abs=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_head_sizes_and_unpooled_features(name):
    model = on_meta(name)
    size = small_size(model)
    x = meta_input(size)
    assert model.num_features > 0 and model.head_hidden_size > 0
    features = model.forward_features(x)
    assert features.shape[1] == model.num_features
    assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (1, model.head_hidden_size)
    model.reset_classifier(0, "")
    assert model(x).ndim == 4
    bare = on_meta(name, num_classes=0, global_pool="")
    out = bare(x)
    assert out.ndim == 4 and out.shape[1] == model.num_features
    assert bare.forward_head(bare.forward_features(x)).shape == out.shape


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_false_is_accepted(name):
    assert on_meta(name, pretrained=False).state_dict().keys() == on_meta(name).state_dict().keys()


def test_pretrained_true_means_imagenet_weights():
    """A model without published weights: the same refusal as ``weights='imagenet'``."""
    with pytest.raises(ConvzooError) as imagenet:
        convzoo.create_model("xception_cifar_tiny", weights="imagenet")
    with pytest.raises(ConvzooError) as pretrained:
        convzoo.create_model("xception_cifar_tiny", pretrained=True)
    assert type(pretrained.value) is type(imagenet.value) and str(pretrained.value) == str(imagenet.value)


def test_list_models_takes_timms_filters():
    names = convzoo.list_models()

    def expect(include: list[str], exclude: list[str]) -> list[str]:
        return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in include)
                      and not any(fnmatch.fnmatch(n, p) for p in exclude))

    got = convzoo.list_models(["*xception*", "resnet*"], exclude_filters=["*cifar*"])
    assert got == expect(["*xception*", "resnet*"], ["*cifar*"]) and "xception" in got and "resnet50" in got
    assert convzoo.list_models("resnet*", exclude_filters="*v2") == expect(["resnet*"], ["*v2"])
    assert convzoo.list_models(filter="*xception*") == convzoo.list_models("*xception*")


@pytest.mark.parametrize("name", NAMES)
def test_features_only_feature_info_and_out_indices(name):
    model = on_meta(name, features_only=True)
    channels, reduction = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == len(reduction) >= 3
    size = small_size(model)
    outs = model(meta_input(size))
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reduction, outs):
        assert o.shape[1] == c and o.shape[2] <= math.ceil(size / r) + 1
    n = len(channels)
    last = on_meta(name, features_only=True, out_indices=(n - 1,))
    assert last.feature_info.channels() == [channels[-1]]
    for bad in ((n,), (-n - 1,), (0, n + 2)):
        with pytest.raises(ConfigError):
            on_meta(name, features_only=True, out_indices=bad)


# Keras: the application builders


@pytest.mark.parametrize("name", NAMES)
def test_notop_with_any_channels_and_pooling_like_keras(name):
    """applications_test.py: 1 or 4 input channels, pooling='max' gives (N, last_dim)."""
    model = on_meta(name)
    size = small_size(model)
    for chans in (1, 4):
        notop = on_meta(name, include_top=False, in_chans=chans)
        assert notop(meta_input(size, chans)).shape[1] == model.num_features
    assert on_meta(name, include_top=False, pooling="max")(meta_input(size)).shape == (1, model.num_features)


KERAS = {"Xception": ("xception", 96), "ResNet50": ("resnet50", 64)}


@pytest.fixture(scope="module")
def keras_apps(tmp_path_factory):
    """Keras applications built with include_top=True, pooling='max' (which Keras ignores), random weights."""
    import keras

    cache = {}

    def get(app: str):
        if app not in cache:
            name, size = KERAS[app]
            model = getattr(keras.applications, app)(weights=None, include_top=True, pooling="max",
                                                     input_shape=(size, size, 3), classifier_activation=None)
            rng = np.random.default_rng(len(cache) + 1)
            x = rng.uniform(-1, 1, (2, size, size, 3)).astype("float32")
            randomize_keras_(model, rng)
            logits = calibrate_last_dense_(model, x)
            assert max_diff(keras_run(model, x), logits) < TOL
            cache[app] = (name, x, logits, keras_save(model, tmp_path_factory.mktemp(app), "weights_h5", app))
        return cache[app]

    return get


@pytest.mark.parametrize("app", list(KERAS))
def test_include_top_ignores_pooling_like_keras(keras_apps, app):
    name, x, logits, path = keras_apps(app)
    for pooling in (None, "avg", "max"):
        model = convzoo.create_model(name, include_top=True, pooling=pooling).eval()
        convzoo.load_weights(model, path)
        with torch.no_grad():
            out = model(nchw(x)).numpy()
        assert max_diff(out, logits) < TOL, pooling


@pytest.mark.parametrize("app", list(KERAS))
def test_classifier_activation_like_keras(keras_apps, app):
    name, x, logits, path = keras_apps(app)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for activation, expected in (("softmax", probs), (None, logits)):
        model = convzoo.create_model(name, classifier_activation=activation).eval()
        convzoo.load_weights(model, path)
        with torch.no_grad():
            out = model(nchw(x)).numpy()
        assert max_diff(out, expected) < (1e-5 if activation else TOL), activation
        if activation == "softmax":
            assert np.allclose(out.sum(1), 1.0, atol=1e-5)


# Keras: imagenet_utils.preprocess_input


def keras_preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """Keras' preprocess_input on a copy (it may write into float input), channels_last."""
    from keras.applications import imagenet_utils

    return np.asarray(imagenet_utils.preprocess_input(x.copy(), data_format="channels_last", mode=mode))


@pytest.mark.parametrize("mode", KERAS_MODES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32])
def test_preprocess_integer_tensors_like_keras(mode, dtype):
    x = torch.randint(0, 256, (2, 3, 5, 7), generator=torch.Generator().manual_seed(1)).to(dtype)
    kept = x.clone()
    ours = preprocess_input(x, mode=mode)
    assert ours.is_floating_point() and torch.isfinite(ours).all()
    assert max_diff(ours.permute(0, 2, 3, 1).numpy(), keras_preprocess(x.permute(0, 2, 3, 1).numpy(), mode)) < 1e-4
    assert torch.equal(x, kept)


@pytest.mark.parametrize("mode", KERAS_MODES)
def test_preprocess_single_image_keeps_its_shape(mode):
    """(3, H, W) comes back (3, H, W); 'caffe' flips the channel axis, as Keras flips the last axis of HWC."""
    x = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(2)) * 255
    ours = preprocess_input(x, mode=mode)
    assert ours.shape == (3, 5, 7)
    assert max_diff(ours.permute(1, 2, 0).numpy(), keras_preprocess(x.permute(1, 2, 0).numpy(), mode)) < 1e-4
    as_uint8 = preprocess_input(x.to(torch.uint8), mode=mode)
    assert as_uint8.shape == (3, 5, 7) and as_uint8.is_floating_point()


@pytest.mark.parametrize("mode", KERAS_MODES)
def test_preprocess_numpy_follows_keras_channels_last(mode):
    rng = np.random.default_rng(3)
    for x in (rng.uniform(0, 255, (2, 5, 7, 3)).astype("float32"), rng.integers(0, 256, (2, 5, 7, 3), np.uint8),
              rng.uniform(0, 255, (5, 7, 3)).astype("float32")):
        ours = preprocess_input(x.copy(), mode=mode)
        assert isinstance(ours, np.ndarray) and ours.shape == x.shape and np.issubdtype(ours.dtype, np.floating)
        assert max_diff(ours, keras_preprocess(x, mode)) < 1e-4


def test_imagenet_class_index_is_the_file_keras_publishes():
    data = (resources.files("convzoo") / "resources" / "imagenet_class_index.json").read_bytes()
    assert hashlib.md5(data).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"
    index = json.loads(data)
    assert len(index) == 1000 and index["765"] == ["n04099969", "rocking_chair"]
