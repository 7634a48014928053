"""Issue 13 §3: a head that does not fit is never replaced by a random one in an inference verb. A Keras
ResNet50 with a 107-class head (``keras.applications.ResNet50(weights=None, classes=107)``, saved with
``model.save("x.h5")``): ``predict``, ``eval`` and ``export`` build the model with the file's 107 classes,
print class indices (or the names of a ``--classes`` file), never ImageNet labels, and give Keras' answer.
Without a classifier in the file, or without weights at all, predict refuses in one line.
Also §6: ``predict`` on a 2-class checkpoint without ``--top`` prints 2 predictions per image.

Expected values come from the Keras model (torch backend) with random weights, run on the same input."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import convzoo  # noqa: E402
from convzoo.data.transforms import ImageTransform  # noqa: E402
from user_files import (assert_one_line_error, calibrate_last_dense_, cli, imagenet_names, json_lines,  # noqa: E402
                        keras_run, keras_save, max_diff, nhwc, randomize_keras_)

CLASSES = 107


@pytest.fixture(scope="module")
def keras107(tmp_path_factory):
    """A Keras ResNet50 with a random 107-class head, saved as a legacy whole-model .h5."""
    import keras

    model = keras.applications.ResNet50(weights=None, classes=CLASSES, classifier_activation=None)
    rng = np.random.default_rng(107)
    calib = keras.applications.resnet.preprocess_input(rng.uniform(0, 255, (2, 224, 224, 3)).astype("float32"))
    randomize_keras_(model, rng)
    calibrate_last_dense_(model, calib)
    return model, keras_save(model, tmp_path_factory.mktemp("r107"), "h5", "resnet50_107classes")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos with smooth random content."""
    folder = tmp_path_factory.mktemp("photos107")
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate(((240, 180), (200, 200), (150, 260))):
        small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        path = folder / f"photo{i}.jpg"
        small.resize(size, Image.BICUBIC).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def keras_answer(keras107, photos):
    """Keras' logits for the photos, on the input convzoo's transform for the loaded model makes."""
    import keras

    model, path = keras107
    t = ImageTransform.from_model(convzoo.create_model("resnet50", weights=path))
    x = t(photos)
    pixels = np.stack([t.pixels(p).permute(1, 2, 0).numpy() for p in photos]).astype("float32")
    assert max_diff(nhwc(x), keras.applications.resnet.preprocess_input(pixels)) < 1e-4  # caffe, from the file
    logits = keras_run(model, nhwc(x))
    top2 = np.sort(logits, 1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3  # a clear top class
    return logits


def test_predict_builds_the_files_head_and_gives_keras_answer(capsys, keras107, photos, keras_answer):
    _, path = keras107
    code, out, err = cli(capsys, "predict", "--model", "resnet50", "--weights", path, *photos, "--json",
                         "--precision", "fp32")
    assert code == 0, err
    rows = json_lines(out)
    assert len(rows) == len(photos)
    probs = np.exp(keras_answer) / np.exp(keras_answer).sum(1, keepdims=True)
    names = imagenet_names()
    for row, photo, p in zip(rows, photos, probs):
        assert row["image"].endswith(photo.name)
        preds = row["predictions"]
        assert all(0 <= int(q["class_id"]) < CLASSES for q in preds)
        assert not any(str(q["label"]) in names or str(q["class_id"]) in names for q in preds)
        assert int(preds[0]["class_id"]) == int(p.argmax())
        assert preds[0]["probability"] == pytest.approx(float(p.max()), abs=1e-4)


def test_predict_text_shows_indices_and_is_the_same_every_run(capsys, keras107, photos, keras_answer):
    _, path = keras107
    runs = [cli(capsys, "predict", "--model", "resnet50", "--weights", path, *photos) for _ in range(2)]
    assert all(code == 0 for code, _, _ in runs), runs[0][2]
    out = runs[0][1]
    assert out == runs[1][1]
    lines = out.splitlines()
    prediction_lines = [line for line in lines if not any(p.name in line for p in photos)]
    assert not set(re.findall(r"[\w'-]+", " ".join(prediction_lines))) & imagenet_names(), out
    for photo, top in zip(photos, keras_answer.argmax(1)):
        at = next(i for i, line in enumerate(lines) if photo.name in line)
        assert re.search(rf"(?<![\d.]){top}(?![\d])", lines[at + 1]), (top, lines[at + 1])


def test_predict_with_a_classes_file(capsys, tmp_path, keras107, photos, keras_answer):
    _, path = keras107
    names = [f"part_{i:03d}" for i in range(CLASSES)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    code, out, err = cli(capsys, "predict", "--model", "resnet50", "--weights", path, "--classes",
                         tmp_path / "names.txt", *photos, "--json")
    assert code == 0, err
    for row, top in zip(json_lines(out), keras_answer.argmax(1)):
        assert row["predictions"][0]["label"] == names[top]


@pytest.fixture(scope="module")
def notop_file(tmp_path_factory):
    import keras

    model = keras.applications.ResNet50(weights=None, include_top=False)
    return keras_save(model, tmp_path_factory.mktemp("notop"), "h5", "resnet50_notop")


def test_a_random_head_in_predict_is_an_error(capsys, photos, notop_file):
    """No weights, or weights without a classifier: no prediction from a random classifier, ever."""
    code, out, err = cli(capsys, "predict", "--model", "xception", photos[0])
    assert_one_line_error(code, err)
    assert out == ""
    code, out, err = cli(capsys, "predict", "--model", "resnet50", "--weights", notop_file, photos[0])
    line = assert_one_line_error(code, err)
    assert out == "" and re.search(r"classifier|head|top", line), line


def test_eval_of_an_image_folder_builds_the_files_head(capsys, tmp_path, keras107):
    """Classes are the folder names 0..106 (those of the photos' classes present: a subset evaluation); three
    photos are filed under Keras' answer and one under another class, so the top-1 accuracy is 3/4 exactly
    in float32. Single-colour photos look the same after any resize or crop."""
    import keras

    model, path = keras107
    colours = [(200, 30, 40), (20, 180, 60), (40, 60, 220), (230, 220, 30)]
    arrays = np.stack([np.full((224, 224, 3), c, np.float32) for c in colours])
    top = keras_run(model, keras.applications.resnet.preprocess_input(arrays)).argmax(1)
    folders = {str(i): [] for i in range(CLASSES)}
    for i, colour in enumerate(colours):
        label = int(top[i]) if i < 3 else (int(top[i]) + 1) % CLASSES
        folders[str(label)].append(colour)
    data = tmp_path / "val"
    for name, cs in filter(lambda item: item[1], folders.items()):
        (data / name).mkdir(parents=True)
        for j, c in enumerate(cs):
            Image.new("RGB", (64, 48), c).save(data / name / f"c{j}.png")
    code, out, err = cli(capsys, "eval", "--model", "resnet50", "--weights", path, "--data", data, "--json",
                         "--precision", "fp32")
    assert code == 0, err
    result = json_lines(out)[0]
    assert result["n"] == 4
    assert result["top1"] == pytest.approx(0.75)


def test_export_has_the_files_head(capsys, tmp_path, keras107):
    import onnxruntime as ort

    model, path = keras107
    out_file = tmp_path / "m.onnx"
    code, _, err = cli(capsys, "export", "--model", "resnet50", "--weights", path, "-o", out_file, "--format", "onnx")
    assert code == 0, err
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    x = (torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(9)) * 255 - 120).numpy()
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    assert y.shape == (2, CLASSES)
    assert max_diff(y, keras_run(model, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))) < 1e-4


# §6: the default --top is capped at the number of classes


def test_predict_default_top_is_capped_at_the_class_count(capsys, tmp_path, photos):
    model = convzoo.create_model("xception_cifar_tiny", num_classes=2)
    ckpt = convzoo.save_checkpoint(model, tmp_path / "two.safetensors", class_names=["cat", "dog"])
    code, out, err = cli(capsys, "predict", "--weights", ckpt, *photos[:2], "--json")
    assert code == 0, err
    rows = json_lines(out)
    assert len(rows) == 2 and all(len(r["predictions"]) == 2 for r in rows)
    assert all({p["label"] for p in r["predictions"]} == {"cat", "dog"} for r in rows)
    code, out, err = cli(capsys, "predict", "--weights", ckpt, *photos[:2])
    assert code == 0, err
    assert sum(1 for line in out.splitlines() if re.search(r"\b(cat|dog)\b", line)) == 4
