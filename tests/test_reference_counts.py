"""Parameter counts against the references built live: Keras 3 (torch backend), torchvision and timm."""

import keras
import pytest
import timm
import torch
import torchvision

import convzoo
from convzoo.summary import count_params

KERAS = {
    "xception": "Xception",
    "inception_v3_keras": "InceptionV3",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "resnet50v2": "ResNet50V2",
    "resnet101v2": "ResNet101V2",
    "resnet152v2": "ResNet152V2",
}
TORCHVISION = {
    "inception_v3": dict(name="inception_v3", aux_logits=False, init_weights=False),
    "resnext50_32x4d": dict(name="resnext50_32x4d"),
    "resnext101_32x8d": dict(name="resnext101_32x8d"),
}
TIMM = {
    "xception_timm": "legacy_xception",
    "inception_v3": "inception_v3",
    "resnext50_32x4d": "resnext50_32x4d",
    "resnext101_32x4d": "resnext101_32x4d",
}


def ours(name: str, **kwargs) -> tuple[int, int, int]:
    with torch.device("meta"):
        c = count_params(convzoo.create_model(name, **kwargs))
    return c.total, c.trainable, c.non_trainable


def torch_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    trainable = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return trainable + stats, trainable, stats


@pytest.mark.parametrize("name", sorted(KERAS))
def test_keras_counts(name):
    ref = getattr(keras.applications, KERAS[name])(weights=None)
    trainable = sum(int(w.numpy().size) for w in ref.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in ref.non_trainable_weights)
    assert ours(name) == (ref.count_params(), trainable, non_trainable)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_counts(name):
    kwargs = dict(TORCHVISION[name])
    with torch.device("meta"):
        ref = torchvision.models.get_model(kwargs.pop("name"), **kwargs)
    assert ours(name) == torch_counts(ref)


def test_torchvision_inception_aux_counts():
    with torch.device("meta"):
        ref = torchvision.models.inception_v3(aux_logits=True, init_weights=False)
    assert ours("inception_v3", aux_logits=True) == torch_counts(ref)


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_counts(name):
    with torch.device("meta"):
        ref = timm.create_model(TIMM[name], pretrained=False)
    assert ours(name) == torch_counts(ref)
