"""Issue 13 §1, beyond the acceptance examples: other variants of "a Keras model that contains an application".
Nested twice (a functional model around a Sequential around the application, with the Keras guide's
data-augmentation Sequential and Rescaling + Normalization before it, Dropout, Dense and a separate softmax
Activation after it), the legacy weights-only layout of such a model, heads and layers convzoo does not have
(refused in one line naming them), pooling that differs from the model's, headless files, and the file-head
API. Expected values come from the Keras models (torch backend) built here with random weights; the layers
convzoo drops as identities are checked against Keras itself."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import convzoo  # noqa: E402
from convzoo.data.transforms import ImageTransform  # noqa: E402
from convzoo.errors import WeightsError  # noqa: E402
from convzoo.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from convzoo.weights import FileHead, file_head  # noqa: E402
from convzoo.weights.keras_model import INFERENCE_IDENTITY  # noqa: E402
from user_files import TOL, cli, keras_run, keras_save, max_diff, nchw, randomize_keras_  # noqa: E402

SIZE = 64
NORM_MEAN, NORM_VAR = [0.5, 0.4, 0.3], [0.04, 0.05, 0.06]
# Pooled features are not logits (TOL is the promise on logits, which are of magnitude ~1-3 here): their
# magnitude follows the random weights (~100-200 here), and float32 sums taken in another order differ by a
# few 1e-6 of it. They are compared relative to their largest value, with TOL as the floor.
FEATURES_RTOL = 1e-5


def features_close(got: np.ndarray, want: np.ndarray) -> bool:
    return max_diff(got, want) <= max(TOL, FEATURES_RTOL * float(np.abs(want).max()))


def _resnet50(**kwargs):
    import keras

    return keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3), **kwargs)


def _double_nested():
    """Input -> data_augmentation (Sequential) -> Rescaling -> Normalization -> backbone (Sequential of the
    application and GlobalMaxPooling2D) -> Dropout(0.25) -> Dense(7) -> Activation('softmax')."""
    import keras
    from keras import layers

    augmentation = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)],
                                    name="data_augmentation")
    backbone = keras.Sequential([_resnet50(include_top=False), layers.GlobalMaxPooling2D()], name="backbone")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Normalization(mean=NORM_MEAN, variance=NORM_VAR)(layers.Rescaling(1 / 255.0)(augmentation(inputs)))
    x = layers.Dense(7, name="classes")(layers.Dropout(0.25)(backbone(x, training=False)))
    return keras.Model(inputs, layers.Activation("softmax")(x), name="outer")


def _randomized(model, seed: int) -> tuple[object, np.ndarray, np.ndarray]:
    """The model with random weights, a raw-pixel input and the pre-activation logits of its last Dense."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    model(x[:1], training=False)
    randomize_keras_(model, rng)
    dense = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense))
    return model, x, keras_run(keras.Model(model.inputs[0], dense.output), x)


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    model, x, logits = _randomized(_double_nested(), 1)
    folder = tmp_path_factory.mktemp("double")
    return {fmt: keras_save(model, folder, fmt, f"double-{fmt}") for fmt in ("h5", "keras", "weights_h5",
                                                                               "legacy_weights_h5")}, x, logits


def _logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(ImageTransform.from_model(model).normalize(nchw(x))).numpy()


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_nested_twice_with_augmentation_normalization_and_softmax(double, fmt):
    files, x, logits = double
    model = convzoo.create_model("resnet50", weights=files[fmt]).eval()
    assert (model.num_classes, model.global_pool, model.drop_rate) == (7, "max", 0.25)
    assert max_diff(_logits(model, x), logits) < TOL
    assert model.weights_meta.preprocessing == "custom"  # (x/255 - mean) / sqrt(var): no Keras mode
    report = convzoo.load_weights(convzoo.create_model("resnet50", num_classes=7, global_pool="max"), files[fmt])
    assert report.nesting == ["outer", "backbone", "resnet50"]
    assert report.head == dict(classes=7, pooling="max", dropout=0.25, activation="softmax", layer="classes")
    notes = " ".join(report.notes)
    assert "RandomFlip" in notes and "RandomRotation" in notes and "folded" in notes


