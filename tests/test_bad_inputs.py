"""Issue 14: every bad input, every verb: one clear line. A table of bad inputs per verb (adding a verb means
adding rows), each checked against the one-line error contract of :mod:`bad_inputs`; recipe numbers checked
when they are set; messages that mislead (permissions, MD5 advice); output folders."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from bad_inputs import (ABSENT, NOISE, RANGE, TEXT, Artefacts, Case, Ctx, Payload, error_line, files_below, make,
                        pickled, run_copy, run_in_fresh_process, run_in_process, train_argv, truncated, write_cifar_bin)

# --- rows ----------------------------------------------------------------------------------------------------

PREDICT = ("predict", "--weights", "$checkpoint", "$image", "--device", "cpu")
EXPORT = ("export", "$checkpoint", "--format", "onnx")
BENCH_CHEAP = ("--against", "", "--runtime", "eager", "--warmup", "0", "--repeats", "1", "--batch-size", "1",
               "--device", "cpu")
BENCH = ("bench", "xception_cifar_tiny", *BENCH_CHEAP)
TRAIN = tuple(train_argv("$cifar", "$tmp/out"))
EVAL = ("eval", "$run", "--device", "cpu")
CONVERT = ("weights", "convert", "$tiny_weights", "$tmp/out.safetensors", "--model", "xception_cifar_tiny")
VERIFY = ("verify-import", "--model", "inception_v3_keras")
SYSTEM = re.compile(r"\b(os|posix)\.system\b")  # named in full: a refusal not cut mid-word
FOLDER = re.compile("folder|director")


def _other_model(run: Path) -> None:
    """config.json names xception_cifar (default width) instead of the tiny table the checkpoint holds."""
    config = json.loads((run / "config.json").read_text())
    config["model"] = config["recipe"]["model"] = "xception_cifar"
    config["recipe"]["model_kwargs"] = {}
    (run / "config.json").write_text(json.dumps(config))


def _non_numeric_metrics(run: Path) -> None:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows.append(["3", "oops", *rows[-1][2:]])
    with open(run / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _edit_config(change: Callable[[dict], object]):
    """The run's config.json changed in place by ``change``."""

    def damage(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        change(config)
        (run / "config.json").write_text(json.dumps(config))

    return damage


def _edit_state(change: Callable[[dict], object], which: str = "last"):
    """The run's ``which``/state.pt changed in place by ``change``."""

    def damage(run: Path) -> None:
        state = torch.load(run / which / "state.pt", weights_only=True)
        change(state)
        torch.save(state, run / which / "state.pt")

    return damage


def _truncated_cifar_archive(ctx: Ctx) -> None:
    _cifar_archive_with_another_md5(ctx)
    archive = ctx.tmp / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-2000])


def _truncate(relative: str, keep: float = 0.5):
    def damage(run: Path) -> None:
        path = run / relative
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])

    return damage


