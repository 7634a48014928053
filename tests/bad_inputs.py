"""What every error of the command line must look like (issue 14), a harness that shows what a terminal
would show for one command, and small artefacts (a trained run, a checkpoint, crafted files) to feed it.

The contract: exit code 2; nothing on stdout; stderr exactly one line that starts ``convzoo: error: ``, is
at most 300 characters long (the test's temporary folder counted as one character: a user's path is not
the message's fault), holds no traceback, warning or library internals, never names a temporary file,
and says what was expected and what was found.

Everything goes through the command line: ``convzoo.cli.main(argv)`` in this process, or
``python -m convzoo`` in a fresh one. The in-process harness shows what a fresh process would print: Python
warnings are recorded and shown (as a plain interpreter shows them), and log records reach stderr the way
they do when no logging is configured (pytest's own log capture is set aside for the call).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from string import Template
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

import convzoo
from convzoo.cli import main

PREFIX = "convzoo: error: "
MAX_CHARS = 300
# A valid range, written as an interval ("[1, 65536]", "(0, 1)", "[0, 2**32 - 1]") or one-sided.
RANGE = re.compile(r"[\[(]\s*-?\d[\d_,.]*\s*,\s*[^\])]+[\])]|\bat (least|most) -?\d|[<>]=?\s*-?\d|\bpositive\b"
                   r"|\bbetween -?\d", re.IGNORECASE)
# A path that is not there, said so ("no such file", "found nothing", "no run folder at ...").
ABSENT = re.compile(r"no such|not found|found nothing|does not exist|nothing (at|there)|\bno (run )?(file|folder)\b",
                    re.IGNORECASE)
# Text that belongs to a crash, a warning or a library's internals, never to one of convzoo's own lines.
FORBIDDEN = ("Traceback", 'File "', "site-packages", "Warning", "warnings.warn", "enforce fail", "inline_container",
             "alloc_cpu", "miniz", "Unpickler", "_pickle", "weights_only", "torch.load", "[Errno", "usage:",
             "not supported between", "object has no attribute", "codec can't decode")
# Names of temporary files: an error must name the user's path instead.
TEMPORARY = re.compile(r"\.tmp\b|\.part\b|\.old\b|\btmp[0-9a-z_]{6,}\b")
# What a plain interpreter does not show (its default warning filters).
_HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)

# The tiny Xception of the training tests: two stem convs and one residual block.
TINY = '{"stem": [[8, 2], [16, 1]], "blocks": [{"widths": [16, 16]}]}'
CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# A fresh process imports the convzoo this process imports, from any working folder.
_SOURCE = str(Path(convzoo.__file__).resolve().parents[1])
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "KERAS_BACKEND": "torch", "PYTHONWARNINGS": "",
       "PYTHONPATH": os.pathsep.join([_SOURCE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}


@dataclass
class Shown:
    """What a terminal shows for one command: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str


def _exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def run_in_process(argv: Sequence[str], capsys) -> Shown:
    """``convzoo ARGV`` through ``convzoo.cli.main`` in this process (see the module docstring)."""
    capsys.readouterr()
    root = logging.getLogger()
    handlers, threads = root.handlers[:], torch.get_num_threads()
    root.handlers = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for category in _HIDDEN_WARNINGS:
                warnings.simplefilter("ignore", category)
            crash = ""
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = _exit_code(exc)
            except Exception:  # what the interpreter prints for an uncaught exception, and its exit code
                code, crash = 1, traceback.format_exc()
    finally:
        root.handlers = handlers
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, "") for w in caught)
    return Shown(code, out, shown + err + crash)


def run_in_fresh_process(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None,
                         timeout: float = 300) -> Shown:
    """``python -m convzoo ARGV`` in a new process (one thread; ``env`` added to the environment)."""
    done = subprocess.run([sys.executable, "-m", "convzoo", *argv], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=cwd, timeout=timeout)
    return Shown(done.returncode, done.stdout, done.stderr)


