"""Issue 13 §4 beyond the acceptance examples: every route by which a run's start weights arrive gives the run
the preprocessing recorded with them, the user's choice overrides it, and the run's one record is what
``train``, ``eval``, ``predict`` and ``export`` use.

Routes: a torchvision state dict inside a training-code wrapper (``{"state_dict": {"module.": ...}}``,
'torch'), Keras files whose own Rescaling / Normalization layers fix the preprocessing (Keras' 'tf' for a
ResNet50 whose family default is 'caffe'; statistics no mode has), a file the records know by its hash (a
CIFAR model's weights published with 'tf'), and a convzoo checkpoint of an earlier run (the CIFAR statistics,
a mode chosen by the user, the user's own mean and std). Each expected value comes from a reference computed
here: Keras' ``preprocess_input`` and the file's own Keras layers, torchvision's weights enum
(``ResNeXt50_32X4D_Weights.IMAGENET1K_V1.transforms()``), the numbers the user gave; the checkpoint's model
run on the reference inputs gives the probabilities ``predict`` must print and the accuracy and loss ``eval``
must report. Every verb runs in float32 here (bf16 is the default on CPUs with native bf16)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
import shutil  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convzoo  # noqa: E402
import convzoo.hardware  # noqa: E402
from convzoo import registry  # noqa: E402
from convzoo.data.transforms import ImageTransform  # noqa: E402
from convzoo.export import METADATA  # noqa: E402
from convzoo.predict import predict_files  # noqa: E402
from convzoo.preprocess import Normalize  # noqa: E402
from convzoo.train.evaluate import EvalOptions, evaluate_target, evaluate_weights  # noqa: E402
from convzoo.weights import records  # noqa: E402
from test_preprocessing_record import CIFAR_MEAN, CIFAR_STD, CLASSES, assert_records_one_preprocessing  # noqa: E402
from user_files import cli, json_lines, keras_run, keras_save, nchw, nhwc, randomize_keras_, write_photos  # noqa: E402

Reference = Callable[[torch.Tensor], torch.Tensor]
SIZE = 64


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    """float32 in every verb: the references are float32."""
    monkeypatch.setattr(convzoo.hardware, "bf16_pays", lambda device: False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, CLASSES, size=48)
    return folder


def keras_mode(mode: str) -> Reference:
    """Keras' ``preprocess_input`` in ``mode`` (``keras.applications.imagenet_utils``) on NCHW pixels."""
    from keras.applications import imagenet_utils

    return lambda x: nchw(imagenet_utils.preprocess_input(nhwc(x).copy(), mode=mode))


def statistics(mean: tuple[float, ...], std: tuple[float, ...]) -> Reference:
    """(x - mean) / std per RGB channel, pixel units."""
    return lambda x: (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def torchvision_imagenet(x: torch.Tensor) -> torch.Tensor:
    """The normalisation of torchvision's ResNeXt50 ImageNet weights, as their enum's transform states it."""
    import torchvision

    t = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1.transforms()
    return torchvision.transforms.functional.normalize(x / 255.0, t.mean, t.std)


REFERENCES: dict[str, Reference] = {"cifar": statistics(CIFAR_MEAN, CIFAR_STD), "torch": torchvision_imagenet}


def train(capsys, photos: Path, run: Path, *args) -> Path:
    """One epoch of ``convzoo train`` on ``photos`` into ``run`` (a small learning rate: the logits stay
    finite, so the probabilities and the loss compared below mean something)."""
    code, out, err = cli(capsys, "train", "--data", photos, "--epochs", "1", "--batch-size", "4", "--lr", "0.001",
                         "--out", run, "--device", "cpu", *args)
    assert code == 0, err
    return run


def recorded(run: Path) -> object:
    return json.loads((run / "config.json").read_text())["preprocessing"]


def assert_every_verb_uses(capsys, run: Path, photos: Path, reference: Reference) -> None:
    """``predict`` of the run's best checkpoint gives the probabilities of its model on the ``reference``
    inputs; ``eval`` of the run, and of that checkpoint copied out of the run, reports their accuracy and
    loss. Models fine-tuned from large weights train their classifier only (``--freeze-epochs 1``): what is
    checked is the verbs' preprocessing, not the training."""
    model = convzoo.load_checkpoint(run / "best").eval()
    images = sorted(photos.rglob("*.jpg"))
    pixels = torch.stack([ImageTransform.from_model(model).pixels(p) for p in images]).float()
    with torch.no_grad():
        logits = model(reference(pixels))
    want = logits.softmax(1)
    got = predict_files(model, images, precision="fp32")
    assert (got - want).abs().max() < 1e-5, (got, want)
    # The command line reads the same record (a run's own mean and std included).
    code, out, err = cli(capsys, "predict", "--weights", run / "best", images[0], "--json", "--precision", "fp32",
                         "--top", str(len(model.class_names)))
    assert code == 0, err
    shown = {p["label"]: p["probability"] for p in json_lines(out)[0]["predictions"]}
    assert shown == pytest.approx(dict(zip(model.class_names, want[0].tolist())), abs=1e-5)
    labels = torch.tensor([model.class_names.index(p.parent.name) for p in images])
    alone = shutil.copy(run / "best" / "model.safetensors", run.parent / f"{run.name}-best.safetensors")
    for target in (run, alone):
        tally = evaluate_target(target, photos, "best", EvalOptions(device="cpu", pipeline="memory")).tally
        assert tally.n == len(images)
        assert tally.top1_acc == pytest.approx(float((want.argmax(1) == labels).double().mean()))
        assert tally.loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-4, abs=1e-4)