def _image_folder_with_an_unreadable_class(ctx: Ctx) -> None:
    """Two of the CIFAR-10 classes (so that a CIFAR run can evaluate them): 'cat' readable, 'dog' not."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (ctx.tmp / "photos" / name).mkdir(parents=True)
    for i in range(4):
        cat = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
        Image.fromarray(cat).save(ctx.tmp / "photos" / "cat" / f"{i}.png")
        (ctx.tmp / "photos" / "dog" / f"{i}.jpg").write_bytes(NOISE[:500])


def _cifar_archive_with_another_md5(ctx: Ctx) -> None:
    folder = write_cifar_bin(ctx.tmp / "src" / "cifar-10-batches-bin", 50, 10)
    with tarfile.open(ctx.tmp / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    shutil.rmtree(ctx.tmp / "src")


def _evil_state(which: str):
    """A run whose ``which``/state.pt would run ``os.system`` when unpickled."""

    def setup(ctx: Ctx) -> None:
        run = ctx.copy_run()
        evil = Payload(os.system, f"touch {ctx.artefacts.marker}")
        torch.save({"format": 1, "epoch": 2, "optimizer": evil}, run / which / "state.pt")

    return setup


def _evil_legacy_pth(ctx: Ctx) -> None:
    """A torch file in the legacy (pre-1.6, not zip) format whose unpickling would run ``os.system``."""
    evil = Payload(os.system, f"touch {ctx.artefacts.marker}")
    torch.save({"conv1.weight": torch.zeros(1), "x": evil}, ctx.tmp / "legacy.pth",
               _use_new_zipfile_serialization=False)


C = Case
CASES: list[Case] = [
    # list
    C("list", "no-match", ("list", "zzz_no_such_model*"), ("zzz_no_such_model",)),
    # summary
    C("summary", "unknown-model", ("summary", "xceptoin"), ("xceptoin",)),
    C("summary", "input-size-huge", ("summary", "xception", "--input-size", "100000", "100000"),
      ("--input-size", "100000", RANGE)),
    C("summary", "input-size-zero", ("summary", "xception", "--input-size", "0", "0"), ("--input-size", RANGE)),
    C("summary", "num-classes-negative", ("summary", "xception", "--num-classes", "-1"), ("--num-classes", RANGE)),
    C("summary", "depth-negative", ("summary", "xception", "--depth", "-1"), ("--depth", RANGE)),
    # predict
    C("predict", "weights-missing", ("predict", "--weights", "$tmp/absent.safetensors", "$image"),
      ("$tmp/absent.safetensors", ABSENT)),
    C("predict", "weights-empty", ("predict", "--weights", "$tmp/w.safetensors", "$image"),
      ("$tmp/w.safetensors", re.compile("empty|0 bytes")), make({"w.safetensors": b""})),
    C("predict", "weights-noise", ("predict", "--weights", "$tmp/w.pth", "$image"), ("$tmp/w.pth",),
      make({"w.pth": NOISE})),
    C("predict", "weights-text", ("predict", "--model", "xception_cifar_tiny", "--weights", "$tmp/w.h5", "$image"),
      ("$tmp/w.h5",), make({"w.h5": TEXT})),
    C("predict", "weights-folder", ("predict", "--weights", "$tmp/weights", "$image"), ("$tmp/weights",),
      make({"weights": None})),
    C("predict", "weights-truncated-checkpoint", ("predict", "--weights", "$tmp/cut.safetensors", "$image"),
      ("$tmp/cut.safetensors",), truncated("checkpoint", "cut.safetensors")),
    C("predict", "image-missing", (*PREDICT[:3], "$tmp/absent.jpg"), ("$tmp/absent.jpg", ABSENT)),
    C("predict", "image-empty", (*PREDICT[:3], "$tmp/empty.jpg"), ("$tmp/empty.jpg", "empty"),
      make({"empty.jpg": b""})),
    C("predict", "image-text", (*PREDICT[:3], "$tmp/text.png"), ("$tmp/text.png",), make({"text.png": TEXT})),
    C("predict", "image-folder-without-images", (*PREDICT[:3], "$tmp/photos"), ("$tmp/photos",),
      make({"photos/notes.txt": TEXT})),
    C("predict", "top-zero", (*PREDICT, "--top", "0"), ("--top", RANGE)),
    C("predict", "batch-size-negative", (*PREDICT, "--batch-size", "-3"), ("--batch-size", RANGE)),
    C("predict", "batch-size-zero", (*PREDICT, "--batch-size", "0"), ("--batch-size", RANGE)),
    C("predict", "unknown-model", ("predict", "--model", "resnet05", "$image"), ("resnet05",)),
    C("predict", "malicious-pth", ("predict", "--model", "resnext29_32x4d", "--weights", "$evil_pth", "$image"),
      ("$evil_pth", "refus", SYSTEM), fresh=True),
    C("predict", "malicious-legacy-pth", ("predict", "--model", "resnext29_32x4d", "--weights", "$tmp/legacy.pth",
                                          "$image"), ("$tmp/legacy.pth", "refus", SYSTEM),
      _evil_legacy_pth),
    C("predict", "keras-inception-as-xception", ("predict", "--model", "xception", "--weights", "$inception_keras",
                                                 "$image"), ("xception",)),
    # export
    C("export", "onnx-to-pt", (*EXPORT, "-o", "$tmp/m.pt"), (".onnx", "m.pt")),
    C("export", "torchscript-to-onnx", ("export", "$checkpoint", "--format", "torchscript", "-o", "$tmp/m.onnx"),
      (re.compile(r"\.pt\b"), "m.onnx")),
    C("export", "pt2-to-onnx", ("export", "$checkpoint", "--format", "pt2", "-o", "$tmp/m.onnx"), (".pt2", "m.onnx")),
    C("export", "output-existing-folder", (*EXPORT, "-o", "$tmp/m.onnx"), ("$tmp/m.onnx", FOLDER),
      make({"m.onnx": None})),
    C("export", "torchscript-output-existing-folder", ("export", "$checkpoint", "--format", "torchscript", "-o",
                                                      "$tmp/m.pt"), ("$tmp/m.pt", FOLDER),
      make({"m.pt": None})),
    C("export", "pt2-output-existing-folder", ("export", "$checkpoint", "--format", "pt2", "-o", "$tmp/m.pt2"),
      ("$tmp/m.pt2", FOLDER), make({"m.pt2": None})),
    C("export", "output-through-a-file", (*EXPORT, "-o", "$tmp/file/m.onnx"), ("$tmp/file",), make({"file": TEXT})),
    C("export", "output-unwritable", (*EXPORT, "-o", "/proc/m.onnx"), ("/proc/m.onnx",)),
    C("export", "checkpoint-missing", ("export", "$tmp/absent.safetensors", "--format", "onnx", "-o", "$tmp/m.onnx"),
      ("$tmp/absent.safetensors", ABSENT)),
    C("export", "checkpoint-truncated", ("export", "$tmp/cut.safetensors", "--format", "onnx", "-o", "$tmp/m.onnx"),
      ("$tmp/cut.safetensors",), truncated("checkpoint", "cut.safetensors")),
    C("export", "unknown-model", ("export", "xceptoin", "--format", "onnx", "-o", "$tmp/m.onnx"), ("xceptoin",)),
    C("export", "weights-noise", ("export", "xception_cifar_tiny", "--weights", "$tmp/w.pth", "--format", "onnx",
                                  "-o", "$tmp/m.onnx"), ("$tmp/w.pth",), make({"w.pth": NOISE})),
    # graph
    C("graph", "txt-output", ("graph", "xception_cifar_tiny", "-o", "$tmp/g.txt"), (".svg", "g.txt")),
    C("graph", "output-existing-folder", ("graph", "xception_cifar_tiny", "-o", "$tmp/g.dot"), ("$tmp/g.dot",),
      make({"g.dot": None})),
    C("graph", "output-unwritable", ("graph", "xception_cifar_tiny", "-o", "/proc/g.dot"), ("/proc/g.dot",)),
    C("graph", "depth-three", ("graph", "xception_cifar_tiny", "-o", "$tmp/g.dot", "--depth", "3"),
      ("depth", re.compile(r"\b1\b.*\b2\b"))),
    C("graph", "input-size-zero", ("graph", "xception_cifar_tiny", "-o", "$tmp/g.dot", "--input-size", "0", "0"),
      ("--input-size", RANGE)),
    C("graph", "unknown-model", ("graph", "xceptoin", "-o", "$tmp/g.dot"), ("xceptoin",)),
    # bench
    C("bench", "unknown-model", ("bench", "no_such_model", *BENCH_CHEAP), ("no_such_model",), fresh=True),
    C("bench", "batch-size-zero", (*BENCH, "--batch-size", "0"), ("--batch-size", RANGE)),
    C("bench", "batch-size-negative", (*BENCH, "--batch-size", "-3"), ("--batch-size", RANGE)),
    C("bench", "repeats-zero", (*BENCH, "--repeats", "0"), ("--repeats", RANGE)),
    C("bench", "warmup-negative", (*BENCH, "--warmup", "-1"), ("--warmup", RANGE)),
    C("bench", "threads-zero", (*BENCH, "--threads", "0"), ("--threads", RANGE)),
    C("bench", "input-size-zero", (*BENCH, "--input-size", "0", "0"), ("--input-size", RANGE)),
    C("bench", "unknown-runtime", (*BENCH, "--runtime", "turbo"), ("turbo",)),
    C("bench", "json-txt-output", (*BENCH, "--json", "$tmp/out.txt"), (".json", "out.txt")),
    C("bench", "json-existing-folder", (*BENCH, "--json", "$tmp/out.json"), ("$tmp/out.json",),
      make({"out.json": None})),
    C("bench", "json-unwritable", (*BENCH, "--json", "/proc/bench.json"), ("/proc/bench.json",)),
    # train
    C("train", "seed-huge", (*TRAIN, "--seed", "99999999999999999999999"),
      ("--seed", "99999999999999999999999", RANGE)),
    C("train", "seed-negative", (*TRAIN, "--seed", "-1"), ("--seed", RANGE)),
    C("train", "epochs-zero", (*TRAIN, "--epochs", "0"), ("--epochs", RANGE)),
    C("train", "batch-size-zero", (*TRAIN, "--batch-size", "0"), ("--batch-size", RANGE)),
    C("train", "batch-size-negative", (*TRAIN, "--batch-size", "-3"), ("--batch-size", RANGE)),
    C("train", "freeze-epochs-negative", (*TRAIN, "--freeze-epochs", "-1"), ("--freeze-epochs", RANGE)),
    C("train", "lr-nan", (*TRAIN, "--lr", "nan"), ("--lr", RANGE)),
    C("train", "data-missing", (*TRAIN, "--data", "$tmp/absent"), ("$tmp/absent", ABSENT)),
    C("train", "data-empty-file", (*TRAIN, "--data", "$tmp/cifar-10-binary.tar.gz"),
      ("$tmp/cifar-10-binary.tar.gz",), make({"cifar-10-binary.tar.gz": b""})),
    C("train", "data-text-file", (*TRAIN, "--data", "$tmp/data.txt"), ("$tmp/data.txt",), make({"data.txt": TEXT})),
    C("train", "data-empty-folder", (*TRAIN, "--data", "$tmp/data"), ("$tmp/data",), make({"data": None})),
    C("train", "val-data-missing", (*TRAIN, "--val-data", "$tmp/absent"), ("$tmp/absent", ABSENT)),
    C("train", "weights-missing", (*TRAIN, "--weights", "$tmp/absent.pth"), ("$tmp/absent.pth", ABSENT)),
    C("train", "weights-noise", (*TRAIN, "--weights", "$tmp/w.pth"), ("$tmp/w.pth",), make({"w.pth": NOISE})),
    C("train", "weights-malicious-pth", (*TRAIN, "--weights", "$evil_pth"), ("$evil_pth", "refus", SYSTEM)),
    C("train", "out-is-a-file", (*TRAIN, "--out", "$tmp/file"), ("$tmp/file",), make({"file": TEXT})),
    C("train", "out-through-a-file", (*TRAIN, "--out", "$tmp/file/run"), ("$tmp/file",), make({"file": TEXT})),
    C("train", "model-kwargs-wrong-type", (*TRAIN, "--set", 'model_kwargs={"bn_eps": "x"}'), ("bn_eps",)),
    C("train", "model-kwargs-unknown", (*TRAIN, "--set", 'model_kwargs={"no_such_kwarg": 1}'), ("no_such_kwarg",)),
    C("train", "image-folder-class-unreadable", (*TRAIN, "--data", "$tmp/photos", "--set", "val_fraction=0.25"),
      ("dog",), _image_folder_with_an_unreadable_class, fresh=True),
    C("train", "archive-with-another-md5", (*TRAIN, "--data", "$tmp/cifar-10-binary.tar.gz"),
      ("$tmp/cifar-10-binary.tar.gz", "MD5"), _cifar_archive_with_another_md5),
    C("train", "resume-missing", ("train", "--resume", "$tmp/absent"), ("$tmp/absent", ABSENT)),
    C("train", "resume-a-file", ("train", "--resume", "$tmp/file"), ("$tmp/file",), make({"file": TEXT})),
    C("train", "resume-truncated-state", ("train", "--resume", "$tmp/run"), ("$tmp/run", "state.pt"),
      run_copy(_truncate("last/state.pt"))),
    C("train", "resume-config-of-another-model", ("train", "--resume", "$tmp/run"), ("$tmp/run", "xception_cifar"),
      run_copy(_other_model)),
    C("train", "resume-malicious-state", ("train", "--resume", "$tmp/run"),
      ("$tmp/run/last/state.pt", "refus", SYSTEM), _evil_state("last"), fresh=True),
    C("train", "resume-config-not-json", ("train", "--resume", "$tmp/run"), ("config.json",),
      run_copy(lambda run: (run / "config.json").write_bytes(NOISE))),
    C("train", "resume-state-not-a-torch-file", ("train", "--resume", "$tmp/run"), ("$tmp/run/last/state.pt",),
      run_copy(lambda run: (run / "last" / "state.pt").write_text(TEXT))),
    C("train", "resume-state-empty", ("train", "--resume", "$tmp/run"), ("$tmp/run/last/state.pt", "empty"),
      run_copy(lambda run: (run / "last" / "state.pt").write_bytes(b""))),
    C("train", "resume-state-without-fields", ("train", "--resume", "$tmp/run"), ("$tmp/run/last/state.pt", "rng"),
      run_copy(lambda run: torch.save({"format": 1, "epoch": 2}, run / "last" / "state.pt"))),
    C("train", "resume-state-rng-of-another-kind", ("train", "--resume", "$tmp/run"), ("$tmp/run/last/state.pt", "rng"),
      run_copy(_edit_state(lambda s: s.update(rng=torch.zeros(3))))),
    C("train", "resume-state-optimizer-not-a-state", ("train", "--resume", "$tmp/run"),
      ("$tmp/run/last/state.pt", "optimizer"), run_copy(_edit_state(lambda s: s.update(optimizer={"x": 1})))),
    C("train", "resume-state-of-other-parameters", ("train", "--resume", "$tmp/run"), ("$tmp/run/last/state.pt",),
      run_copy(_edit_state(lambda s: s["optimizer"]["param_groups"][0].update(params=[0])))),
    C("train", "resume-recipe-of-another-optimizer", ("train", "--resume", "$tmp/run"),
      ("$tmp/run/last/state.pt", "adamw"), run_copy(_edit_config(lambda c: c["recipe"].update(optimizer="adamw")))),
    C("train", "resume-truncated-weights", ("train", "--resume", "$tmp/run"), ("$tmp/run/last/model.safetensors",),
      run_copy(_truncate("last/model.safetensors"))),
    C("train", "resume-config-without-fields", ("train", "--resume", "$tmp/run"), ("config.json", "model"),
      run_copy(lambda run: (run / "config.json").write_text("{}"))),
    C("train", "resume-config-recipe-out-of-range", ("train", "--resume", "$tmp/run"),
      ("config.json", "momentum", RANGE), run_copy(_edit_config(lambda c: c["recipe"].update(momentum=1.5)))),
    C("train", "archive-truncated", (*TRAIN, "--data", "$tmp/cifar-10-binary.tar.gz"),
      ("$tmp/cifar-10-binary.tar.gz", "truncated"), _truncated_cifar_archive),
    C("train", "labels-binary", (*TRAIN, "--data", "$tmp/photos", "--labels", "$tmp/labels.csv"), ("$tmp/labels.csv",),
      make({"photos/a.png": TEXT, "labels.csv": NOISE})),
    C("train", "input-size-huge", (*TRAIN, "--set", "input_size=100000,100000"), ("input_size", "100000", RANGE)),
    # eval
    C("eval", "missing", ("eval", "$tmp/absent"), ("$tmp/absent", ABSENT)),
    C("eval", "text-file", ("eval", "$tmp/m.safetensors"), ("$tmp/m.safetensors",), make({"m.safetensors": TEXT})),
    C("eval", "empty-file", ("eval", "$tmp/m.safetensors"), ("$tmp/m.safetensors",), make({"m.safetensors": b""})),
    C("eval", "truncated-checkpoint", ("eval", "$tmp/cut.safetensors", "--data", "$cifar"), ("$tmp/cut.safetensors",),
      truncated("checkpoint", "cut.safetensors")),
    C("eval", "folder-not-a-run", ("eval", "$tmp/folder"), ("$tmp/folder",), make({"folder/notes.txt": TEXT})),
    C("eval", "run-with-truncated-best", ("eval", "$tmp/run"), ("$tmp/run",),
      run_copy(_truncate("best/model.safetensors"))),
    C("eval", "run-with-malicious-state", ("eval", "$tmp/run"),
      ("$tmp/run/best/state.pt", "refus", SYSTEM), _evil_state("best")),
    C("eval", "run-state-not-a-torch-file", ("eval", "$tmp/run"), ("$tmp/run/best/state.pt",),
      run_copy(lambda run: (run / "best" / "state.pt").write_text(TEXT))),
    C("eval", "run-config-of-another-model", ("eval", "$tmp/run"), ("$tmp/run", "xception_cifar"),
      run_copy(_other_model)),
    C("eval", "run-config-not-an-object", ("eval", "$tmp/run"), ("config.json", "JSON object"),
      run_copy(lambda run: (run / "config.json").write_text("[]"))),
    C("eval", "run-config-binary", ("eval", "$tmp/run"), ("config.json", "binary"),
      run_copy(lambda run: (run / "config.json").write_bytes(NOISE))),
    C("eval", "run-config-data-of-another-kind", ("eval", "$tmp/run"), ("config.json", "data"),
      run_copy(_edit_config(lambda c: c.update(data="cifar10")))),
    C("eval", "run-config-classes-not-names", ("eval", "$tmp/run"), ("config.json", "classes"),
      run_copy(_edit_config(lambda c: c.update(classes=10)))),
    C("eval", "batch-size-negative", (*EVAL, "--batch-size", "-3"), ("--batch-size", RANGE)),
    C("eval", "batch-size-zero", (*EVAL, "--batch-size", "0"), ("--batch-size", RANGE)),
    C("eval", "data-missing", (*EVAL, "--data", "$tmp/absent"), ("$tmp/absent", ABSENT)),
    C("eval", "image-folder-class-unreadable", (*EVAL, "--data", "$tmp/photos", "--pipeline", "memory"),
      ("$tmp/photos", "dog"), _image_folder_with_an_unreadable_class),
    C("eval", "image-folder-class-unreadable-streamed", (*EVAL, "--data", "$tmp/photos", "--pipeline", "stream",
                                                         "--workers", "0"),
      ("class folder $tmp/photos/dog", "$tmp/photos/dog/0.jpg"), _image_folder_with_an_unreadable_class, fresh=True),
    C("eval", "data-text-file", (*EVAL, "--data", "$tmp/data.txt"), ("$tmp/data.txt",), make({"data.txt": TEXT})),
    # compare
    C("compare", "metrics-non-numeric", ("compare", "$tmp/run", "--out", "$tmp/c.png"), ("metrics.csv", "$tmp/run"),
      run_copy(_non_numeric_metrics)),
    C("compare", "metrics-binary", ("compare", "$tmp/run", "--out", "$tmp/c.png"), ("metrics.csv", "$tmp/run"),
      run_copy(lambda run: (run / "metrics.csv").write_bytes(NOISE))),
    C("compare", "metrics-without-columns", ("compare", "$tmp/run", "--out", "$tmp/c.png"),
      ("metrics.csv", "epoch"), run_copy(lambda run: (run / "metrics.csv").write_text("a,b\n1,2\n"))),
    C("compare", "metrics-row-too-long", ("compare", "$tmp/run", "--out", "$tmp/c.png"), ("metrics.csv", "line 4"),
      run_copy(lambda run: (run / "metrics.csv").write_text((run / "metrics.csv").read_text() + "1,2,3" + ",4" * 20))),
    C("compare", "config-without-fields", ("compare", "$tmp/run", "--out", "$tmp/c.png"), ("config.json", "params"),
      run_copy(_edit_config(lambda c: c.pop("params")))),
    C("compare", "config-not-json", ("compare", "$tmp/run", "--out", "$tmp/c.png"), ("config.json", "$tmp/run"),
      run_copy(lambda run: (run / "config.json").write_text("{"))),
    C("compare", "run-missing", ("compare", "$tmp/absent", "--out", "$tmp/c.png"), ("$tmp/absent", ABSENT)),
    C("compare", "folder-not-a-run", ("compare", "$tmp/folder", "--out", "$tmp/c.png"), ("$tmp/folder",),
      make({"folder/notes.txt": TEXT})),
    C("compare", "file-not-a-run", ("compare", "$tmp/file", "--out", "$tmp/c.png"), ("$tmp/file",),
      make({"file": TEXT})),
    C("compare", "jpg-output", ("compare", "$run", "--out", "$tmp/c.jpg"), (".png", "c.jpg")),
    C("compare", "output-existing-folder", ("compare", "$run", "--out", "$tmp/c.png"), ("$tmp/c.png",),
      make({"c.png": None})),
    C("compare", "output-unwritable", ("compare", "$run", "--out", "/proc/c.png"), ("/proc/c.png",)),
    # recipes
    C("recipes", "unknown-recipe", ("recipes", "no_such_recipe"), ("no_such_recipe",)),
    # info
    C("info", "unexpected-argument", ("info", "cpu"), ("cpu",)),
    C("info", "flag-with-a-value", ("info", "--json=yes"), ("--json", "yes")),
    # weights convert
    C("weights convert", "input-missing", ("weights", "convert", "$tmp/absent.pth", "$tmp/out.safetensors",
                                           "--model", "xception_cifar_tiny"), ("$tmp/absent.pth", ABSENT)),
    C("weights convert", "input-empty", ("weights", "convert", "$tmp/w.pth", "$tmp/out.safetensors", "--model",
                                         "xception_cifar_tiny"), ("$tmp/w.pth",), make({"w.pth": b""})),
    C("weights convert", "input-text", ("weights", "convert", "$tmp/w.h5", "$tmp/out.safetensors", "--model",
                                        "xception_cifar_tiny"), ("$tmp/w.h5",), make({"w.h5": TEXT})),
    C("weights convert", "input-folder", ("weights", "convert", "$tmp/w", "$tmp/out.safetensors", "--model",
                                          "xception_cifar_tiny"), ("$tmp/w",), make({"w": None})),
    C("weights convert", "class-names-binary", (*CONVERT, "--class-names", "$tmp/names.txt"), ("$tmp/names.txt",),
      make({"names.txt": NOISE})),
    C("weights convert", "class-names-missing", (*CONVERT, "--class-names", "$tmp/names.txt"),
      ("$tmp/names.txt", ABSENT)),
    C("weights convert", "class-names-folder", (*CONVERT, "--class-names", "$tmp/names"), ("$tmp/names",),
      make({"names": None})),
    C("weights convert", "class-names-count", (*CONVERT, "--class-names", "$tmp/names.txt"),
      ("$tmp/names.txt", re.compile(r"\b10\b"), re.compile(r"\b3\b")), make({"names.txt": "a\nb\nc\n"})),
    C("weights convert", "pth-output", ("weights", "convert", "$tiny_weights", "$tmp/out.pth", "--model",
                                        "xception_cifar_tiny"), (".safetensors", "out.pth")),
    C("weights convert", "output-unwritable", ("weights", "convert", "$tiny_weights", "/proc/x.safetensors", "--model",
                                               "xception_cifar_tiny"), ("/proc/x.safetensors",)),
    C("weights convert", "output-through-a-file", ("weights", "convert", "$tiny_weights", "$tmp/file/x.safetensors",
                                                   "--model", "xception_cifar_tiny"), ("$tmp/file",),
      make({"file": TEXT})),
    C("weights convert", "keras-inception-as-xception", ("weights", "convert", "$inception_keras",
                                                         "$tmp/out.safetensors", "--model", "xception"), ("xception",)),
    C("weights convert", "num-classes-negative", (*CONVERT, "--num-classes", "-1"), ("--num-classes", RANGE)),
    C("weights convert", "unknown-model", ("weights", "convert", "$tiny_weights", "$tmp/out.safetensors", "--model",
                                           "xceptoin"), ("xceptoin",)),
    C("weights convert", "malicious-pth", ("weights", "convert", "$evil_pth", "$tmp/out.safetensors", "--model",
                                           "resnext29_32x4d"), ("$evil_pth", "refus", SYSTEM)),
    # weights info
    C("weights info", "missing", ("weights", "info", "$tmp/absent.h5"), ("$tmp/absent.h5", ABSENT)),
    C("weights info", "empty", ("weights", "info", "$tmp/w.h5"), ("$tmp/w.h5",), make({"w.h5": b""})),
    C("weights info", "text", ("weights", "info", "$tmp/w.h5"), ("$tmp/w.h5",), make({"w.h5": TEXT})),
    C("weights info", "folder", ("weights", "info", "$tmp/w"), ("$tmp/w",), make({"w": None})),
    C("weights info", "truncated-h5", ("weights", "info", "$tmp/cut.h5"), ("$tmp/cut.h5",),
      truncated("small_h5", "cut.h5")),
    C("weights info", "truncated-checkpoint", ("weights", "info", "$tmp/cut.safetensors"), ("$tmp/cut.safetensors",),
      truncated("checkpoint", "cut.safetensors")),
    C("weights info", "malicious-pth", ("weights", "info", "$evil_pth"), ("$evil_pth", "refus", SYSTEM)),
    C("weights info", "pickle-calling-codecs-decode", ("weights", "info", "$tmp/w.pth"),
      ("$tmp/w.pth", "refus", "_codecs.decode"),
      pickled("w.pth", {"conv1.weight": Payload(__import__("codecs").decode, b"x", "latin1")})),
    # weights fetch
    C("weights fetch", "unknown-model", ("weights", "fetch", "no_such_model"), ("no_such_model",)),
    C("weights fetch", "unknown-source", ("weights", "fetch", "xception", "--source", "nosuch"), ("nosuch",)),
    C("weights fetch", "convzoo-home-is-a-file", ("weights", "fetch", "xception"),
      ("$tmp/home", FOLDER),
      make({"home": TEXT}), env=(("CONVZOO_HOME", "$tmp/home"),), fresh=True),
    # weights list
    C("weights list", "unknown-model", ("weights", "list", "xceptoin"), ("xceptoin",)),
    # verify-import
    C("verify-import", "missing", (*VERIFY, "$tmp/absent.h5"), ("$tmp/absent.h5", ABSENT)),
    C("verify-import", "empty", (*VERIFY, "$tmp/w.h5"), ("$tmp/w.h5",), make({"w.h5": b""})),
    C("verify-import", "text", (*VERIFY, "$tmp/w.h5"), ("$tmp/w.h5",), make({"w.h5": TEXT})),
    C("verify-import", "folder", (*VERIFY, "$tmp/w.h5"), ("$tmp/w.h5",), make({"w.h5": None})),
    C("verify-import", "truncated-h5", (*VERIFY, "$tmp/cut.h5"), ("$tmp/cut.h5",), truncated("small_h5", "cut.h5")),
    C("verify-import", "model-without-keras-reference", ("verify-import", "--model", "resnext29_32x4d", "$small_h5"),
      ("resnext29_32x4d",)),
    C("verify-import", "inception-file-as-xception", ("verify-import", "--model", "xception", "$inception_keras"),
      ("xception",)),
    C("verify-import", "image-missing", (*VERIFY, "$inception_keras", "--image", "$tmp/absent.png"),
      ("$tmp/absent.png", ABSENT)),
    C("verify-import", "image-text", (*VERIFY, "$inception_keras", "--image", "$tmp/text.png"), ("$tmp/text.png",),
      make({"text.png": TEXT})),
]


# --- the table ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("artefacts"))


@pytest.fixture
def ctx(tmp_path, artefacts, monkeypatch) -> Ctx:
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    return Ctx(work, artefacts)


def prepare(case: Case, ctx: Ctx) -> tuple[list[str], list, dict[str, str]]:
    """The row's arguments, expected texts and environment, its files made."""
    if case.setup is not None:
        case.setup(ctx)
    argv = [ctx.fill(a) for a in case.argv]
    expect = [e if isinstance(e, re.Pattern) else ctx.fill(e) for e in case.expect]
    return argv, expect, {k: ctx.fill(v) for k, v in case.env}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_clear_line(case, ctx, artefacts, capsys, monkeypatch):
    argv, expect, env = prepare(case, ctx)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = files_below(ctx.tmp)
    shown = run_in_process(argv, capsys)
    line = error_line(shown, *expect)
    assert files_below(ctx.tmp) == before, "a refused command wrote files"
    assert not artefacts.marker.exists(), "a crafted pickle ran"
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    assert named <= flags_of(case.verb, capsys), f"the message names flags `convzoo {case.verb}` does not have"