def error_line(shown: Shown, *expected: str | re.Pattern, quiet: bool = True) -> str:
    """Check ``shown`` against the one-line error contract and return the line. Each of ``expected`` is a
    text the line must contain (case-insensitive) or a regular expression it must match. ``quiet=False``
    allows stdout (for a failure that comes after work was reported, such as a full disk during training)."""
    context = f"exit {shown.code}\nstdout: {shown.out[-2000:]!r}\nstderr: {shown.err[-4000:]!r}"
    assert shown.code == 2, context
    assert not quiet or shown.out == "", f"something was printed before the error\n{context}"
    lines = shown.err.splitlines()
    assert len(lines) == 1 and shown.err.endswith("\n"), f"expected exactly one line on stderr\n{context}"
    line = lines[0]
    assert line.startswith(PREFIX), context
    # The folders of a path count as one character: the length of the user's paths is not the message's.
    length = len(re.sub(r"(?:/[^/\s'\"]+)+/", "~/", line))
    assert length <= MAX_CHARS, f"{length} characters, folders of paths not counted (at most {MAX_CHARS})\n{line}"
    for text in FORBIDDEN:
        assert text not in line, f"{text!r} in the message\n{line}"
    assert not TEMPORARY.search(line), f"the message names a temporary file\n{line}"
    for item in expected:
        if isinstance(item, re.Pattern):
            assert item.search(line), f"expected a match of {item.pattern!r}\n{line}"
        else:
            assert item.lower() in line.lower(), f"expected {item!r} in the message\n{line}"
    return line


# --- artefacts ---------------------------------------------------------------------------------------------

def write_cifar_bin(root: Path, n_train: int, n_test: int = 40, seed: int = 0) -> Path:
    """A CIFAR-10 binary folder (``data_batch_1..5.bin``, ``test_batch.bin``, ``batches.meta.txt``) of
    seeded random images: ``n_train`` over the five training batches, ``n_test`` in the test batch."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)

    def records(n: int) -> bytes:
        labels = np.arange(n, dtype=np.uint8)[:, None] % 10
        return np.concatenate([labels, rng.integers(0, 256, (n, 3072), dtype=np.uint8)], 1).tobytes()

    for i in range(5):
        (root / f"data_batch_{i + 1}.bin").write_bytes(records(n_train // 5))
    (root / "test_batch.bin").write_bytes(records(n_test))
    (root / "batches.meta.txt").write_text("\n".join(CLASSES10) + "\n")
    return root


def train_argv(data: str | Path, out: str | Path, epochs: int = 1, *extra: str) -> list[str]:
    """``convzoo train`` of the tiny Xception on ``data`` into ``out`` on the CPU (a second per 1,000 images)."""
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "32",
            "--set", f"model_kwargs={TINY}", "--device", "cpu", *extra]


class Payload:
    """Pickles as a call of ``func(*args)``: what a crafted file runs when it is unpickled."""

    def __init__(self, func: object, *args: object) -> None:
        self.call = (func, args)

    def __reduce__(self) -> tuple:
        return self.call


def write_keras2_h5(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> Path:
    """A Keras 2 style weights file (``layer_names``, per-layer ``weight_names`` with ``:0``)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        f.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/{role}:0".encode() for role in weights])
            for role, array in weights.items():
                g.create_dataset(f"{name}/{role}:0", data=array)
    return path


class Artefacts:
    """Files the bad-input tests share, each made on first use in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @cached_property
    def image(self) -> Path:
        """A 48x40 RGB photo-like PNG."""
        rng = np.random.default_rng(0)
        path = self.root / "photo.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        return path

    @cached_property
    def cifar(self) -> Path:
        """A CIFAR-10 binary folder: 200 training images, 40 test images."""
        return write_cifar_bin(self.root / "cifar", 200)

    @cached_property
    def run(self) -> Path:
        """A finished two-epoch run of the tiny Xception on :attr:`cifar`."""
        out = self.root / "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(train_argv(self.cifar, out, 2)) == 0
        return out

    @cached_property
    def checkpoint(self) -> Path:
        """The run's best checkpoint file (10 CIFAR classes, 32x32)."""
        return self.run / "best" / "model.safetensors"

    @cached_property
    def tiny_weights(self) -> Path:
        """A plain safetensors state dict that fits ``--model xception_cifar_tiny`` (10 classes)."""
        from safetensors.torch import save_file

        path = self.root / "tiny.safetensors"
        save_file(convzoo.create_model("xception_cifar_tiny").state_dict(), path)
        return path

    @cached_property
    def inception_keras(self) -> Path:
        """keras.applications.InceptionV3's weights (random), saved by Keras 3."""
        import keras

        path = self.root / "inception_v3.weights.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keras.applications.InceptionV3(weights=None).save_weights(str(path))
        return path

    @cached_property
    def small_h5(self) -> Path:
        """A small Keras 2 style weights file of one convolution (a well-formed HDF5 file to damage)."""
        kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 32)).astype(np.float32)
        return write_keras2_h5(self.root / "small.h5", {"block1_conv1": {"kernel": kernel}})

    @cached_property
    def evil_pth(self) -> Path:
        """A torch file whose unpickling would run ``os.system('touch MARKER')``."""
        path = self.root / "evil.pth"
        torch.save({"conv1.weight": torch.zeros(1), "x": Payload(os.system, f"touch {self.marker}")}, path)
        return path

    @property
    def marker(self) -> Path:
        """The file a crafted pickle's payload would create."""
        return self.root / "pwned"


