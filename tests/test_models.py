"""Every registered model: shapes, gradients, determinism, parameter counts, features, export."""

import copy
import math
from dataclasses import replace

import pytest
import torch

import convzoo
from convzoo.errors import ConfigError, InputShapeError, UnknownModelError
from convzoo.layers import init_keras_
from convzoo.models.base import LogitsWithAux, logits_of
from convzoo.optimize import fuse_batchnorm
from convzoo.summary import count_params
from helpers import randomize_

MODELS = convzoo.list_models()

# Keras-style counts (total, trainable, non-trainable) from the table and reference-facts.md;
# the rows with a live reference are also checked against it in test_reference_counts.py.
EXPECTED = {
    "xception": (22_910_480, 22_855_952, 54_528),
    "xception_timm": (22_910_480, 22_855_952, 54_528),
    "xception_cifar": (20_909_234, 20_854_706, 54_528),
    "xception_cifar_he_wd": (20_909_234, 20_854_706, 54_528),
    "xception_cifar_slim": (20_909_234, 20_854_706, 54_528),
    "xception_cifar_slim_thinner": (3_611_466, 3_595_450, 16_016),
    "inception_v3": (23_869_000, 23_834_568, 34_432),
    "inception_v3_keras": (23_851_784, 23_817_352, 34_432),
    "resnet50": (25_636_712, 25_583_592, 53_120),
    "resnet50v2": (25_613_800, 25_568_360, 45_440),
    "resnext50_32x4d": (25_097_128, 25_028_904, 68_224),
    "resnext101_32x4d": (44_315_560, 44_177_704, 137_856),
}


def small_size(name: str) -> int:
    """The smallest input each model accepts, to keep the suite fast."""
    return convzoo.get_model_cfg(name).min_input_size[1]


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            cache.clear()
            cache[name] = convzoo.create_model(name)
        return cache[name]
    return get


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_determinism(name, built):
    model = built(name)
    n_cls = model.default_cfg.num_classes
    s = small_size(name)
    x = torch.randn(2, 3, s, s)
    model.train()
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, n_cls)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, n_cls) and torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = convzoo.create_model(name)
    c = count_params(model)
    assert (c.total, c.trainable, c.non_trainable) == EXPECTED[name]


def test_inception_aux_head_counts():
    with torch.device("meta"):
        c = count_params(convzoo.create_model("inception_v3", aux_logits=True))
    assert (c.total, c.trainable, c.non_trainable) == (27_197_488, 27_161_264, 36_224)


def test_cifar_resnext_matches_the_paper():
    with torch.device("meta"):
        c = count_params(convzoo.create_model("resnext29_8x64d"))
    assert round(c.trainable / 1e6, 1) == 34.4  # Xie et al. 2017, Table 7


def test_inception_v3_cifar_count_is_recorded():
    """The seed's exact count is not reproducible; this is ours (command: convzoo summary inception_v3_cifar)."""
    with torch.device("meta"):
        c = count_params(convzoo.create_model("inception_v3_cifar"))
    assert (c.total, c.trainable, c.non_trainable) == (21_672_970, 21_638_954, 34_016)


@pytest.mark.parametrize("name", MODELS)
def test_features_only_channels_and_strides(name):
    model = convzoo.create_model(name, features_only=True).eval()
    s = max(small_size(name), 64)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, s, s))
    assert len(feats) == len(model.feature_info) >= 3
    for f, info in zip(feats, model.feature_info):
        assert f.shape[1] == info["num_chs"]
    reductions = model.reduction()
    assert reductions == sorted(reductions)
    if name.startswith(("resnet", "resnext")):  # 'same'-style padding: exact ceil division
        assert [f.shape[-1] for f in feats] == [math.ceil(s / r) for r in reductions]


def test_features_only_out_indices():
    model = convzoo.create_model("resnet50", features_only=True, out_indices=(1, -1)).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 2048]
    assert model.reduction() == [4, 32]


@pytest.mark.parametrize("name", MODELS)
def test_torch_export(name, built):
    model = built(name).eval()
    s = small_size(name)
    x = torch.randn(1, 3, s, s)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["xception", "inception_v3", "resnet50"])
