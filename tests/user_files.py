"""The files and workflows users really have (issue 13), built by the references' own writers: Keras models
that wrap an application (Keras 3 on the torch backend, saved by ``model.save`` / ``save_weights``), small
photo folders, and the command-line helpers the issue-13 test modules share.

Every model here has random weights: BatchNorm statistics and the classifier are randomised and the
classifier is scaled so that the logits spread over several units, so that a wrongly mapped tensor, a
wrong pooling or a wrong normalisation changes the answer by far more than the tolerance.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from convzoo.cli import main  # noqa: E402

TOL = 1e-4
LOGIT_STD = 3.0
SRC = Path(__file__).resolve().parents[1] / "src"


# Keras


def keras_layers(model) -> Iterator[Any]:
    """Every layer of a Keras model, descending into nested models (an application inside a Sequential)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from keras_layers(layer)
        else:
            yield layer


def randomize_keras_(model, rng: np.random.Generator) -> None:
    """Random BatchNorm scales and offsets, moving statistics of a random batch (so that every layer passes
    on the input's variation instead of its biases), and random Dense layers; nested models included."""
    import keras

    for layer in keras_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for w in layer.weights:
                role, shape = w.path.rsplit("/", 1)[-1], tuple(w.shape)
                low_high = (0.5, 1.5) if role in ("gamma", "moving_variance") else None
                values.append(rng.uniform(*low_high, shape) if low_high else rng.normal(0.0, 0.1, shape))
            layer.set_weights([v.astype("float32") for v in values])
        elif isinstance(layer, keras.layers.Dense):
            fan_in, units = layer.weights[0].shape
            layer.set_weights([rng.normal(0.0, 1.0 / np.sqrt(fan_in), (fan_in, units)).astype("float32"),
                               rng.normal(0.0, 0.1, (units,)).astype("float32")])
    for app in _applications(model):
        _batch_statistics_(app, rng.uniform(-1.0, 1.0, (4, *app.input_shape[1:])).astype("float32"), rng)


def _applications(model) -> list:
    """The Keras models holding the BatchNorm layers: the nested applications, else ``model`` itself."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested or [model]


def _batch_statistics_(app, x: np.ndarray, rng: np.random.Generator) -> None:
    """Set every BatchNorm's moving mean and variance to those of its input for the batch ``x`` (one
    training-mode call with momentum 0), the variances then scaled by U(1.25, 2.5): the outputs still vary
    with the input by tenths of a logit, while float32 rounding stays near 1e-5."""
    import keras

    norms = [layer for layer in keras_layers(app) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [n.momentum for n in norms]
    for n in norms:
        n.momentum = 0.0
    app(x, training=True)
    for n, m in zip(norms, momenta):
        n.momentum = m
        weights = n.get_weights()
        weights[-1] = (weights[-1] * rng.uniform(1.25, 2.5, weights[-1].shape)).astype("float32")
        n.set_weights(weights)


def keras_run(model, x: np.ndarray) -> np.ndarray:
    """``model(x, training=False)`` as a float32 numpy array (x: NHWC)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float32)


def pre_activation(model, x: np.ndarray) -> np.ndarray:
    """The outputs of ``model``'s last Dense layer before its activation (the logits), for NHWC ``x``."""
    import keras

    dense = model.layers[-1]
    assert isinstance(dense, keras.layers.Dense), dense
    features = keras_run(keras.Model(model.inputs[0], dense.input), x)
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w)) for w in dense.weights)
    return features @ kernel + bias


def calibrate_last_dense_(model, x: np.ndarray, std: float = LOGIT_STD) -> np.ndarray:
    """Scale the last Dense layer so that its logits for ``x`` have standard deviation ``std``; returns them."""
    dense = model.layers[-1]
    logits = pre_activation(model, x)
    scale = std / float(logits.std())
    dense.set_weights([w * scale for w in dense.get_weights()])
    return logits * scale