def assert_imported_weights_use(name: str, weights: Path, folder: Path, reference: Reference) -> None:
    """``predict`` and ``eval --model NAME --weights FILE`` (no run) of the file give what ``name`` with its
    weights gives on the ``reference`` inputs."""
    model = convzoo.create_model(name, weights=weights).eval()
    images = sorted(folder.rglob("*.jpg"))
    pixels = torch.stack([ImageTransform.from_model(model).pixels(p) for p in images]).float()
    with torch.no_grad():
        logits = model(reference(pixels))
    assert (predict_files(model, images, precision="fp32") - logits.softmax(1)).abs().max() < 1e-5
    tally = evaluate_weights(name, weights, folder, EvalOptions(device="cpu")).tally
    labels = torch.tensor([int(p.parent.name) for p in images])
    assert tally.n == len(images)
    assert tally.loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-4, abs=1e-4)


# Start weights of every kind


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory) -> Path:
    """torchvision's ResNeXt50 (random weights) as training code saves it: a DDP model's state dict inside
    ``{"state_dict": ...}``, under a name no published record has."""
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    path = tmp_path_factory.mktemp("tv") / "rx50_finetuned.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return path


def test_torchvision_state_dict_in_a_training_wrapper_gives_torch(capsys, tmp_path, photos, torchvision_file):
    run = train(capsys, photos, tmp_path / "rx", "--model", "resnext50_32x4d", "--weights", torchvision_file,
                "--set", f"input_size={SIZE},{SIZE}", "--freeze-epochs", "1")
    assert_records_one_preprocessing(run, "torch")
    assert_every_verb_uses(capsys, run, photos, REFERENCES["torch"])


def _keras_with_preprocessing(*layers_before) -> object:
    """Input -> ``layers_before`` -> ResNet50 (no top) -> GlobalAveragePooling2D -> Dense(5), random weights."""
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in layers_before:
        x = layer(x)
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    model = keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling2D()(base(x))))
    randomize_keras_(model, np.random.default_rng(7))
    return model


