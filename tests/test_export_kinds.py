"""Issue 13 §5 beyond the acceptance examples: every kind of TF 'same' layer convzoo has (strided and
stride-1 convolutions with odd and even kernels, a 1x1 strided convolution, a kernel smaller than its
stride, max and average pooling), exported to TorchScript and .pt2 at one size, gives eager convzoo's output
at every other size, odd and even; a smaller input than the model's minimum is refused by the file; and the
command line refuses to export a random classifier unless asked, and exports a file without classifier as
the feature extractor, saying so. Expected values are eager PyTorch's at each size (the layers themselves
are checked against TensorFlow's rule in test_layers.py)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import convzoo
from convzoo.export import export_model, to_bytes
from convzoo.layers import AvgPool2d, Conv2d, MaxPool2d
from helpers import randomize_batchnorm_
from user_files import assert_one_line_error, cli

SIZES = (17, 16, 23, 30, 31)
LAYERS = {
    "conv3x3/2": lambda: Conv2d(3, 4, 3, 2, "same"),
    "conv4x4/2": lambda: Conv2d(3, 4, 4, 2, "same"),
    "conv4x4/1": lambda: Conv2d(3, 4, 4, 1, "same"),
    "conv1x1/2": lambda: Conv2d(3, 4, 1, 2, "same"),
    "conv2x2/3": lambda: Conv2d(3, 4, 2, 3, "same"),
    "conv3x3/2 dilated": lambda: Conv2d(3, 4, 3, 2, "same", dilation=2),
    "conv(1,5)/(2,1)": lambda: Conv2d(3, 4, (1, 5), (2, 1), "same"),
    "maxpool3/2": lambda: MaxPool2d(3, 2, "same"),
    "maxpool2/2": lambda: MaxPool2d(2, 2, "same"),
    "avgpool3/2": lambda: AvgPool2d(3, 2, "same"),
    "avgpool3/1": lambda: AvgPool2d(3, 1, "same"),
}


def _exported(module: nn.Module, fmt: str, size: int):
    """``module`` exported by convzoo at ``size`` and loaded back from its bytes, as a user loads the file."""
    buffer = io.BytesIO(to_bytes(module.eval(), fmt, torch.randn(2, 3, size, size)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(buffer) if fmt == "torchscript" else torch.export.load(buffer).module()


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_same_padding_layer_is_right_at_every_size(kind, fmt):
    torch.manual_seed(0)
    module = LAYERS[kind]().eval()
    run = _exported(module, fmt, 24)
    for size in SIZES:
        x = torch.randn(1, 3, size, size + 3)
        with torch.no_grad():
            assert torch.allclose(run(x), module(x), atol=1e-5), (kind, fmt, size)


@pytest.mark.parametrize("name", [pytest.param("xception_cifar_slim", marks=pytest.mark.slow),
                                  pytest.param("inception_v3_cifar", marks=pytest.mark.slow), "resnext29_2x64d"])
def test_library_export_of_cifar_models_runs_at_other_sizes(tmp_path, name):
    """Every CIFAR family (Xception's 'same' stem, Inception's branches, ResNeXt's grouped convs), rectangular
    and odd sizes included; ONNX names its one size when refusing another."""
    model = randomize_batchnorm_(convzoo.create_model(name, num_classes=7)).eval()
    for fmt, load in (("torchscript", torch.jit.load), ("pt2", lambda p: torch.export.load(p).module())):
        run = load(str(export_model(model, tmp_path / f"m.{'pt' if fmt == 'torchscript' else fmt}", fmt)))
        for h, w in ((32, 32), (33, 40), (47, 35)):
            x = torch.randn(1, 3, h, w)
            with torch.no_grad():
                assert torch.allclose(run(x), model(x), atol=1e-4), (fmt, h, w)
        with pytest.raises(Exception, match="32"):
            run(torch.randn(1, 3, 31, 40))
    session = ort.InferenceSession(str(export_model(model, tmp_path / "m.onnx", "onnx")),
                                   providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="32"):
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 40, 40), np.float32)})


def test_export_refuses_a_random_classifier_unless_asked(capsys, tmp_path):
    code, out, err = cli(capsys, "export", "xception_cifar_tiny", "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert_one_line_error(code, err, "--weights", "--random-weights")
    assert not (tmp_path / "m.onnx").exists()
    code, out, err = cli(capsys, "export", "--model", "xception_cifar_tiny", "--random-weights", "--format", "pt2",
                         "-o", tmp_path / "m.pt2")
    assert code == 0, err
    assert torch.export.load(str(tmp_path / "m.pt2")).module()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_export_of_weights_without_classifier_is_the_feature_extractor(capsys, tmp_path):
    model = randomize_batchnorm_(convzoo.create_model("xception_cifar_tiny", num_classes=0)).eval()
    ckpt = convzoo.save_checkpoint(model, tmp_path / "features.safetensors")
    code, out, err = cli(capsys, "export", ckpt, "--format", "onnx", "-o", tmp_path / "f.onnx")
    assert code == 0, err
    assert "feature extractor" in out and "no classifier" in out
    session = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert y.shape == (3, model.num_features) and np.abs(y - model(x).numpy()).max() < 1e-4


def test_predict_refuses_weights_without_classifier(capsys, tmp_path):
    ckpt = convzoo.save_checkpoint(convzoo.create_model("xception_cifar_tiny", num_classes=0),
                                   tmp_path / "features.safetensors")
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    code, out, err = cli(capsys, "predict", "--weights", ckpt, image, "--json")
    assert_one_line_error(code, err, "no classifier")
    assert out == ""