def keras_save(model, folder: Path, fmt: str, stem: str) -> Path:
    """Save with Keras' own writers: ``h5`` = legacy whole model (``model.save("x.h5")``), ``keras`` = the
    ``.keras`` archive, ``weights_h5`` = ``save_weights("x.weights.h5")``, ``legacy_weights_h5`` = the
    weights-only HDF5 layout of the published application files."""
    if fmt == "h5":
        path = folder / f"{stem}.h5"
        model.save(path)
    elif fmt == "keras":
        path = folder / f"{stem}.keras"
        model.save(path)
    elif fmt == "weights_h5":
        path = folder / f"{stem}.weights.h5"
        model.save_weights(path)
    elif fmt == "legacy_weights_h5":
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        path = folder / f"{stem}.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    else:
        raise ValueError(fmt)
    return path


# Keras models that contain an application


# Keras application -> (convzoo model, the Keras model's name, input size used here)
KERAS_APPS = {
    "Xception": ("xception", "xception", 150),  # 150x150 as in Keras' transfer-learning guide
    "ResNet50": ("resnet50", "resnet50", 96),
    "ResNet50V2": ("resnet50v2", "resnet50v2", 96),
    "InceptionV3": ("inception_v3_keras", "inception_v3", 96),
}
NORM_MEAN = np.array([0.47, 0.45, 0.41], np.float32)
NORM_VAR = np.array([0.07, 0.06, 0.08], np.float32)


@dataclass
class Wrapped:
    """A Keras model wrapping an application, and what the file it is saved to must load as."""

    model: Any  # the outer Keras model
    app: str
    structure: str
    classes: int
    x: np.ndarray  # NHWC input of the outer model: raw pixels 0..255 when ``raw_pixels``
    logits: np.ndarray  # the outer model's pre-activation logits for ``x``
    raw_pixels: bool  # the model normalises the pixels itself (Rescaling / Normalization layers)
    pooling: str  # 'avg' or 'max'
    dropout: float | None
    activation: str
    preprocessing_layers: list[str]
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def convzoo_name(self) -> str:
        return KERAS_APPS[self.app][0]

    @property
    def base_name(self) -> str:
        return KERAS_APPS[self.app][1]

    @property
    def nesting(self) -> list[str]:
        return [self.model.name, self.base_name]

    def save(self, fmt: str) -> Path:
        if fmt not in self.files:
            self.files[fmt] = keras_save(self.model, self.folder, fmt, f"{self.app}-{self.structure}")
        return self.files[fmt]


def _base(app: str, **kwargs):
    import keras

    size = KERAS_APPS[app][2]
    return getattr(keras.applications, app)(weights=None, include_top=False, input_shape=(size, size, 3), **kwargs)


def _outer(app: str, structure: str, classes: int):
    """The outer Keras model of ``structure`` around the application ``app``; returns (model, whether it
    takes raw pixels, pooling, dropout rate, Dense activation, preprocessing layer class names)."""
    import keras
    from keras import layers

    size = KERAS_APPS[app][2]
    inputs = keras.Input((size, size, 3))
    if structure == "sequential":
        return keras.Sequential([_base(app), layers.GlobalAveragePooling2D(), layers.Dense(classes)]), \
            False, "avg", None, "linear", []
    if structure == "softmax":
        return keras.Sequential([_base(app), layers.GlobalAveragePooling2D(),
                                 layers.Dense(classes, activation="softmax")]), False, "avg", None, "softmax", []
    if structure == "global_max":
        return keras.Sequential([_base(app), layers.GlobalMaxPooling2D(), layers.Dense(classes)]), \
            False, "max", None, "linear", []
    if structure == "pooling_avg":
        return keras.Sequential([_base(app, pooling="avg"), layers.Dense(classes)]), False, "avg", None, "linear", []
    if structure == "pooling_max":
        out = layers.Dense(classes)(_base(app, pooling="max")(inputs))
        return keras.Model(inputs, out), False, "max", None, "linear", []
    if structure == "functional_rescaling":  # Keras' transfer-learning guide
        x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        x = layers.GlobalAveragePooling2D()(_base(app)(x, training=False))
        out = layers.Dense(classes)(layers.Dropout(0.2)(x))
        return keras.Model(inputs, out), True, "avg", 0.2, "linear", ["Rescaling"]
    if structure == "normalization":
        x = layers.Rescaling(1 / 255.0)(inputs)
        x = layers.Normalization(mean=NORM_MEAN, variance=NORM_VAR)(x)
        x = layers.GlobalAveragePooling2D()(_base(app)(x, training=False))
        out = layers.Dense(classes)(layers.Dropout(0.3)(x))
        return keras.Model(inputs, out), True, "avg", 0.3, "linear", ["Rescaling", "Normalization"]
    if structure == "adapted_normalization":
        norm = layers.Normalization()
        norm.adapt(np.random.default_rng(7).uniform(0, 255, (8, size, size, 3)).astype("float32"))
        x = layers.GlobalAveragePooling2D()(_base(app)(norm(inputs), training=False))
        return keras.Model(inputs, layers.Dense(classes)(x)), True, "avg", None, "linear", ["Normalization"]
    if structure == "augmentation":
        x = layers.RandomRotation(0.1)(layers.RandomFlip("horizontal")(inputs))
        x = layers.GlobalAveragePooling2D()(_base(app)(x, training=False))
        return keras.Model(inputs, layers.Dense(classes)(x)), False, "avg", None, "linear", []
    if structure == "hidden_dense":
        return keras.Sequential([_base(app), layers.GlobalAveragePooling2D(),
                                 layers.Dense(256, activation="relu", name="hidden"),
                                 layers.Dense(classes, name="logits")]), False, "avg", None, "linear", []
    if structure == "flatten":
        return keras.Sequential([_base(app), layers.Flatten(), layers.Dense(classes)]), \
            False, "avg", None, "linear", []
    raise ValueError(structure)