@pytest.mark.parametrize("kind", ["tf", "statistics"])
def test_keras_files_own_preprocessing_layers_decide_not_the_family(capsys, tmp_path, photos, kind):
    """ResNet50's Keras family preprocesses with 'caffe'; a file whose model rescales its input itself
    records what its layers do: Keras' 'tf' for Rescaling(1/127.5, offset=-1), else their statistics."""
    from keras import layers

    before = [layers.Rescaling(1 / 127.5, offset=-1)] if kind == "tf" else \
        [layers.Rescaling(1 / 255.0), layers.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.04, 0.05, 0.06])]
    path = keras_save(_keras_with_preprocessing(*before), tmp_path, "keras", f"resnet50-{kind}")
    run = train(capsys, photos, tmp_path / "run", "--model", "resnet50", "--weights", path, "--freeze-epochs", "1",
                "--set", f"input_size={SIZE},{SIZE}")
    if kind == "tf":
        assert_records_one_preprocessing(run, "tf")
    else:
        record = recorded(run)
        assert record["bgr"] is False
        assert np.allclose(record["mean"], [127.5, 102.0, 76.5]) and np.allclose(
            record["std"], 255 * np.sqrt([0.04, 0.05, 0.06]), rtol=1e-5)

    def the_files_layers(x: torch.Tensor) -> torch.Tensor:
        y = nhwc(x)
        for layer in before:
            y = keras_run(layer, y)
        return nchw(y)

    assert_every_verb_uses(capsys, run, photos, the_files_layers)
    numbered = tmp_path / "numbered"  # class folders named as the file's classes: 0..4, some of them
    write_photos(numbered, {"0": CLASSES["reds"][:3], "3": CLASSES["blues"][:3]})
    assert_imported_weights_use("resnet50", path, numbered, the_files_layers)


def test_a_file_known_by_its_hash_brings_its_record_to_a_cifar_model(capsys, tmp_path, photos, monkeypatch):
    """A CIFAR model's CIFAR statistics are for training from scratch: weights published with 'tf' (found by
    their contents under any name) train, evaluate and predict with 'tf'."""
    path = tmp_path / "renamed.safetensors"
    torch.manual_seed(3)
    convzoo.save_checkpoint(convzoo.create_model("xception_cifar_tiny"), path)
    found = records.record_for_file(convzoo.get_model_cfg("xception_cifar_tiny"), path, "test", True)
    mean, std, _ = Normalize(mode="tf").pixel_stats()
    published = replace(found, name="xception_cifar_tiny.test", file_name="published.safetensors",
                        preprocessing="tf", mean=mean, std=std)
    monkeypatch.setitem(registry.RECORDS, "xception_cifar_tiny", (published,))
    run = train(capsys, photos, tmp_path / "run", "--model", "xception_cifar_tiny", "--weights", path)
    assert_records_one_preprocessing(run, "tf")
    assert_every_verb_uses(capsys, run, photos, keras_mode("tf"))


@pytest.mark.parametrize("first", [(), ("--preprocessing", "torch"),
                                   ("--set", "mean=100,110,120", "--set", "std=50,60,70")],
                         ids=["cifar-from-scratch", "mode-chosen", "own-statistics"])
def test_finetuning_a_runs_checkpoint_keeps_its_preprocessing(capsys, tmp_path, photos, first):
    """A run started from another run's checkpoint takes the preprocessing that run recorded, whichever it
    was: a CIFAR model's statistics, a mode the user chose, the user's own mean and std."""
    earlier = train(capsys, photos, tmp_path / "a", "--model", "xception_cifar_tiny", *first)
    again = train(capsys, photos, tmp_path / "b", "--model", "xception_cifar_tiny", "--weights", earlier / "best")
    assert recorded(again) == recorded(earlier)
    reference = statistics((100, 110, 120), (50, 60, 70)) if "--set" in first else \
        REFERENCES["torch" if first else "cifar"]
    assert_every_verb_uses(capsys, again, photos, reference)


# The user's choice, in every verb


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory) -> Path:
    import keras

    model = keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    randomize_keras_(model, np.random.default_rng(50))
    return keras_save(model, tmp_path_factory.mktemp("r50"), "legacy_weights_h5", "resnet50_weights")


