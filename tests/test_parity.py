"""With the same weights, convzoo's logits equal the reference's: Keras 3 (torch backend) applications written
by Keras' own writers, and torchvision/timm state dicts saved as .pth and .safetensors, all read by
convzoo.load_weights. Weights and BatchNorm statistics are random; inputs are random at the default size."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import convzoo  # noqa: E402
from convzoo.models.base import logits_of  # noqa: E402

TOL = 1e-4
CFGS = [convzoo.get_model_cfg(n) for n in convzoo.list_models()]
# Keras application -> the registered model that reproduces it exactly (ModelCfg.exact_reference).
KERAS_APPS = {cfg.exact_reference("keras"): cfg.name for cfg in CFGS if cfg.exact_reference("keras")}
# The deep ResNets take over 20 s each in Keras: they run with the slow tests, one writer each.
SLOW_APPS = ("ResNet101", "ResNet152", "ResNet101V2", "ResNet152V2")
KERAS_CASES = [(app, writer) for app in KERAS_APPS if app not in SLOW_APPS for writer in ("legacy_h5", "weights_h5")]
KERAS_CASES += [("ResNet50V2", "whole_model_h5"), ("ResNet50", "keras_archive")]
KERAS_CASES += [pytest.param(app, "legacy_h5", marks=pytest.mark.slow) for app in KERAS_APPS if app in SLOW_APPS]


@dataclass
class KerasRef:
    model: object
    x: np.ndarray  # NHWC
    logits: np.ndarray
    folder: Path


def _randomize_keras(model, rng: np.random.Generator) -> None:
    """Random BatchNorm parameters and statistics (positive variances) and a random classifier, so that
    every converted array matters and the logits spread over several units."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for w in layer.weights:
                role, shape = w.path.rsplit("/", 1)[-1], tuple(w.shape)
                if role in ("gamma", "moving_variance"):
                    values.append(rng.uniform(0.5, 1.5, shape))
                else:
                    values.append(rng.normal(0.0, 0.1, shape))
            layer.set_weights([v.astype("float32") for v in values])
        elif isinstance(layer, keras.layers.Dense):
            fan_in, units = layer.weights[0].shape
            layer.set_weights([rng.normal(0.0, 8.0 / np.sqrt(fan_in), (fan_in, units)).astype("float32"),
                               rng.normal(0.0, 0.5, (units,)).astype("float32")])


@pytest.fixture(scope="module")
def keras_ref(tmp_path_factory):
    """Build each Keras application once (random weights, pre-softmax output) with its reference logits."""
    cache: dict[str, KerasRef] = {}

    def get(app: str) -> KerasRef:
        if app not in cache:
            import keras

            model = getattr(keras.applications, app)(weights=None, classifier_activation=None)
            rng = np.random.default_rng(sum(map(ord, app)))
            _randomize_keras(model, rng)
            size = model.input_shape[1]
            x = rng.uniform(-1.0, 1.0, (1, size, size, 3)).astype("float32")
            logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
            cache[app] = KerasRef(model, x, logits, tmp_path_factory.mktemp(app))
        return cache[app]

    return get


def _write_keras(ref: KerasRef, writer: str) -> Path:
    """Save with Keras' own code: the legacy HDF5 weights writer, ``save_weights`` (Keras 3 layout),
    a whole-model legacy ``.h5``, or a ``.keras`` archive."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    if writer == "legacy_h5":
        path = ref.folder / "legacy.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, ref.model)
    elif writer == "weights_h5":
        path = ref.folder / "model.weights.h5"
        ref.model.save_weights(path)
    elif writer == "whole_model_h5":
        path = ref.folder / "model.h5"
        ref.model.save(path)
    else:
        path = ref.folder / "model.keras"
        ref.model.save(path)
    return path


@pytest.mark.parametrize("app,writer", KERAS_CASES)
def test_keras_parity(keras_ref, app, writer):
    ref = keras_ref(app)
    path = _write_keras(ref, writer)
    model = convzoo.create_model(KERAS_APPS[app]).eval()
    report = convzoo.load_weights(model, path)
    assert report.complete and len(report.loaded) == len(ref.model.weights), report
    with torch.no_grad():
        out = model(torch.from_numpy(ref.x).permute(0, 3, 1, 2)).numpy()
    assert ref.logits.std() > 0.5
    diff = np.abs(out - ref.logits).max()
    # The deep ResNets' float32 rounding grows with the depth: verify-import's rule, 1e-5 of the largest logit.
    tol = TOL + (1e-5 * np.abs(ref.logits).max() if app in SLOW_APPS else 0.0)
    assert diff < tol, f"{app} via {writer}: max abs diff {diff:.3g}, max |logit| {np.abs(ref.logits).max():.3g}"


def _sane_init_(model: nn.Module, x: torch.Tensor) -> None:
    """Variance-preserving kernels, random BatchNorm parameters and statistics, and a classifier scaled so
    that the logits for ``x`` have a standard deviation of 3. (Left as built, timm's Inception (std 0.1
    everywhere) and deep residual stacks reach logits of 1e4 to 1e13, where an absolute tolerance means
    nothing.)"""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        scale = 3.0 / model(x).std()
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    if name == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                               transform_input=False)
    return getattr(torchvision.models, name)(weights=None)


def _timm(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


# "source-reference" -> (reference builder, reference name, convzoo model), from the torchvision and timm
# references the registered models reproduce exactly.
TORCH_CASES = {f"{source}-{cfg.exact_reference(source)}": (build, cfg.exact_reference(source), cfg.name)
               for cfg in CFGS for source, build in (("torchvision", _torchvision), ("timm", _timm))
               if cfg.exact_reference(source)}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_parity(case, tmp_path):
    from safetensors.torch import save_file

    build, ref_name, name = TORCH_CASES[case]
    ref = build(ref_name).eval()
    size = convzoo.get_model_cfg(name).input_size[1]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _sane_init_(ref, x)
    state = ref.state_dict()
    torch.save(state, tmp_path / "weights.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    with torch.no_grad():
        expected = ref(x)
    assert expected.std() > 0.5
    for file in ("weights.pth", "weights.safetensors"):
        has_aux = any(k.startswith("AuxLogits.") for k in state)
        model = convzoo.create_model(name, aux_logits=True).eval() if has_aux else convzoo.create_model(name).eval()
        report = convzoo.load_weights(model, tmp_path / file)
        assert report.complete, report
        with torch.no_grad():
            diff = (logits_of(model(x)) - expected).abs().max().item()
        assert diff < TOL, f"{case} from {file}: max abs diff {diff:.3g}"
        if has_aux:
            grid = torch.randn(1, 768, 17, 17, generator=torch.Generator().manual_seed(3))
            with torch.no_grad():
                aux_diff = (model.AuxLogits(grid) - ref.AuxLogits(grid)).abs().max().item()
            assert aux_diff < TOL


def test_torchvision_inception_into_model_without_aux(tmp_path):
    """torchvision's checkpoint has the auxiliary classifier; a model built without one skips it and says so."""
    ref = _torchvision("inception_v3").eval()
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    model = convzoo.create_model("inception_v3").eval()
    with pytest.warns(UserWarning, match="auxiliary"):
        report = convzoo.load_weights(model, tmp_path / "tv.pth")
    assert report.skipped and all(s.startswith("'AuxLogits.") for s in report.skipped)
    assert not (report.missing or report.unexpected or report.mismatched)
    x = torch.rand(1, 3, 299, 299)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() < TOL
