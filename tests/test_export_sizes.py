"""Issue 13 §5: exported files are right at every input size they accept. ``convzoo export`` of xception,
inception_v3, resnet50 and the CIFAR xception_cifar_tiny (at their default size) to ONNX, TorchScript and
.pt2, run at the default size and at sizes around it (298/299, 320, 224/225; 31, 33, 40, 24 for CIFAR): either the output equals eager convzoo at that size (TF 'same' padding computed
for the actual size), or loading or running refuses with a message naming the size it was exported for.
Never a silently different answer, never a bare 'pad must be non-negative'. The expected values are the
eager model's at each size."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import convzoo
from helpers import randomize_batchnorm_
from user_files import LOGIT_STD, TOL, cli

FORMATS = ("onnx", "torchscript", "pt2")
# Sizes each export is run at, besides its own: odd and even, larger and smaller (TF 'same' padding of a
# strided layer depends on the parity of the size).
SIZES = {"xception": (299, 298, 320, 224, 225), "inception_v3": (299, 298, 320, 224, 225),
         "resnet50": (224, 225, 299, 298, 320), "xception_cifar_tiny": (32, 31, 33, 40, 24)}
CASES = [("xception", "torchscript"), ("xception", "pt2")] + [("xception_cifar_tiny", f) for f in FORMATS]
CASES += [pytest.param(m, f, marks=pytest.mark.slow) for m, f in
          [("xception", "onnx")] + [(m, f) for m in ("inception_v3", "resnet50") for f in FORMATS]]


class Exported:
    """A model with random BatchNorm statistics and a scaled classifier, its checkpoint, its exports and its
    eager outputs at each size."""

    def __init__(self, name: str, folder: Path) -> None:
        model = randomize_batchnorm_(convzoo.create_model(name, num_classes=17)).eval()
        assert model.default_cfg["input_size"][-1] == SIZES[name][0]
        self.size = model.default_cfg["input_size"][-1]
        with torch.no_grad():
            model.fc.weight.mul_(LOGIT_STD / model(self.input(self.size)).std())
        self.model, self.folder, self.name = model, folder, name
        self.checkpoint = convzoo.save_checkpoint(model, folder / f"{name}.safetensors")
        self.files: dict[str, Path] = {}
        self.eager: dict[int, np.ndarray] = {}

    @staticmethod
    def input(size: int) -> torch.Tensor:
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1

    def expected(self, size: int) -> np.ndarray:
        if size not in self.eager:
            with torch.no_grad():
                self.eager[size] = self.model(self.input(size)).numpy()
        return self.eager[size]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Callable[[str], Exported]:
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            cache[name] = Exported(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def _runner(fmt: str, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """Load the exported file as its users do; the returned function runs it on an NCHW float tensor."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
    else:
        module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()
    return run


@pytest.mark.parametrize("name,fmt", CASES)
def test_export_is_right_or_refuses_at_every_size(capsys, exported, name, fmt):
    ref = exported(name)
    out = ref.folder / f"{name}.{fmt}"
    code, _, err = cli(capsys, "export", ref.checkpoint, "--format", fmt, "-o", out)
    assert code == 0, err
    run = _runner(fmt, out)
    for size in SIZES[name]:
        try:
            y = run(ref.input(size))
        except Exception as e:  # a refusal must say which size the file takes
            msg = str(e)
            assert size != ref.size, f"{fmt} fails at its own size {size}: {msg}"
            assert str(ref.size) in msg, f"{name} {fmt} at {size}: {msg[:300]}"
            assert "pad must be non-negative" not in msg
            continue
        diff = float(np.abs(y - ref.expected(size)).max())
        assert diff < TOL, f"{name} exported at {ref.size} as {fmt} runs at {size} with max abs diff {diff:.3g}"