@pytest.mark.parametrize("case", [c for c in CASES if c.fresh], ids=lambda c: c.id)
def test_bad_input_in_a_fresh_process(case, ctx):
    """What a user sees: warnings and log lines of a real process count."""
    argv, expect, env = prepare(case, ctx)
    shown = run_in_fresh_process(argv, env, cwd=ctx.tmp)
    error_line(shown, *expect)


_HELP: dict[str, set[str]] = {}


def flags_of(verb: str, capsys) -> set[str]:
    """The flags ``convzoo VERB --help`` lists."""
    if verb not in _HELP:
        shown = run_in_process([*verb.split(), "--help"], capsys)
        assert shown.code == 0
        _HELP[verb] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", shown.out))
    return _HELP[verb]


def _verbs(capsys, *group: str) -> list[str]:
    """The verbs ``convzoo [GROUP] --help`` lists."""
    shown = run_in_process([*group, "--help"], capsys)
    assert shown.code == 0
    return re.search(r"\{([a-z,-]+)\}", shown.out).group(1).split(",")


def test_every_verb_has_rows(capsys):
    verbs = [v for v in _verbs(capsys) if v != "weights"] + [f"weights {v}" for v in _verbs(capsys, "weights")]
    missing = [v for v in verbs if not any(c.verb == v for c in CASES)]
    assert not missing, f"verbs without bad-input rows: {missing}"
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# --- recipe numbers are checked when they are set -----------------------------------------------------------