@dataclass
class Ctx(Mapping):
    """One row's world: its own empty folder ``tmp`` and the shared :class:`Artefacts`. As a mapping it
    gives the paths that ``$name`` placeholders in a row stand for: ``$tmp`` and any artefact."""

    tmp: Path
    artefacts: Artefacts

    def __getitem__(self, key: str) -> str:
        if key == "tmp":
            return str(self.tmp)
        if key.startswith("_") or not hasattr(Artefacts, key):
            raise KeyError(key)
        return str(getattr(self.artefacts, key))

    def __iter__(self) -> Iterator[str]:
        return iter(["tmp"])

    def __len__(self) -> int:
        return 1

    def fill(self, text: str) -> str:
        """``text`` with its ``$name`` placeholders replaced."""
        return Template(text).substitute(self)

    def copy_run(self, name: str = "run") -> Path:
        """A copy of the shared run at ``tmp/name``, to damage."""
        return Path(shutil.copytree(self.artefacts.run, self.tmp / name))


Setup = Callable[[Ctx], object]


@dataclass(frozen=True)
class Case:
    """One bad input: the verb it goes to, what is wrong, the arguments (``$name`` placeholders, see
    :class:`Ctx`), what the error line must contain (texts with placeholders, or regular expressions),
    files to make first, environment variables, and whether to try it in a fresh process too."""

    verb: str
    what: str
    argv: tuple[str, ...]
    expect: tuple[str | re.Pattern, ...]
    setup: Setup | None = None
    env: tuple[tuple[str, str], ...] = ()
    fresh: bool = False

    @property
    def id(self) -> str:
        return f"{self.verb}/{self.what}"


def files_below(folder: Path) -> set[Path]:
    """Every file (not folder) below ``folder``."""
    return {p for p in folder.rglob("*") if not p.is_dir()}


# --- setup helpers (each makes files in the row's folder) ------------------------------------------------

def make(files: dict[str, bytes | str | None]) -> Setup:
    """Files in ``tmp``, by relative path: bytes or text content, or None for a folder."""

    def setup(ctx: Ctx) -> None:
        for name, content in files.items():
            path = ctx.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                path.mkdir(exist_ok=True)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    return setup


NOISE = bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8))
TEXT = "this is not what you think it is\n"


def truncated(artefact: str, name: str, keep: float = 0.5) -> Setup:
    """``tmp/name``: the first ``keep`` of the artefact's bytes."""

    def setup(ctx: Ctx) -> None:
        data = Path(ctx[artefact]).read_bytes()
        (ctx.tmp / name).write_bytes(data[:int(len(data) * keep)])

    return setup


def pickled(name: str, obj: object, protocol: int = 2) -> Setup:
    """``tmp/name``: ``obj`` pickled with ``protocol``."""

    def setup(ctx: Ctx) -> None:
        (ctx.tmp / name).write_bytes(pickle.dumps(obj, protocol=protocol))

    return setup


def run_copy(damage: Callable[[Path], object] | None = None, name: str = "run") -> Setup:
    """``tmp/name``: a copy of the shared run, then ``damage(copy)``."""

    def setup(ctx: Ctx) -> None:
        run = ctx.copy_run(name)
        if damage is not None:
            damage(run)

    return setup
