"""Predictions on real image files, decode_predictions, and the bad inputs of `convzoo predict`."""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import convzoo
from convzoo.cli import main
from convzoo.errors import ConfigError
from convzoo.predict import decode_predictions, imagenet_classes, predict_files
from convzoo.data.transforms import ImageTransform
from convzoo.preprocess import preprocess_input
from convzoo.runtime import inference_model, resolve_device, runtime_device
from helpers import randomize_batchnorm_


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convzoo: error:"), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)).save(d / "a.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(d / "b.png")
    return d


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    model = convzoo.create_model("resnext29_32x4d")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    convzoo.save_checkpoint(model, path, class_names=[f"class{i}" for i in range(10)])
    return path


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory):
    """A small CIFAR model whose BatchNorms have non-trivial statistics, so that folding them changes weights."""
    model = convzoo.create_model("xception_cifar_tiny")
    randomize_batchnorm_(model)
    path = tmp_path_factory.mktemp("bn") / "tiny.safetensors"
    convzoo.save_checkpoint(model, path, class_names=[f"class{i}" for i in range(10)])
    return path


def test_imagenet_class_index_is_kerass():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[386] == ("n02504458", "African_elephant")


def test_decode_predictions_like_keras():
    probs = torch.zeros(2, 1000)
    probs[0, 386], probs[0, 101], probs[1, 0] = 0.4757, 0.3, 0.9
    decoded = decode_predictions(probs, top=2)
    assert decoded[0] == [("n02504458", "African_elephant", pytest.approx(0.4757)),
                          ("n01871265", "tusker", pytest.approx(0.3))]
    assert decoded[1][0][:2] == ("n01440764", "tench")
    named = decode_predictions(torch.tensor([[0.1, 0.7, 0.2]]), top=1, class_names=["cat", "dog", "frog"])
    assert named == [[("1", "dog", pytest.approx(0.7))]]
    with pytest.raises(ConfigError):
        decode_predictions(probs, top=0)


def test_preprocessing_modes_match_keras():
    import keras

    x = torch.rand(2, 3, 5, 5) * 255
    nhwc = x.permute(0, 2, 3, 1).numpy()
    for mode in ("tf", "caffe", "torch"):
        ref = keras.applications.imagenet_utils.preprocess_input(nhwc.copy(), mode=mode)
        ours = preprocess_input(x, mode).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - np.asarray(ref)).max() < 1e-4, mode


def test_transform_resizes_and_centre_crops(photos):
    t = ImageTransform((32, 32), 0.875, "bicubic", "tf")
    batch = t([photos / "a.jpg", photos / "b.png"])
    assert batch.shape == (2, 3, 32, 32)
    assert batch.min() >= -1 and batch.max() <= 1