def test_users_preprocessing_overrides_the_weights_in_every_verb(capsys, tmp_path, photos, keras_resnet50):
    """Keras ResNet50 weights ('caffe') fine-tuned with --preprocessing tf: the run records 'tf' only; eval and
    predict use it (and warn when told otherwise, naming it); the export says so, and an ONNX Runtime user who
    prepares the input as the export's metadata says gets predict's answer."""
    import onnx
    import onnxruntime as ort

    run = train(capsys, photos, tmp_path / "run", "--model", "resnet50", "--weights", keras_resnet50,
                "--preprocessing", "tf", "--freeze-epochs", "1", "--set", f"input_size={SIZE},{SIZE}")
    assert_records_one_preprocessing(run, "tf")
    assert_every_verb_uses(capsys, run, photos, keras_mode("tf"))
    image = sorted(photos.rglob("*.jpg"))[0]
    for argv in (("eval", run, "--data", photos, "--json"), ("predict", "--weights", run / "best", image)):
        code, _, err = cli(capsys, *argv, "--preprocessing", "caffe")
        warning = err.strip().splitlines()
        assert code == 0 and len(warning) == 1 and "'tf'" in warning[0] and "caffe" in warning[0], err

    onnx_file = tmp_path / "run.onnx"
    code, out, err = cli(capsys, "export", run / "best", "--format", "onnx", "-o", onnx_file)
    assert code == 0 and "'tf' preprocessing" in out, err
    meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}[METADATA])
    assert (meta["preprocessing"], meta["mean"], meta["std"], meta["bgr"]) == ("tf", [127.5] * 3, [127.5] * 3, False)
    assert meta["class_names"] == sorted(CLASSES) and meta["input_size"] == [3, SIZE, SIZE]
    pixels = ImageTransform.from_model(convzoo.load_checkpoint(run / "best")).pixels(image)[None].float()
    x = ((pixels - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    code, out, err = cli(capsys, "predict", "--weights", run / "best", image, "--json", "--top", "2")
    shown = {p["label"]: p["probability"] for p in json_lines(out)[0]["predictions"]}
    assert shown == pytest.approx(dict(zip(meta["class_names"], logits.softmax(1)[0].tolist())), abs=1e-5)


@pytest.mark.parametrize("mode", ["torch", "caffe"])
def test_a_mode_set_for_a_model_trained_from_scratch(capsys, tmp_path, photos, mode):
    """``--set preprocessing=MODE`` on a CIFAR model from scratch replaces its CIFAR statistics everywhere
    ('caffe' also reverses the channels, in the in-memory training batches as in every verb)."""
    run = train(capsys, photos, tmp_path / "run", "--model", "xception_cifar_tiny", "--set", f"preprocessing={mode}")
    assert_records_one_preprocessing(run, mode)
    assert_every_verb_uses(capsys, run, photos, keras_mode(mode))


def test_the_in_memory_training_batches_are_normalised_as_every_verb(tmp_path):
    """The trainer's in-memory loader gives exactly the verbs' normalisation, channel order included."""
    from convzoo.data import ArrayDataset
    from convzoo.train.data import DataSpec, train_batches
    from convzoo.train.distributed import DistEnv
    from convzoo.train.recipes import Recipe

    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ds = ArrayDataset(images.repeat(4, 1, 1, 1), torch.zeros(4, dtype=torch.long), ["a"])
    recipe = Recipe(batch_size=4, flip=False, shift=0.0)
    spec = DataSpec(None, None, 0.1, 0, (8, 8))
    for mode in ("caffe", "tf"):
        batches = train_batches(ds, recipe, spec, Normalize(mode=mode), 1, DistEnv(), torch.device("cpu"), False, 0)
        batches.set_epoch(0)
        x, _ = next(iter(batches))
        assert (x - keras_mode(mode)(images.float())).abs().max() < 1e-4, mode


# Runs recorded before runs had one preprocessing record


def test_a_run_recorded_with_its_statistics_is_evaluated_with_them(capsys, tmp_path, photos):
    run = train(capsys, photos, tmp_path / "run", "--model", "xception_cifar_tiny")
    now = evaluate_target(run, photos, opts=EvalOptions(device="cpu")).tally
    config = json.loads((run / "config.json").read_text())
    del config["preprocessing"]
    config["normalization"] = dict(mean=list(CIFAR_MEAN), std=list(CIFAR_STD), bgr=False)
    (run / "config.json").write_text(json.dumps(config))
    before = evaluate_target(run, photos, opts=EvalOptions(device="cpu")).tally
    assert before.loss == now.loss and torch.equal(before.confusion, now.confusion)


# Image folders: eval scores the classes that hold images; training needs images in every class


def test_eval_scores_an_image_folder_with_class_folders_without_images(capsys, tmp_path, photos):
    run = train(capsys, photos, tmp_path / "run", "--model", "xception_cifar_tiny")
    partial = tmp_path / "partial"
    write_photos(partial, {"reds": CLASSES["reds"]})
    (partial / "blues").mkdir()
    code, out, err = cli(capsys, "eval", run, "--data", partial, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == len(CLASSES["reds"]) and result["per_class"]["blues"] is None
    empty = tmp_path / "empty"
    for name in CLASSES:
        (empty / name).mkdir(parents=True)
    code, _, err = cli(capsys, "eval", run, "--data", empty)
    assert code == 2 and err.count("\n") == 1 and "found none in any of 2" in err, err


def test_training_refuses_a_class_folder_without_images(capsys, tmp_path):
    data = tmp_path / "data"
    write_photos(data, {"reds": CLASSES["reds"]})
    (data / "blues").mkdir()
    code, _, err = cli(capsys, "train", "--data", data, "--epochs", "1", "--out", tmp_path / "run", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "blues" in err and "found none" in err, err


# Exported files say how their input is prepared


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_every_export_format_holds_the_weights_preprocessing(tmp_path, fmt):
    """Statistics no mode has (a run's own mean and std) travel in every format, as the run records them."""
    import onnx

    from convzoo.export import export_model
    from convzoo.train.build import run_record

    model = convzoo.create_model("xception_cifar_tiny", num_classes=3)
    own = Normalize.stats((100.0, 110.0, 120.0), (50.0, 60.0, 70.0), False)
    model.weights_meta = run_record(model, "xception_cifar_tiny.test", (32, 32), "bicubic", own)
    path = export_model(model, tmp_path / f"m.{'pt' if fmt == 'torchscript' else fmt}", fmt)
    files = {METADATA: ""}
    if fmt == "onnx":
        files = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    elif fmt == "torchscript":
        torch.jit.load(str(path), _extra_files=files)
    else:
        torch.export.load(str(path), extra_files=files)
    meta = json.loads(files[METADATA])
    assert (meta["preprocessing"], meta["mean"], meta["std"], meta["bgr"]) == ("custom", [100, 110, 120], [50, 60, 70],
                                                                               False)
    assert (meta["interpolation"], meta["crop_pct"], meta["input_size"]) == ("bicubic", 1.0, [3, 32, 32])


# Checkpoints written by the trainer before runs recorded one preprocessing: statistics in ``extra``


def test_a_checkpoint_with_its_training_statistics_in_extra_is_read_with_them(tmp_path):
    """Such a checkpoint copied out of its run is prepared with the statistics it trained with, not with the
    start weights' record it also carries; without a record to state them it is refused in one line."""
    model = convzoo.create_model("resnet50", num_classes=3)
    model.weights_meta = next(r for r in records.list_records() if r.model == "resnet50" and r.include_top)
    assert model.weights_meta.preprocessing == "caffe"
    extra = dict(mean=[100.0, 110.0, 120.0], std=[50.0, 60.0, 70.0], bgr=False)
    path = convzoo.save_checkpoint(model, tmp_path / "old.safetensors", extra=extra)
    loaded = convzoo.load_checkpoint(path)
    normalize = ImageTransform.from_model(loaded).normalizer
    assert normalize.pixel_stats() == ((100.0, 110.0, 120.0), (50.0, 60.0, 70.0), False)

    cifar = dict(mean=list(CIFAR_MEAN), std=list(CIFAR_STD), bgr=False)
    path = convzoo.save_checkpoint(convzoo.create_model("xception_cifar_tiny"), tmp_path / "cifar.safetensors",
                                   extra=cifar)
    assert ImageTransform.from_model(convzoo.load_checkpoint(path)).normalizer == Normalize(mode="cifar")

    path = convzoo.save_checkpoint(convzoo.create_model("resnet50", num_classes=3), tmp_path / "bare.safetensors",
                                   extra=extra)
    with pytest.raises(convzoo.errors.CheckpointError, match="no weight record"):
        convzoo.load_checkpoint(path)