def test_nested_twice_weights_only_files_say_what_they_cannot_show(double):
    """Keras 3's weights-only file keeps the classes (so the max pooling) but not the Rescaling and
    Normalization settings; the legacy weights-only layout flattens the nested models and keeps neither."""
    files, x, logits = double
    for fmt, pooling in (("weights_h5", "max"), ("legacy_weights_h5", None)):
        assert file_head(files[fmt], "resnet50") == FileHead(7, pooling, None, None, "classes")
        model = convzoo.create_model("resnet50", num_classes=7, global_pool="max").eval()
        report = convzoo.load_weights(model, files[fmt])
        assert report.complete and report.nesting[-1] in ("resnet50", "backbone")
        assert any("not folded" in n for n in report.notes), report.notes
        raw = nchw(((x / 255.0 - NORM_MEAN) / np.sqrt(NORM_VAR)).astype("float32"))
        with torch.no_grad():
            assert max_diff(model(raw).numpy(), logits) < TOL


def test_rescaling_and_normalization_equal_to_a_keras_mode_are_recorded_as_that_mode(tmp_path):
    """Rescaling(1/255) then Normalization with the ImageNet mean and variance is Keras' 'torch' mode."""
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Normalization(mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD])(
        layers.Rescaling(1 / 255.0)(inputs))
    x = layers.Dense(4)(layers.GlobalAveragePooling2D()(_resnet50(include_top=False)(x)))
    model, px, logits = _randomized(keras.Model(inputs, x), 2)
    loaded = convzoo.create_model("resnet50", weights=keras_save(model, tmp_path, "keras", "torch-mode")).eval()
    assert loaded.weights_meta.preprocessing == "torch"
    assert max_diff(_logits(loaded, px), logits) < TOL


def _refused(tmp_path, model, *fragments: str, fmt: str = "keras") -> str:
    path = keras_save(model, tmp_path, fmt, "refused")
    for attempt in (lambda: convzoo.create_model("resnet50", weights=path),
                    lambda: convzoo.load_weights(convzoo.create_model("resnet50"), path)):
        with pytest.raises(WeightsError) as e:
            attempt()
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 300 + len(str(path)), msg
        assert all(f in msg for f in fragments), msg
    return msg


def test_layer_with_an_effect_before_the_application_is_refused(tmp_path):
    import keras
    from keras import layers

    inputs = keras.Input((80, 80, 3))
    x = layers.Resizing(SIZE, SIZE, name="resize")(inputs)
    x = layers.Dense(3)(layers.GlobalAveragePooling2D()(_resnet50(include_top=False)(x)))
    _refused(tmp_path, keras.Model(inputs, x), "Resizing 'resize'", "before the application")


def test_dense_on_the_unpooled_feature_map_is_refused(tmp_path):
    import keras
    from keras import layers

    _refused(tmp_path, keras.Sequential([_resnet50(include_top=False), layers.Dense(3, name="per_position")]),
             "'per_position'", "unpooled")


def test_dense_after_the_applications_own_classifier_is_refused(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([_resnet50(classes=10), layers.Dense(3, name="relabel")])
    _refused(tmp_path, model, "'predictions'", "'relabel'", fmt="h5")


def test_two_outputs_are_refused(tmp_path):
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3))
    features = layers.GlobalAveragePooling2D()(_resnet50(include_top=False)(inputs))
    model = keras.Model(inputs, [layers.Dense(3, name="a")(features), layers.Dense(2, name="b")(features)])
    _refused(tmp_path, model, "2 outputs", "'a'", "'b'")


@pytest.fixture(scope="module")
def max_pooled(tmp_path_factory):
    import keras
    from keras import layers

    model, x, logits = _randomized(keras.Sequential([_resnet50(include_top=False, pooling="max"),
                                                     layers.Dense(6)]), 3)
    return keras_save(model, tmp_path_factory.mktemp("max"), "weights_h5", "max"), x, logits


def test_classifier_behind_another_pooling_is_refused_and_fine_tuning_is_told(max_pooled):
    path, _, _ = max_pooled
    with pytest.raises(WeightsError, match=r"max pooling, the model pools with avg; build it with global_pool='max'"):
        convzoo.load_weights(convzoo.create_model("resnet50", num_classes=6), path)
    with pytest.warns(UserWarning, match="classifier/auxiliary head not loaded"):
        report = convzoo.load_weights(convzoo.create_model("resnet50", num_classes=3), path)
    assert any("pools with max" in n for n in report.notes), report.notes


def test_explicit_num_classes_keeps_fine_tuning_and_the_files_pooling(max_pooled):
    path, _, _ = max_pooled
    with pytest.warns(UserWarning, match="classifier/auxiliary head not loaded"):
        model = convzoo.create_model("resnet50", weights=path, num_classes=3)
    assert model.num_classes == 3 and model.global_pool == "max"