def test_input_too_small_or_wrong_channels(name):
    model = convzoo.create_model(name, num_classes=2).eval()
    m = small_size(name)
    with pytest.raises(InputShapeError, match=f"at least {m}x{m}, got {m - 1}x{m - 1}"):
        model(torch.randn(1, 3, m - 1, m - 1))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got \(1, 1,"):
        model(torch.randn(1, 1, m, m))


def test_include_top_and_pooling_like_keras():
    maps = convzoo.create_model("xception", include_top=False).eval()
    pooled = convzoo.create_model("xception", include_top=False, pooling="max").eval()
    x = torch.randn(1, 3, 71, 71)
    with torch.no_grad():
        assert maps(x).shape == (1, 2048, 3, 3)  # 71 -> 35 -> 33 -> 17 -> 9 -> 5 -> 3, as Keras
        assert pooled(x).shape == (1, 2048)
    with pytest.raises(ConfigError):
        convzoo.create_model("xception", pooling="median")


def test_reset_classifier_and_forward_head():
    model = convzoo.create_model("resnet50", num_classes=5).eval()
    model.reset_classifier(3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 2048)
        assert model(x).shape == (2, 3)
    assert model.default_cfg.num_classes == 3


def test_in_chans_and_input_size():
    model = convzoo.create_model("resnet50", in_chans=1, input_size=(64, 64), num_classes=4).eval()
    assert model.default_cfg.input_size == (1, 64, 64)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 4)
    with pytest.raises(ConfigError, match="at least 71x71"):
        convzoo.create_model("xception", input_size=(64, 64))


def test_unknown_model_lists_closest_names():
    with pytest.raises(UnknownModelError, match="closest: xception"):
        convzoo.create_model("xceptoin")


def test_list_models_pattern():
    assert convzoo.list_models("*xception*") == [n for n in MODELS if "xception" in n]
    assert "resnext50_32x4d" in convzoo.list_models("resnext*")


def test_xception_variants_are_one_builder_with_keras_defaults():
    k = convzoo.create_model("xception")
    t = convzoo.create_model("xception_timm")
    he = convzoo.create_model("xception_cifar_he_wd")
    assert type(k) is type(t) is type(he)
    assert k.block4.sepconv1_bn.eps == 1e-3 and k.block4.sepconv1_bn.momentum == pytest.approx(0.01)
    assert t.block4.sepconv1_bn.eps == 1e-5 and he.block4.sepconv1_bn.momentum == pytest.approx(0.1)
    assert k.block1.conv1.bias is None and he.block1.conv1.bias is not None
    assert he.kernel_l2 == 1e-4 and k.kernel_l2 == 0.0


def test_xception_cifar_slim_keeps_resolution_through_the_entry_flow():
    slim = convzoo.create_model("xception_cifar_slim", features_only=True).eval()
    plain = convzoo.create_model("xception_cifar", features_only=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert slim(x)[-1].shape[-1] == 8
        assert plain(x)[-1].shape[-1] == 1


def test_inception_depth_multiplier_and_slim_endpoints():
    half = convzoo.create_model("inception_v3", depth_multiplier=0.5, min_depth=16, aux_logits=True).eval()
    ends = half.forward_endpoints(torch.randn(1, 3, 299, 299))
    assert ends["Conv2d_1a_3x3"].shape[1] == 16
    assert ends["Mixed_5b"].shape[1] == 32 + 32 + 48 + 16
    assert ends["Mixed_7c"].shape[1] == 1024
    assert {"AuxLogits", "PreLogits", "Logits"} <= set(ends)
    assert ends["Logits"].shape == (1, 1000)


def test_inception_aux_logits_in_every_mode():
    """Built with the auxiliary head, the model returns the named pair in training and in eval mode; built
    without it, a tensor."""
    model = convzoo.create_model("inception_v3", aux_logits=True, num_classes=7, depth_multiplier=0.25)
    x = torch.randn(2, 3, 299, 299)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert isinstance(out, LogitsWithAux) and out.logits.shape == out.aux_logits.shape == (2, 7)
        assert logits_of(out) is out.logits
    with torch.no_grad():
        assert torch.equal(model(x).logits, model.forward_head(model.forward_features(x)))
    with pytest.raises(InputShapeError, match="auxiliary classifier needs a 17x17"):
        model(torch.randn(2, 3, 75, 75))
    plain = convzoo.create_model("inception_v3", num_classes=7, depth_multiplier=0.25)
    for mode in (True, False):
        out = plain.train(mode)(torch.randn(2, 3, 75, 75))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7)


def test_features_only_out_of_range_is_an_error():
    n = len(convzoo.create_model("resnet50").feature_info)
    for bad in ((n,), (-n - 1,), (0, 7), ()):
        with pytest.raises(ConfigError, match=rf"out_indices must lie in \[-{n}, {n}\)"):
            convzoo.create_model("resnet50", features_only=True, out_indices=bad)


@pytest.mark.parametrize("name", MODELS)
def test_minimum_input_size_is_the_registered_one(name, built):
    """The model refuses what its registered min_input_size refuses, and takes that size."""
    model = built(name).eval()
    m = small_size(name)
    with pytest.raises(InputShapeError, match=f"at least {m}x{m}, got {m - 1}x{m}"):
        model(torch.randn(1, 3, m - 1, m))
    with torch.no_grad():
        assert logits_of(model(torch.randn(1, 3, m, m))).shape == (1, model.num_classes)


