"""Issue 13 §1: Keras models that contain an application, as the Keras transfer-learning guide writes them
(``Sequential([base, GlobalAveragePooling2D(), Dense(n)])``; ``Input -> Rescaling -> base(x, training=False)
-> GlobalAveragePooling2D -> Dropout -> Dense``; a base built with ``pooling=...`` and a Dense after it),
saved by Keras' own writers as a legacy whole-model ``.h5``, a ``.keras`` archive and a ``.weights.h5``.
Each loads with the file's head, its logits equal the Keras outer model's, preprocessing layers are folded
into the weights' preprocessing or reported, and heads convzoo does not have are refused in one line.
Also §6: ``convzoo verify-import`` works without ``KERAS_BACKEND`` in the environment.

Expected values come from the Keras models (torch backend) built with random weights in this module."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import convzoo  # noqa: E402
from convzoo.data.transforms import ImageTransform  # noqa: E402
from convzoo.errors import WeightsError  # noqa: E402
from user_files import (KERAS_APPS, TOL, Wrapped, cli, keras_save, max_diff, nchw, randomize_keras_,  # noqa: E402
                        calibrate_last_dense_, subprocess_env, wrapped_cache)

FORMATS = ("h5", "keras", "weights_h5")
LOADABLE = ("sequential", "functional_rescaling", "normalization", "adapted_normalization", "augmentation",
            "pooling_avg", "pooling_max", "global_max")
# Layers without weights whose parameters live only in the model config: a weights-only file cannot hold them.
CONFIG_ONLY_PREPROCESSING = ("functional_rescaling", "normalization")

DEFAULT_CASES = [
    ("Xception", "sequential", "h5"),  # the example, in its three formats
    ("Xception", "sequential", "keras"),
    ("Xception", "sequential", "weights_h5"),
    ("Xception", "functional_rescaling", "h5"),  # the guide's functional form
    ("Xception", "functional_rescaling", "keras"),
    ("ResNet50", "normalization", "keras"),
    ("ResNet50", "adapted_normalization", "weights_h5"),
    ("ResNet50V2", "pooling_max", "h5"),
    ("InceptionV3", "pooling_avg", "keras"),
    ("ResNet50", "global_max", "weights_h5"),
    ("ResNet50", "augmentation", "keras"),
]
ALL_CASES = [(a, s, f) for a in KERAS_APPS for s in LOADABLE for f in FORMATS
             if not (f == "weights_h5" and s in CONFIG_ONLY_PREPROCESSING)]
CASES = DEFAULT_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in ALL_CASES if c not in DEFAULT_CASES]


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory):
    return wrapped_cache(tmp_path_factory)


def model_input(ref: Wrapped, model: torch.nn.Module) -> torch.Tensor:
    """What convzoo's model takes for the Keras outer model's input: raw pixels go through the weights'
    preprocessing (``ImageTransform.from_model(model).normalize``), anything else is passed as it is."""
    x = nchw(ref.x)
    return ImageTransform.from_model(model).normalize(x) if ref.raw_pixels else x


def head_kwargs(ref: Wrapped) -> dict:
    return {"global_pool": "max"} if ref.pooling == "max" else {}


def logits_of(model: torch.nn.Module, ref: Wrapped) -> np.ndarray:
    with torch.no_grad():
        return model(model_input(ref, model)).numpy()


@pytest.mark.parametrize("app,structure,fmt", CASES)
def test_wrapped_application_loads_with_the_files_head(wrapped, app, structure, fmt):
    ref = wrapped(app, structure)
    path = ref.save(fmt)
    model = convzoo.create_model(ref.convzoo_name, weights=path).eval()
    assert model.num_classes == ref.classes
    diff = max_diff(logits_of(model, ref), ref.logits)
    assert diff < TOL, f"{app}/{structure} via {fmt}: max abs diff {diff:.3g}"
    if ref.dropout is not None and fmt != "weights_h5":
        assert model.drop_rate == pytest.approx(ref.dropout)

    target = convzoo.create_model(ref.convzoo_name, num_classes=ref.classes, **head_kwargs(ref)).eval()
    report = convzoo.load_weights(target, path)
    assert report.complete, report
    assert report.nesting == ref.nesting
    assert report.head["classes"] == ref.classes and report.head["pooling"] == ref.pooling, report.head
    if fmt != "weights_h5":
        assert report.head["dropout"] == (None if ref.dropout is None else pytest.approx(ref.dropout))
        assert report.head["activation"] == ref.activation
    assert max_diff(logits_of(target, ref), ref.logits) < TOL
    if structure == "augmentation" and fmt != "weights_h5":
        notes = " ".join(report.notes).lower().replace("_", "")
        assert "randomflip" in notes and "randomrotation" in notes, report.notes


def test_plain_application_file_has_no_nesting(tmp_path):
    """The application saved on its own: nesting [] and its own head."""
    import keras

    app = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=11, classifier_activation=None)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    randomize_keras_(app, rng)
    logits = calibrate_last_dense_(app, x)
    path = keras_save(app, tmp_path, "keras", "resnet50-11")
    model = convzoo.create_model("resnet50", num_classes=11).eval()
    report = convzoo.load_weights(model, path)
    assert report.complete and report.nesting == [] and report.head["classes"] == 11
    with torch.no_grad():
        assert max_diff(model(nchw(x)).numpy(), logits) < TOL


@pytest.mark.parametrize("app", ["Xception", pytest.param("ResNet50", marks=pytest.mark.slow)])
def test_weights_only_file_says_it_cannot_show_a_rescaling(wrapped, app):
    """A Rescaling has no weights, so a ``.weights.h5`` holds no trace of its scale: the load works (the
    application and the head are all there) and the report says that preprocessing layers without
    weights cannot be seen in a weights-only file."""
    ref = wrapped(app, "functional_rescaling")
    path = ref.save("weights_h5")
    assert convzoo.create_model(ref.convzoo_name, weights=path).num_classes == ref.classes
    model = convzoo.create_model(ref.convzoo_name, num_classes=ref.classes).eval()
    report = convzoo.load_weights(model, path)
    assert report.complete and report.nesting == ref.nesting
    notes = " ".join(report.notes).lower()
    assert "weights-only" in notes or "preprocessing" in notes, report.notes
    with torch.no_grad():
        out = model(nchw(ref.x / 127.5 - 1.0)).numpy()
    assert max_diff(out, ref.logits) < TOL


REFUSED = [("hidden_dense", "keras", "hidden"), ("flatten", "h5", "flatten"), ("hidden_dense", "weights_h5", "hidden")]
REFUSED += [pytest.param(s, f, w, marks=pytest.mark.slow) for s, w in (("hidden_dense", "hidden"), ("flatten", "flatten"))
            for f in FORMATS if (s, f, w) not in REFUSED]


@pytest.mark.parametrize("structure,fmt,found", REFUSED)
def test_head_convzoo_does_not_have_is_refused(wrapped, structure, fmt, found):
    """``Dense(256, relu) -> Dense(n)`` or ``Flatten -> Dense``: one WeightsError line naming what the file has."""
    ref = wrapped("ResNet50", structure)
    path = ref.save(fmt)
    attempts = (lambda: convzoo.create_model("resnet50", weights=path),
                lambda: convzoo.load_weights(convzoo.create_model("resnet50", num_classes=ref.classes), path))
    for attempt in attempts:
        with pytest.raises(WeightsError) as e:
            attempt()
        msg = str(e.value)
        assert "\n" not in msg and found in msg.lower(), msg


def test_softmax_head_is_reported(wrapped):
    """``Dense(n, activation="softmax")``: the head records the activation; the model gives either the
    logits or their softmax, never something else."""
    ref = wrapped("ResNet50", "softmax")
    path = ref.save("keras")
    model = convzoo.create_model("resnet50", num_classes=ref.classes).eval()
    report = convzoo.load_weights(model, path)
    assert report.head["activation"] == "softmax" and report.head["classes"] == ref.classes
    probs = np.exp(ref.logits) / np.exp(ref.logits).sum(1, keepdims=True)
    for m in (model, convzoo.create_model("resnet50", weights=path).eval()):
        out = logits_of(m, ref)
        assert max_diff(out, ref.logits) < TOL or max_diff(out, probs) < 1e-5


@pytest.mark.parametrize("fmt", FORMATS)
def test_weights_info_json_shows_nesting_head_and_preprocessing(wrapped, capsys, fmt):
    ref = wrapped("Xception", "functional_rescaling")
    code, out, err = cli(capsys, "weights", "info", ref.save(fmt), "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["model"] == "xception"
    assert info["nesting"] == ref.nesting
    assert info["head"]["classes"] == ref.classes
    if fmt != "weights_h5":
        assert info["preprocessing_layers"] == ["Rescaling"]
        assert info["head"]["dropout"] == pytest.approx(0.2)


@pytest.mark.parametrize("fmt", ["h5", pytest.param("keras", marks=pytest.mark.slow)])
def test_weights_info_text_shows_the_nested_model_and_the_head(wrapped, capsys, fmt):
    ref = wrapped("Xception", "functional_rescaling")
    code, out, err = cli(capsys, "weights", "info", ref.save(fmt))
    assert code == 0, err
    assert "model unknown" not in out
    assert ref.model.name in out and re.search(r"\bxception\b", out), out
    head_lines = [line for line in out.splitlines() if "head" in line.lower()]
    assert any(re.search(rf"\b{ref.classes}\b", line) for line in head_lines), out


# §6: verify-import without KERAS_BACKEND


@pytest.fixture(scope="module")
def xception_application_file(tmp_path_factory):
    """keras.applications.Xception with random weights, as a weights-only HDF5 file like the published one."""
    import keras

    model = keras.applications.Xception(weights=None, classifier_activation=None)
    randomize_keras_(model, np.random.default_rng(11))
    return keras_save(model, tmp_path_factory.mktemp("xception-app"), "legacy_weights_h5", "xception")


def test_verify_import_without_keras_backend(xception_application_file):
    """Keras 3 is installed (TensorFlow is not): verify-import defaults the backend to torch."""
    done = subprocess.run([sys.executable, "-m", "convzoo", "verify-import", str(xception_application_file),
                           "--model", "xception", "--json"], capture_output=True, text=True, timeout=600,
                          env=subprocess_env(KERAS_BACKEND=None))
    assert done.returncode == 0, done.stderr
    assert "not installed" not in done.stderr and "tensorflow" not in done.stderr.lower()
    assert done.stdout.strip()