@pytest.mark.parametrize("setting, field", [
    ("min_lr=nan", "min_lr"), ("momentum=nan", "momentum"), ("weight_decay=inf", "weight_decay"),
    ("warmup_start=nan", "warmup_start"), ("lr=-1", "lr"), ("lr=nan", "lr"), ("label_smoothing=1.5", "label_smoothing"),
    ("gamma=nan", "gamma"), ("kernel_l2=inf", "kernel_l2"), ("aux_weight=nan", "aux_weight"), ("shift=nan", "shift"),
    ("warmup_epochs=inf", "warmup_epochs"), ("val_fraction=nan", "val_fraction"), ("min_lr=-1", "min_lr"),
    ("momentum=1.5", "momentum"), ("mean=nan,0,0", "mean"), ("std=inf,1,1", "std"),
    ("lr=1e39", "lr"), ("weight_decay=1e39", "weight_decay"), ("epochs=2000000", "epochs"), ("cutout=100000", "cutout"),
    ("milestones=-1", "milestones"), ("min_lr=0.5", "min_lr"), ("mean=1,2", "mean"), ("warmup_start=2", "warmup_start"),
])
def test_recipe_number_is_checked_when_set(setting, field, ctx, capsys):
    out = ctx.tmp / "out"
    shown = run_in_process(train_argv(ctx["cifar"], out, 1, "--set", setting), capsys)
    line = error_line(shown, field)
    assert re.search(rf"\b{field}\b", line)
    assert not out.exists() or not any(out.iterdir()), "a refused recipe wrote a run folder"