def test_predict_with_a_checkpoint_json(capsys, photos, cifar_checkpoint):
    code, out, err = run(capsys, "predict", "--weights", str(cifar_checkpoint), str(photos), "--top", "3", "--json",
                         "--precision", "fp32")  # float32, compared at 1e-5 on any CPU
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [os.path.basename(r["image"]) for r in rows] == ["a.jpg", "b.png"]
    preds = rows[0]["predictions"]
    assert len(preds) == 3 and all(p["label"].startswith("class") for p in preds)
    assert preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]
    model = convzoo.load_checkpoint(cifar_checkpoint).eval()
    with torch.no_grad():
        probs = model(ImageTransform.from_cfg(model.default_cfg)([photos / "a.jpg"])).softmax(1)
    assert preds[0]["label"] == f"class{int(probs.argmax())}"
    assert preds[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_predict_imagenet_table(capsys, tmp_path, photos):
    """A 1,000-class checkpoint that names no classes is decoded with ImageNet's wnids and names."""
    ckpt = convzoo.save_checkpoint(convzoo.create_model("resnet50"), tmp_path / "r50.safetensors")
    code, out, _ = run(capsys, "predict", "--weights", str(ckpt), str(photos / "a.jpg"), "--top", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("a.jpg") and lines[1].strip().startswith("1.") and lines[2].strip().startswith("2.")
    wnid = lines[1].split()[-2]
    assert wnid in {w for w, _ in imagenet_classes()}


def test_predict_onnxruntime_matches_eager(capsys, photos, bn_checkpoint):
    rows = {}
    for runtime in ("eager", "onnxruntime"):
        code, out, err = run(capsys, "predict", "--weights", str(bn_checkpoint), str(photos), "--top", "3", "--json",
                             "--runtime", runtime, "--precision", "fp32")
        assert code == 0, err
        rows[runtime] = [json.loads(line) for line in out.splitlines()]
    assert len(rows["eager"]) == len(rows["onnxruntime"]) == 2
    for eager, ort in zip(rows["eager"], rows["onnxruntime"]):
        assert eager["image"] == ort["image"]
        assert [p["class_id"] for p in eager["predictions"]] == [p["class_id"] for p in ort["predictions"]]
        for pe, po in zip(eager["predictions"], ort["predictions"]):
            assert po["probability"] == pytest.approx(pe["probability"], abs=1e-4)


def test_unknown_runtime(capsys, photos):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", "resnet50", str(photos / "a.jpg"), "--runtime", "tensorrt"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'tensorrt'" in err, err
    with pytest.raises(ConfigError, match="runtime must be one of eager, onnxruntime"):
        inference_model(torch.nn.Identity(), "tensorrt")


def test_predict_files_folds_batchnorm_and_keeps_the_outputs(photos, bn_checkpoint):
    model = convzoo.load_checkpoint(bn_checkpoint).eval()
    paths = [photos / "a.jpg", photos / "b.png"]
    probs = predict_files(model, paths, device="cpu", precision="fp32")
    with torch.no_grad():
        expected = model(ImageTransform.from_model(model)(paths)).softmax(1)
    assert probs.dtype == torch.float32 and probs.device.type == "cpu"
    assert (probs - expected).abs().max() < 1e-5
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert runtime_device("auto", "onnxruntime") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_predict_device_cuda_without_cuda(capsys, monkeypatch, photos, bn_checkpoint):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, "predict", "--weights", str(bn_checkpoint), str(photos), "--device", "cuda")
    assert_one_line_error(code, err, "--device cuda: no CUDA device is available")
    assert out == ""


def test_predict_onnxruntime_refuses_device_cuda(capsys, photos, bn_checkpoint):
    code, _, err = run(capsys, "predict", "--weights", str(bn_checkpoint), str(photos), "--runtime", "onnxruntime",
                       "--device", "cuda")
    assert_one_line_error(code, err, "--runtime onnxruntime runs on the CPU here")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predict_on_cuda_matches_cpu(capsys, photos, bn_checkpoint):
    """bf16 on CUDA keeps the CPU's top-1 class (this model's top logit leads by over 0.1 on both photos)."""
    rows = {}
    for device in ("cpu", "cuda"):
        code, out, err = run(capsys, "predict", "--weights", str(bn_checkpoint), str(photos), "--top", "3", "--json",
                             "--device", device)
        assert code == 0, err
        rows[device] = [json.loads(line) for line in out.splitlines()]
    assert len(rows["cpu"]) == len(rows["cuda"]) == 2
    for cpu, cuda in zip(rows["cpu"], rows["cuda"]):
        assert cuda["predictions"][0]["class_id"] == cpu["predictions"][0]["class_id"]
        assert cuda["predictions"][0]["probability"] == pytest.approx(cpu["predictions"][0]["probability"], abs=1e-2)


def _bad_files(d):
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not a picture\n")
    buf = d / "whole.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf)
    data = buf.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("1", (10_000, 10_001)).save(d / "huge.png")  # 100 megapixels, tiny file
    return d


@pytest.mark.parametrize("name, fragment", [("missing.jpg", "found nothing"), ("empty.jpg", "empty file"),
                                            ("text.jpg", "does not recognise"), ("truncated.jpg", "damaged"),
                                            ("huge.png", "expected at most")])
def test_bad_images_are_one_line_errors(capsys, tmp_path, cifar_checkpoint, name, fragment):
    _bad_files(tmp_path)
    code, _, err = run(capsys, "predict", "--weights", str(cifar_checkpoint), str(tmp_path / name))
    assert_one_line_error(code, err, fragment)


def test_top_out_of_range(capsys, photos, cifar_checkpoint):
    code, _, err = run(capsys, "predict", "--weights", str(cifar_checkpoint), str(photos / "a.jpg"), "--top", "2000")
    assert_one_line_error(code, err, "--top must lie in [1, 10]")
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--weights", str(cifar_checkpoint), str(photos / "a.jpg"), "--top", "0"])
    assert exc.value.code == 2
    assert_one_line_error(2, capsys.readouterr().err, "--top", "at least 1")


def test_unknown_model(capsys, photos):
    """Refused where it is parsed: a usage error naming the closest registered names."""
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", "resnet05", str(photos / "a.jpg")])
    assert_one_line_error(exc.value.code, capsys.readouterr().err, "unknown model 'resnet05'", "resnet50")


def test_weights_of_another_architecture(capsys, tmp_path, photos, cifar_checkpoint):
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(convzoo.create_model("resnext29_2x64d").state_dict(), other)
    code, _, err = run(capsys, "predict", "--model", "resnet50", "--weights", str(other), str(photos / "a.jpg"))
    assert_one_line_error(code, err)


def test_truncated_h5(capsys, tmp_path, photos):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = [b"block1_conv1/kernel:0"]
        g.create_dataset("block1_conv1/kernel:0", data=np.zeros((3, 3, 3, 32), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    code, _, err = run(capsys, "predict", "--model", "xception", "--weights", str(path), str(photos / "a.jpg"))
    assert_one_line_error(code, err)


def test_malicious_pth_is_refused_and_never_runs(capsys, tmp_path, photos):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, path)
    code, _, err = run(capsys, "predict", "--model", "resnet50", "--weights", str(path), str(photos / "a.jpg"))
    assert_one_line_error(code, err)
    assert not marker.exists()