def test_builder_arguments_are_checked_and_builder_bugs_keep_their_traceback(monkeypatch):
    with pytest.raises(ConfigError, match="takes no argument depth_multiplyer; its builder's arguments: .*aux_logits"):
        convzoo.create_model("inception_v3", depth_multiplyer=0.5)
    with pytest.raises(ConfigError, match=r"aux_logits: expected true or false, got 'yes'"):
        convzoo.create_model("inception_v3", aux_logits="yes")
    with pytest.raises(ConfigError, match=r"kernel_init: expected one of 'glorot_uniform', 'he_normal', got 'orth"):
        convzoo.create_model("xception_cifar", kernel_init="orthogonal")
    with pytest.raises(ConfigError, match="kernel_init must be one of glorot_uniform, he_normal"):
        init_keras_(torch.nn.Linear(2, 2), "orthogonal")

    def broken(self, *args, **kwargs):
        raise TypeError("a bug inside the builder")

    monkeypatch.setattr(convzoo.get_model_cfg("resnet50").builder, "__init__", broken)
    with pytest.raises(TypeError, match="a bug inside the builder"):
        convzoo.create_model("resnet50")


def test_model_cfg_is_a_pretrained_cfg_mapping():
    """As timm's pretrained_cfg: keys, get, in, [] — plus mean/std in 0-1 units and the final map size."""
    cfg = convzoo.get_model_cfg("resnet50")
    assert cfg["crop_pct"] == cfg.crop_pct == 0.875 and cfg.get("input_size") == (3, 224, 224)
    assert "input_size" in cfg and "builder" not in cfg and cfg.get("nothing") is None
    assert {"mean", "std", "pool_size", "fixed_input_size", "min_input_size", "num_classes"} <= set(cfg)
    assert cfg.pool_size == (7, 7) and cfg.fixed_input_size is False
    assert cfg.mean == pytest.approx((103.939 / 255, 116.779 / 255, 123.68 / 255)) and cfg.std == (1 / 255,) * 3
    assert convzoo.get_model_cfg("inception_v3")["mean"] == (0.485, 0.456, 0.406)
    assert convzoo.get_model_cfg("xception")["std"] == (0.5, 0.5, 0.5)
    assert convzoo.get_model_cfg("inception_v3").pool_size == (8, 8)
    assert convzoo.get_model_cfg("xception").pool_size == (10, 10)
    assert convzoo.create_model("resnet50", input_size=(64, 96)).default_cfg["pool_size"] == (2, 3)
    with pytest.raises(KeyError):
        cfg["url"]
    with pytest.raises(ConfigError, match="interpolation must be one of bilinear, bicubic, got 'nearest'"):
        replace(cfg, interpolation="nearest")
    with pytest.raises(ConfigError, match="exact names timm without a reference of that library"):
        replace(cfg, exact=("keras", "timm"))
    assert cfg.exact_reference("keras") == "ResNet50" and cfg.exact_reference("timm") is None
    assert convzoo.get_model_cfg("xception").reference_name("timm") == "legacy_xception"
    assert convzoo.get_model_cfg("xception").exact_reference("timm") is None


@pytest.mark.parametrize("name, groups", [
    ("xception", {"block1": "entry flow", "block4": "entry flow", "block5": "middle flow", "block12": "middle flow",
                  "block13": "exit flow", "block14": "exit flow"}),
    ("xception_cifar_slim_thinner", {"block1": "entry flow", "block2": "middle flow", "block5": "middle flow",
                                     "block6": "exit flow", "block7": "exit flow"}),
    ("xception_cifar_tiny", {"block3": "entry flow", "block4": "middle flow", "block5": "exit flow"}),
    ("inception_v3", {"Conv2d_1a_3x3": "stem", "maxpool2": "stem", "Mixed_5d": "35x35 grid",
                      "Mixed_6a": "17x17 grid", "Mixed_6e": "17x17 grid", "Mixed_7a": "8x8 grid"}),
    ("resnet50v2", {"conv1": "stem", "pool1": "stem", "conv2": "conv2", "conv5": "conv5", "post_bn": "conv5"}),
])
def test_stage_groups_come_from_the_table(name, groups):
    model = convzoo.create_model(name)
    found = model.stage_groups()
    assert list(found) == model.stage_names
    assert {k: found[k] for k in groups} == groups


@pytest.mark.parametrize("name", MODELS)
def test_conv_bn_pairs_fold_to_the_same_outputs(name, built):
    """Every BatchNorm listed after a convolution folds into it; only the v2 pre-activations stay. (Logits
    of deep random networks reach 1e8: the tolerance is relative to them.)"""
    model = randomize_(copy.deepcopy(built(name)))
    pairs = model.conv_bn_pairs()
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {b for _, b in pairs} == {n for n in bns if not n.endswith(("preact_bn", "post_bn.bn"))}
    fused = fuse_batchnorm(copy.deepcopy(model))
    s = small_size(name)
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        expected = model(x)
        assert (fused(x) - expected).abs().max() <= 1e-4 + 1e-5 * expected.abs().max()