def test_headless_file_builds_a_model_without_classifier(tmp_path):
    """``Sequential([base, GlobalAveragePooling2D()])``: no classifier, so create_model gives the pooled
    features, equal to the Keras model's output."""
    import keras
    from keras import layers

    model = keras.Sequential([_resnet50(include_top=False), layers.GlobalAveragePooling2D()])
    rng = np.random.default_rng(4)
    x = rng.uniform(-100, 100, (2, SIZE, SIZE, 3)).astype("float32")
    model(x[:1])
    randomize_keras_(model, rng)
    path = keras_save(model, tmp_path, "h5", "features")
    assert file_head(path, "resnet50") == FileHead(0, "avg")
    loaded = convzoo.create_model("resnet50", weights=path).eval()
    assert loaded.num_classes == 0
    with torch.no_grad():
        got, want = loaded(nchw(x)).numpy(), keras_run(model, x)
    assert features_close(got, want), (max_diff(got, want), float(np.abs(want).max()))


@pytest.mark.parametrize("name", INFERENCE_IDENTITY)
def test_layers_left_out_do_nothing_at_inference_in_keras(name):
    """Every layer convzoo leaves out as an identity is one in Keras at inference."""
    import keras

    args = {"RandomFlip": (), "RandomRotation": (0.2,), "RandomZoom": (0.2,), "RandomTranslation": (0.2, 0.2),
            "RandomContrast": (0.5,), "RandomBrightness": (0.5,), "GaussianNoise": (0.5,),
            "GaussianDropout": (0.5,)}.get(name, (0.5,))
    layer = getattr(keras.layers, name)(*args)
    x = np.random.default_rng(5).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    assert max_diff(keras_run(layer, x), x) == 0


def test_weights_info_text_of_a_nested_file(double, capsys):
    files, _, _ = double
    code, out, err = cli(capsys, "weights", "info", files["keras"])
    assert code == 0, err
    assert "outer > backbone > resnet50" in out
    assert "7 classes ('classes'), max pooling, dropout 0.25, softmax" in out
    assert "Rescaling, Normalization" in out
    code, out, err = cli(capsys, "weights", "info", files["weights_h5"], "--json")
    info = json.loads(out)
    assert info["model"] == "resnet50" and info["head"]["pooling"] == "max"
    # a Keras 3 weights-only file keeps the layers' classes but not their order
    assert sorted(info["preprocessing_layers"]) == ["Normalization", "RandomFlip", "RandomRotation", "Rescaling"]


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """The application's layers in the file's own model: ``Model(inputs, Dense(GlobalMaxPooling2D()(
    base.output)))`` with the base built on ``Rescaling(1/127.5, offset=-1)(inputs)``."""
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3))
    base = _resnet50(include_top=False, input_tensor=layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    x = layers.Dense(5, name="my_head")(layers.Dropout(0.1)(layers.GlobalMaxPooling2D()(base.output)))
    model, x, logits = _randomized(keras.Model(inputs, x), 6)
    folder = tmp_path_factory.mktemp("flat")
    return {fmt: keras_save(model, folder, fmt, f"flat-{fmt}") for fmt in ("h5", "keras", "weights_h5")}, x, logits


@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_head_added_to_the_applications_own_model(flat, fmt):
    files, x, logits = flat
    model = convzoo.create_model("resnet50", weights=files[fmt]).eval()
    assert (model.num_classes, model.global_pool, model.drop_rate) == (5, "max", 0.1)
    assert model.weights_meta.preprocessing == "tf"  # Rescaling(1/127.5, offset=-1) is Keras' 'tf' mode
    assert max_diff(_logits(model, x), logits) < TOL
    report = convzoo.load_weights(convzoo.create_model("resnet50", num_classes=5, global_pool="max"), files[fmt])
    assert report.complete and report.nesting == [] and report.head["layer"] == "my_head"


def test_head_added_to_the_applications_own_model_weights_only(flat):
    files, x, logits = flat
    assert file_head(files["weights_h5"], "resnet50") == FileHead(5, "max", None, None, "my_head")
    model = convzoo.create_model("resnet50", weights=files["weights_h5"]).eval()
    with torch.no_grad():
        assert max_diff(model(nchw(x) / 127.5 - 1).numpy(), logits) < TOL
