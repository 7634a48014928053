"""Issue 13 §2: torch checkpoints as training code writes them. State dicts of timm (``legacy_xception``,
``resnext50_32x4d``, ``inception_v3``), torchvision (``resnext50_32x4d``) and convzoo models, taken from the
wrappers that write them (``torch.compile`` -> ``_orig_mod.``, DDP/DataParallel -> ``module.``, both in
either order, ``torch.optim.swa_utils.AveragedModel`` -> ``module.*`` plus ``n_averaged``), inside the
containers training scripts save (``{"model": ...}``, ``{"state_dict": ...}``, ``{"state_dict_ema": ...}``,
``{"model_ema": ...}`` with the epoch and the optimizer state), as ``.pth`` and, where the file holds
tensors only, ``.safetensors``. Each loads with logits equal to the reference model's, and the
``LoadReport`` says which container and prefixes were removed. A file with both a model and an EMA state
dict loads the EMA one, as timm's ``load_checkpoint(use_ema=True)`` does, and says so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

import convzoo
from test_parity import _sane_init_
from user_files import TOL


@dataclass
class TorchRef:
    convzoo_name: str
    model: nn.Module  # the trained model
    ema: nn.Module  # its EMA / SWA average: other weights, so that loading the wrong one shows
    x: torch.Tensor
    logits: torch.Tensor
    ema_logits: torch.Tensor
    folder: Path


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)
    return build


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    return build


def _convzoo(name: str) -> Callable[[], nn.Module]:
    return lambda: convzoo.create_model(name)


# reference -> (builder, convzoo model, input size)
REFERENCES = {
    "timm-legacy_xception": (_timm("legacy_xception"), "xception_timm", 96),
    "timm-resnext50_32x4d": (_timm("resnext50_32x4d"), "resnext50_32x4d", 64),
    "timm-inception_v3": (_timm("inception_v3"), "inception_v3", 96),
    "torchvision-resnext50_32x4d": (_torchvision("resnext50_32x4d"), "resnext50_32x4d", 64),
    "convzoo-xception_cifar_tiny": (_convzoo("xception_cifar_tiny"), "xception_cifar_tiny", 32),
}


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Callable[[str], TorchRef]:
    cache: dict[str, TorchRef] = {}

    def get(key: str) -> TorchRef:
        if key not in cache:
            build, name, size = REFERENCES[key]
            x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5)) * 2 - 1
            model = build().eval()
            _sane_init_(model, x)
            ema = _averaged_copy(build().eval(), model)
            with torch.no_grad():
                logits, ema_logits = model(x), ema(x)
            assert (logits - ema_logits).abs().max() > 0.1
            cache[key] = TorchRef(name, model, ema, x, logits, ema_logits, tmp_path_factory.mktemp(key))
        return cache[key]

    return get


def _averaged_copy(target: nn.Module, model: nn.Module) -> nn.Module:
    """``target`` holding ``model``'s tensors each off by a few percent, like an EMA of the weights."""
    g = torch.Generator().manual_seed(2)
    state = {k: v * (1 + 0.05 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    target.load_state_dict(state)
    return target


def _optimizer_state(model: nn.Module) -> dict:
    """An SGD state dict with momentum buffers, as saved next to the weights."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt.state_dict()


def _compiled(m: nn.Module) -> nn.Module:
    return torch.compile(m)  # state_dict() does not compile; keys gain '_orig_mod.'


def _ddp(m: nn.Module) -> nn.Module:
    return nn.DataParallel(m)  # the same 'module.' keys as DistributedDataParallel


# wrapper -> (what training code saves, container removed, prefixes removed in order, is it the EMA weights)
WRAPPERS: dict[str, Callable[[TorchRef], tuple[object, str | None, list[str], bool]]] = {
    "plain": lambda r: (r.model.state_dict(), None, [], False),
    "compiled": lambda r: (_compiled(r.model).state_dict(), None, ["_orig_mod."], False),
    "ddp": lambda r: (_ddp(r.model).state_dict(), None, ["module."], False),
    "ddp_of_compiled": lambda r: (_ddp(_compiled(r.model)).state_dict(), None, ["module.", "_orig_mod."], False),
    "compiled_ddp": lambda r: (_compiled(_ddp(r.model)).state_dict(), None, ["_orig_mod.", "module."], False),
    "swa": lambda r: (AveragedModel(r.ema).state_dict(), None, ["module."], True),
    "swa_of_compiled": lambda r: (AveragedModel(_compiled(r.ema)).state_dict(), None, ["module.", "_orig_mod."],
                                  True),
    "in_model": lambda r: ({"model": _compiled(r.model).state_dict(), "epoch": 7,
                            "optimizer": _optimizer_state(r.model)}, "model", ["_orig_mod."], False),
    "in_state_dict": lambda r: ({"epoch": 7, "state_dict": _ddp(r.model).state_dict(),
                                 "optimizer": _optimizer_state(r.model)}, "state_dict", ["module."], False),
    "in_state_dict_ema": lambda r: ({"state_dict_ema": r.ema.state_dict(), "epoch": 7}, "state_dict_ema", [], True),
    "in_model_ema": lambda r: ({"model": r.model.state_dict(), "model_ema": AveragedModel(r.ema).state_dict(),
                                "optimizer": _optimizer_state(r.model), "epoch": 7}, "model_ema", ["module."], True),
    # timm's train.py: both state dicts; timm's load_checkpoint(use_ema=True) takes the EMA
    "timm_train_with_ema": lambda r: ({"epoch": 7, "arch": "x", "state_dict": r.model.state_dict(),
                                       "optimizer": _optimizer_state(r.model), "version": 2, "metric": 0.5,
                                       "state_dict_ema": r.ema.state_dict()}, "state_dict_ema", [], True),
}
TENSORS_ONLY = ("plain", "compiled", "ddp", "ddp_of_compiled", "compiled_ddp", "swa", "swa_of_compiled")


def _formats(wrapper: str) -> tuple[str, ...]:
    return ("pth", "safetensors") if wrapper in TENSORS_ONLY else ("pth",)


DEFAULT_CASES = [("convzoo-xception_cifar_tiny", w, f) for w in WRAPPERS for f in _formats(w)] + [
    ("timm-legacy_xception", "compiled_ddp", "pth"),
    ("timm-legacy_xception", "timm_train_with_ema", "pth"),
    ("timm-resnext50_32x4d", "swa_of_compiled", "safetensors"),
    ("timm-resnext50_32x4d", "in_model_ema", "pth"),
    ("timm-inception_v3", "in_model", "pth"),
    ("torchvision-resnext50_32x4d", "ddp_of_compiled", "safetensors"),
    ("torchvision-resnext50_32x4d", "in_state_dict", "pth"),
]
ALL_CASES = [(r, w, f) for r in REFERENCES for w in WRAPPERS for f in _formats(w)]
CASES = DEFAULT_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in ALL_CASES if c not in DEFAULT_CASES]


def _write(obj: object, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, path)
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("reference,wrapper,fmt", CASES)
def test_training_checkpoint_loads_and_says_what_was_removed(refs, reference, wrapper, fmt):
    ref = refs(reference)
    obj, container, prefixes, is_ema = WRAPPERS[wrapper](ref)
    path = _write(obj, ref.folder / f"{wrapper}.{fmt}")
    model = convzoo.create_model(ref.convzoo_name).eval()
    report = convzoo.load_weights(model, path)
    assert report.complete, report
    assert report.container == container
    assert report.prefixes == prefixes
    text = str(report)
    assert all(p in text for p in prefixes) and (container is None or container in text), text
    expected = ref.ema_logits if is_ema else ref.logits
    with torch.no_grad():
        diff = (model(ref.x) - expected).abs().max().item()
    assert diff < TOL, f"{reference} {wrapper} {fmt}: max abs diff {diff:.3g}"


@pytest.mark.parametrize("wrapper", ["in_model_ema", "ddp_of_compiled"])
def test_create_model_with_a_training_checkpoint(refs, wrapper):
    """``create_model(name, weights=FILE)`` goes through the same unwrapping."""
    ref = refs("convzoo-xception_cifar_tiny")
    obj, _, _, is_ema = WRAPPERS[wrapper](ref)
    path = _write(obj, ref.folder / f"create-{wrapper}.pth")
    model = convzoo.create_model(ref.convzoo_name, weights=path).eval()
    with torch.no_grad():
        assert (model(ref.x) - (ref.ema_logits if is_ema else ref.logits)).abs().max().item() < TOL