# --- messages that mislead ----------------------------------------------------------------------------------

def test_md5_advice_names_only_real_flags(ctx, capsys):
    _cifar_archive_with_another_md5(ctx)
    shown = run_in_process([*train_argv(ctx.tmp / "cifar-10-binary.tar.gz", ctx.tmp / "out"),
                            "--set", "val_fraction=0.5"], capsys)
    line = error_line(shown, "MD5")
    assert "verify_md5" not in line
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", line))
    assert flags <= flags_of("train", capsys), f"the advice names flags train does not have: {flags}"


def _deny(monkeypatch, path: Path) -> None:
    """``path`` cannot be read: chmod 000, and where that does not bind (root), Pillow's open raising what
    the kernel would raise."""
    path.chmod(0)
    if not os.access(path, os.R_OK):
        return
    original = Image.open

    def open_denied(fp, *args, **kwargs):
        name = fp if isinstance(fp, (str, os.PathLike)) else getattr(fp, "name", None)
        if name is not None and Path(name) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_denied)


def test_permission_denied_image_is_not_called_damaged(ctx, artefacts, capsys, monkeypatch):
    image = ctx.tmp / "secret.png"
    shutil.copyfile(artefacts.image, image)
    _deny(monkeypatch, image)
    shown = run_in_process(["predict", "--weights", str(artefacts.checkpoint), str(image), "--device", "cpu"], capsys)
    line = error_line(shown, str(image), re.compile("permission|not readable"))
    assert "damaged" not in line


