"""Issue 13 §4: one preprocessing, from the weights, everywhere. Fine-tuning from Keras ResNet50 weights
(which expect 'caffe': BGR, ImageNet mean subtracted, no scaling) trains, records, evaluates and predicts
with 'caffe', not with the recipe's CIFAR mean/std; the run records one preprocessing and ``eval`` and
``predict`` agree image by image. A recipe's CIFAR statistics apply only to CIFAR-style models trained from
scratch. Expected normalisations come from Keras' ``preprocess_input`` modes ('caffe' for
keras.applications.resnet, the seed's CIFAR-10 statistics for the CIFAR models)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import convzoo  # noqa: E402
from convzoo.data.transforms import ImageTransform  # noqa: E402
from convzoo.preprocess import preprocess_input  # noqa: E402
from user_files import cli, json_lines, keras_save, randomize_keras_, write_photos  # noqa: E402

# The seed's CIFAR-10 per-channel statistics in pixel units (and /255): they must not reach a fine-tuning run.
CIFAR_MEAN = (125.307, 122.95, 113.865)
CIFAR_STD = (62.9932, 62.0887, 66.7048)
MODES = ("tf", "caffe", "torch", "cifar")  # Keras' preprocessing modes and the seed's CIFAR statistics
CLASSES = {"reds": [(150 + 15 * i, 20 + 9 * i, 30 + 7 * i) for i in range(6)],
           "blues": [(20 + 8 * i, 40 + 12 * i, 140 + 18 * i) for i in range(6)]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, CLASSES, size=48)
    return folder


@pytest.fixture(scope="module")
def keras_resnet50_file(tmp_path_factory) -> Path:
    """keras.applications.ResNet50 (1000 classes) with random weights, in the published files' layout."""
    import keras

    model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    randomize_keras_(model, np.random.default_rng(50))
    return keras_save(model, tmp_path_factory.mktemp("r50"), "legacy_weights_h5", "resnet50_weights")


def _items(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, nested ones included (list items keep the list's key)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _items(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _items(v, key)


def _has_triplet(doc: Any, triplet: tuple[float, ...]) -> bool:
    """Whether ``doc`` holds a list of three numbers equal to ``triplet`` or to ``triplet / 255``."""
    for _, v in _items({"": doc}):
        if isinstance(v, list) and len(v) == 3 and all(isinstance(n, (int, float)) for n in v):
            for scale in (1.0, 255.0):
                if np.allclose(np.asarray(v) * scale, triplet, rtol=1e-3):
                    return True
    return False


def assert_records_one_preprocessing(run: Path, mode: str) -> None:
    """config.json names ``mode`` and no other mode, the checkpoint normalises as Keras' ``mode`` does."""
    config = json.loads((run / "config.json").read_text())
    recorded = {v for _, v in _items(config) if isinstance(v, str) and v in MODES}
    assert recorded == {mode}, recorded
    if mode != "cifar":
        assert not _has_triplet(config, CIFAR_MEAN) and not _has_triplet(config, CIFAR_STD), config
    model = convzoo.load_checkpoint(run / "best")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 255
    got = ImageTransform.from_model(model).normalize(x)
    assert (got - preprocess_input(x, mode=mode)).abs().max() < 1e-4


def test_finetuning_from_keras_weights_records_caffe_and_every_verb_uses_it(capsys, tmp_path, photos,
                                                                           keras_resnet50_file):
    """The README's fine-tuning line with ResNet50's Keras weights: one record, 'caffe'; eval and predict
    give the same top-1 class for every image."""
    run = tmp_path / "r50"
    code, _, err = cli(capsys, "train", "--model", "resnet50", "--weights", keras_resnet50_file, "--data", photos,
                       "--epochs", "1", "--set", "input_size=64,64", "--batch-size", "4", "--out", run,
                       "--device", "cpu")
    assert code == 0, err
    assert_eval_and_predict_agree(capsys, run, photos)
    assert_records_one_preprocessing(run, "caffe")


def assert_eval_and_predict_agree(capsys, run: Path, photos: Path) -> None:
    """``eval RUN --data photos`` covers every photo, and its accuracies (or its per-image answers) are those
    of ``predict --weights RUN/best`` on the same photos."""
    code, out, err = cli(capsys, "eval", run, "--data", photos, "--json")
    assert code == 0, err
    result = json_lines(out)[0]
    images = sorted(photos.rglob("*.jpg"))
    assert result["n"] == len(images) == 12
    code, out, err = cli(capsys, "predict", "--weights", run / "best", *images, "--json", "--top", "1")
    assert code == 0, err
    rows = json_lines(out)
    predicted = {Path(r["image"]).resolve(): r["predictions"][0]["label"] for r in rows}
    truth = {p.resolve(): p.parent.name for p in images}
    assert set(predicted) == set(truth)
    per_image = result.get("per_image") or result.get("predictions")
    if per_image is not None:  # eval lists its answer per image: compare them one by one
        eval_top = {Path(r["image"]).resolve(): r.get("label", r.get("prediction")) for r in per_image}
        assert eval_top == predicted
    hits: dict[str, list[bool]] = defaultdict(list)
    for path, label in predicted.items():
        hits[truth[path]].append(label == truth[path])
    assert result["top1"] == pytest.approx(np.mean([h for v in hits.values() for h in v]))
    for name, h in hits.items():
        assert result["per_class"][name] == pytest.approx(np.mean(h)), name


def test_cifar_model_from_scratch_records_cifar(capsys, tmp_path, photos):
    run = tmp_path / "tiny"
    code, _, err = cli(capsys, "train", "--model", "xception_cifar_tiny", "--data", photos, "--epochs", "1",
                       "--batch-size", "4", "--out", run, "--device", "cpu")
    assert code == 0, err
    assert_eval_and_predict_agree(capsys, run, photos)
    assert_records_one_preprocessing(run, "cifar")
