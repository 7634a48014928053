"""Parameter counts against the references built live: Keras 3 (torch backend), torchvision and timm."""

import keras
import pytest
import timm
import torch
import torchvision

import convzoo
from convzoo.summary import count_params

CFGS = [convzoo.get_model_cfg(n) for n in convzoo.list_models()]
# The references each registered model reproduces exactly (ModelCfg.exact_reference), by model.
KERAS, TORCHVISION, TIMM = ({c.name: c.exact_reference(lib) for c in CFGS if c.exact_reference(lib)}
                            for lib in ("keras", "torchvision", "timm"))
# torchvision's Inception V3 builds its auxiliary head unless told not to.
TORCHVISION_KWARGS = {"inception_v3": dict(aux_logits=False, init_weights=False)}


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
    reference = TORCHVISION[name]
    with torch.device("meta"):
        ref = torchvision.models.get_model(reference, **TORCHVISION_KWARGS.get(reference, {}))
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
