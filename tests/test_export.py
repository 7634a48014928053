"""Export to ONNX (run in onnxruntime), TorchScript and .pt2, with a dynamic batch, and diagrams."""

import xml.etree.ElementTree as ET

import numpy as np
import onnxruntime as ort
import pytest
import torch

import convzoo
from convzoo.cli import main
from convzoo.export import export_model
from convzoo.graph import to_dot


@pytest.fixture(scope="module")
def model():
    return convzoo.create_model("xception_cifar_slim_thinner").eval()


def test_onnx_matches_eager_at_several_batch_sizes(tmp_path, model):
    path = export_model(model, tmp_path / "m.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            assert np.abs(y - model(x).numpy()).max() <= 1e-4


def test_onnx_keeps_tf_same_padding_of_xception(tmp_path):
    m = convzoo.create_model("xception", num_classes=5).eval()
    path = export_model(m, tmp_path / "x.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 299, 299)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(y - m(x).numpy()).max() <= 1e-4


@pytest.mark.parametrize("fmt, loader", [("torchscript", torch.jit.load),
                                         ("pt2", lambda p: torch.export.load(p).module())])
def test_torchscript_and_pt2(tmp_path, model, fmt, loader):
    path = export_model(model, tmp_path / f"m.{fmt}", fmt)
    loaded = loader(str(path))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_export_cli_with_checkpoint(tmp_path, model, capsys):
    ckpt = convzoo.save_checkpoint(model, tmp_path / "c.safetensors")
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(tmp_path / "c.onnx")]) == 0
    assert (tmp_path / "c.onnx").stat().st_size > 1_000_000
    assert main(["export", "resnet05", "--format", "onnx", "-o", str(tmp_path / "d.onnx")]) == 2
    assert "unknown model" in capsys.readouterr().err


@pytest.mark.parametrize("name, blocks", [("xception", ["block4", "block12", "entry flow", "exit flow"]),
                                          ("inception_v3", ["Mixed_5b", "Mixed_6e", "Mixed_7c", "17x17 grid"]),
                                          ("resnet50", ["conv2", "conv5"])])
def test_graph_svg_parses_and_names_blocks(tmp_path, name, blocks, capsys):
    out = tmp_path / f"{name}.svg"
    assert main(["graph", name, "-o", str(out)]) == 0
    root = ET.parse(out).getroot()
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for b in blocks:
        assert b in text


def test_graph_png_and_depth_2(tmp_path):
    out = tmp_path / "r.png"
    assert main(["graph", "resnet50", "--depth", "2", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dot = to_dot(convzoo.create_model("resnet50"), depth=2)
    assert '"conv3.block4"' in dot and "1024x14x14" in dot