def build_wrapped(app: str, structure: str, classes: int, folder: Path) -> Wrapped:
    """Build, randomise and calibrate ``structure`` around ``app``; its reference logits on a fixed input."""
    model, raw, pooling, dropout, activation, pre = _outer(app, structure, classes)
    size = KERAS_APPS[app][2]
    rng = np.random.default_rng(sum(map(ord, app + structure)))
    x = (rng.uniform(0, 255, (2, size, size, 3)) if raw else rng.uniform(-1, 1, (2, size, size, 3))).astype("float32")
    model(x[:1], training=False)
    randomize_keras_(model, rng)
    logits = calibrate_last_dense_(model, x)
    return Wrapped(model, app, structure, classes, x, logits, raw, pooling, dropout, activation, pre, folder)


def wrapped_cache(tmp_path_factory) -> Callable[[str, str], Wrapped]:
    """A getter building each (application, structure) once."""
    cache: dict[tuple[str, str], Wrapped] = {}

    def get(app: str, structure: str) -> Wrapped:
        if (app, structure) not in cache:
            classes = 5 + len(cache) * 3
            cache[app, structure] = build_wrapped(app, structure, classes, tmp_path_factory.mktemp(app))
        return cache[app, structure]

    return get


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def nhwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().permute(0, 2, 3, 1).numpy())


def max_diff(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# Photos


def write_photos(folder: Path, colours: dict[str, list[tuple[int, int, int]]], size: int = 48) -> list[Path]:
    """One single-colour JPEG per colour, in a subfolder per key (the class folders of an image folder).

    Single-colour images look the same after any resize or crop, so every verb sees the same pixels
    whatever its resizing; only the normalisation and the model decide the answer."""
    paths = []
    for sub, rgbs in colours.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i, rgb in enumerate(rgbs):
            paths.append(folder / sub / f"img{i:02d}.jpg")
            Image.new("RGB", (size, size), rgb).save(paths[-1], quality=95)
    return paths


def imagenet_names() -> set[str]:
    """Every wnid and label of the ImageNet class index shipped with convzoo."""
    index = json.loads((resources.files("convzoo") / "resources" / "imagenet_class_index.json").read_text())
    return {s for pair in index.values() for s in pair}


# Command line


def cli(capsys, *argv: Any) -> tuple[int, str, str]:
    """``convzoo ARGV`` in this process: (exit code, stdout, stderr); a usage error counts as exit 2."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit code 2 and one ``convzoo: error:`` line on stderr containing every fragment; returns the line."""
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def subprocess_env(**changes: str | None) -> dict[str, str]:
    """This environment with this tree's ``src`` first on PYTHONPATH, one thread, and ``changes`` applied
    (None removes a variable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