def test_image_folder_class_of_unreadable_files_is_one_line(ctx, capsys, monkeypatch):
    for name, colour in (("cats", (50, 100, 200)), ("dogs", (200, 100, 50))):
        (ctx.tmp / "photos" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (36, 36), colour).save(ctx.tmp / "photos" / name / f"{i}.png")
    for i in range(4):
        _deny(monkeypatch, ctx.tmp / "photos" / "dogs" / f"{i}.png")
    shown = run_in_process([*train_argv(ctx.tmp / "photos", ctx.tmp / "out"), "--set", "val_fraction=0.25"], capsys)
    line = error_line(shown, "dogs", re.compile("permission|not readable"))
    assert "damaged" not in line


def test_streamed_class_of_unreadable_files_stops_training_in_one_line(ctx, capsys):
    """Streaming decodes nothing ahead: the first pass that has tried every file of 'dog' stops the run, before
    any checkpoint of that epoch; a run resumed onto such data keeps its last good checkpoint."""
    _image_folder_with_an_unreadable_class(ctx)
    photos, out = ctx.tmp / "photos", ctx.tmp / "out"
    stream = ("--pipeline", "stream", "--workers", "0", "--batch-size", "2", "--set", "val_fraction=0.25")
    shown = run_in_process([*train_argv(photos, out), *stream], capsys)
    line = error_line(shown, f"class folder {photos / 'dog'}", f"{photos / 'dog'}/", "no checkpoint", quiet=False)
    assert "--overwrite" in line and not (out / "last").exists() and not (out / "best").exists()

    good = ctx.tmp / "good"
    shutil.copytree(photos / "cat", good / "cat")
    shutil.copytree(photos / "cat", good / "dog")
    assert run_in_process([*train_argv(good, out), *stream, "--overwrite"], capsys).code == 0
    last = (out / "last" / "model.safetensors").read_bytes()
    for dog in (good / "dog").iterdir():
        dog.write_bytes(NOISE[:500])
    shown = run_in_process(["train", "--resume", str(out), "--epochs", "2"], capsys)
    error_line(shown, f"class folder {good / 'dog'}", "last/ (epoch 1) is kept", f"--resume {out}", quiet=False)
    assert (out / "last" / "model.safetensors").read_bytes() == last
    assert torch.load(out / "last" / "state.pt", weights_only=True)["epoch"] == 1


# --- outputs ------------------------------------------------------------------------------------------------

def test_compare_creates_a_missing_output_folder(ctx, artefacts, capsys):
    png = ctx.tmp / "missing" / "dir" / "c.png"
    shown = run_in_process(["compare", str(artefacts.run), "--out", str(png)], capsys)
    assert shown.code == 0, shown.err
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
