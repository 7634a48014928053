"""The trainer and ``convzoo eval`` on streamed data: the pipeline choice, image folders, flat folders with
a labels file and tar shards, soft targets, skipped images, progress lines, checkpoints inside an epoch
resumed bit for bit, imported weights scored on an ImageNet layout, and data-parallel streaming."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convzoo import create_model, save_checkpoint
from convzoo.cli import main
from convzoo.data import BatchLoader
from convzoo.data import streaming
from convzoo.data.dataset import train_val_split
from convzoo.data.imagenet import imagenet_wnids, scan_class_folders
from convzoo.data.streaming import EpochBatches, StreamLoader, usable_cores
from convzoo.train import TrainOptions, start, trainer
from convzoo.train.recipes import apply_settings, get_recipe, override

from helpers import randomize_batchnorm_
from test_train import ENV, TINY, metrics, results, tensors, write_cifar

WNIDS = ["n01440764", "n04264628", "n15075141"]
PER_CLASS = 16


def _jpeg(path: Path, seed: int, shade: int, size=(30, 40)) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(shade, 40, (*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes named by WordNet id, 16 small JPEGs each, told apart by their brightness."""
    root = tmp_path_factory.mktemp("wnids")
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir()
        for i in range(PER_CLASS):
            _jpeg(root / wnid / f"{wnid}_{i}.JPEG", 100 * c + i, 50 + 70 * c)
    return root


def stream_args(data: Path, out: Path, epochs: int = 1, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "8",
            "--set", f"model_kwargs={TINY}", "--device", "cpu", "--deterministic", "--workers", "1", *extra]


def eval_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- the pipeline ---------------------------------------------------------------------------------------

def test_the_demo_recipe_stays_in_memory(tmp_path):
    run = start(TrainOptions(get_recipe("fast"), out=tmp_path / "demo", device="cpu"))
    try:
        assert run.spec.pipeline == "memory" and isinstance(run.train_loader, BatchLoader)
        assert json.loads((tmp_path / "demo" / "config.json").read_text())["data"]["pipeline"] == "memory"
    finally:
        run.close()


def test_auto_streams_a_folder_that_does_not_fit(folder, tmp_path, monkeypatch):
    recipe = apply_settings(override(get_recipe("fast"), epochs=1, batch_size=8, workers=0), [f"model_kwargs={TINY}"])
    small = start(TrainOptions(recipe, data=str(folder), out=tmp_path / "small", device="cpu"))
    small.close()
    monkeypatch.setattr(streaming, "MEMORY_BUDGET", 1000)
    big = start(TrainOptions(recipe, data=str(folder), out=tmp_path / "big", device="cpu"))
    big.close()
    assert small.spec.pipeline == "memory" and big.spec.pipeline == "stream"
    assert isinstance(big.train_loader, StreamLoader) and big.sizes == (43, 5)


def test_streamed_run_end_to_end(folder, tmp_path, capsys):
    out = tmp_path / "run"
    workers = usable_cores() + 3
    args = stream_args(folder, out, 2, "--pipeline", "stream", "--workers", str(workers), "--set", "mixup=0.4",
                       "--set", "hflip=0.5", "--set", "scale=0.5,1")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"convzoo: warning: workers {workers} is more than the {usable_cores()} CPU cores of this machine; "
        f"using {usable_cores()}"]
    assert "(stream, " in captured.out
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["pipeline"] == "stream" and config["classes"] == WNIDS
    assert config["recipe"]["mixup"] == 0.4 and config["recipe"]["scale"] == [0.5, 1.0]
    rows = metrics(out)
    assert [r["skipped"] for r in rows] == ["0", "0"] and all(0 <= float(r["train_acc"]) <= 1 for r in rows)
    best = max(rows, key=lambda r: float(r["val_acc"]))
    result = eval_json(capsys, str(out))
    assert result["n"] == config["val_images"] == 5
    assert result["top1"] == pytest.approx(float(best["val_acc"])) and result["skipped"] == 0


def test_a_pipeline_the_source_cannot_take_is_one_line(tmp_path, capsys):
    cifar = write_cifar(tmp_path / "cifar", 100)
    assert main(["train", "--data", str(cifar), "--pipeline", "stream", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == (f"convzoo: error: pipeline stream cannot read {cifar}: CIFAR data is "
                                               f"read into memory")


def test_flat_folder_with_a_labels_file_trains(folder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["file,label"]
    for wnid in WNIDS:
        for p in sorted((folder / wnid).iterdir()):
            (flat / p.name).write_bytes(p.read_bytes())
            rows.append(f"{p.name},{wnid}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    for pipeline in ("memory", "stream"):
        out = tmp_path / pipeline
        assert main(stream_args(flat, out, 1, "--labels", str(tmp_path / "labels.csv"), "--pipeline", pipeline)) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["classes"] == WNIDS and config["data"]["labels"] == str(tmp_path / "labels.csv")
        assert (config["train_images"], config["val_images"]) == (43, 5)


def test_unreadable_images_are_skipped_and_counted_per_epoch(folder, tmp_path, capsys):
    data = tmp_path / "data"
    for wnid in WNIDS:
        (data / wnid).mkdir(parents=True)
        for p in sorted((folder / wnid).iterdir()):
            (data / wnid / p.name).write_bytes(p.read_bytes())
    (data / WNIDS[0] / f"{WNIDS[0]}_3.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg")
    truncated = data / WNIDS[2] / f"{WNIDS[2]}_7.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:300])
    out = tmp_path / "run"
    assert main(stream_args(data, out, 1, "--pipeline", "stream", "--val-data", str(folder))) == 0
    assert metrics(out)[0]["skipped"] == "2"
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1"))
    assert line.endswith("2 images skipped")


def test_progress_lines_give_speed_and_eta(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="convzoo.train"):
        assert main(stream_args(folder, tmp_path / "run", 1, "--pipeline", "stream")) == 0
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage()]
    assert lines and all(re.fullmatch(r"epoch 1/1 step \d/5: [\d.]+ img/s, ETA \d+s, waiting for data \d+ %", x)
                         for x in lines), lines


# --- checkpoints inside an epoch -------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_resume_from_inside_an_epoch_is_bit_exact(pipeline, folder, tmp_path, monkeypatch):
    """Dropout (global RNG), mixup and cutmix (seeded per batch), random erasing and the random-resized crop
    (seeded per image): the run stopped after step 2 of epoch 2 and resumed ends with the weights and
    metrics of the run that never stopped."""
    extra = ["--pipeline", pipeline, "--set", 'model_kwargs={"stem": [[8, 2], [16, 1]], "blocks": '
             '[{"widths": [16, 16]}], "drop_rate": 0.3}', "--set", "mixup=0.5", "--set", "cutmix=1.0",
             "--set", "re_prob=0.5", "--set", "cutout=8"]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    assert main(stream_args(folder, reference, 2, *extra)) == 0
    step, calls = trainer.Run._step, [0]

    def interrupted(self, *args):
        calls[0] += 1
        if calls[0] == len(self.train_loader) + 3:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(trainer.Run, "_step", interrupted)
    assert main(stream_args(folder, stopped, 2, *extra, "--set", "checkpoint_every_min=1e-9")) == 130
    monkeypatch.undo()
    state = torch.load(stopped / "last" / "state.pt", weights_only=True)
    assert (state["epoch"], state["partial"]["step"], state["loader"]["step"]) == (1, 2, 2)
    assert main(["train", "--resume", str(stopped), "--workers", "0"]) == 0
    a, b = tensors(reference), tensors(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results(reference) == results(stopped)


# --- imported weights on an ImageNet layout --------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory) -> Path:
    """A 1000-class ResNet-50 with random weights and varied BatchNorm statistics, saved as a checkpoint."""
    torch.manual_seed(0)
    model = randomize_batchnorm_(create_model("resnet50"))
    return save_checkpoint(model, tmp_path_factory.mktemp("weights") / "resnet50.safetensors")


def test_imported_weights_on_a_wnid_subset_stream_as_in_memory(folder, imagenet_weights, tmp_path, capsys):
    """Four images of each of three ImageNet classes, in wnid class folders and flat with a labels file of
    indices: the same scores in memory and streamed (the same pixels, image by image)."""
    subset, flat, rows = tmp_path / "val", tmp_path / "flat", []
    flat.mkdir()
    for wnid in WNIDS:
        (subset / wnid).mkdir(parents=True)
        for p in sorted((folder / wnid).iterdir())[:4]:
            (subset / wnid / p.name).write_bytes(p.read_bytes())
            (flat / p.name).write_bytes(p.read_bytes())
            rows.append(f"{p.stem},{imagenet_wnids().index(wnid)}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    base = ["--model", "resnet50", "--weights", str(imagenet_weights), "--batch-size", "5"]
    memory = eval_json(capsys, *base, "--data", str(subset), "--pipeline", "memory")
    stream = eval_json(capsys, *base, "--data", str(subset), "--pipeline", "stream", "--workers", "2")
    assert memory["n"] == stream["n"] == 12 and len(stream["per_class"]) == 1000
    assert (stream["top1"], stream["top5"], stream["per_class"]) == (memory["top1"], memory["top5"], memory["per_class"])
    assert [w for w, acc in stream["per_class"].items() if acc is not None] == WNIDS
    assert main(["eval", *base, "--data", str(flat), "--labels", str(tmp_path / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {memory['top1']:.4f}  top-5 {memory['top5']:.4f}" in out
    assert "(997 classes without images not shown)" in out and WNIDS[1] in out


def test_class_mismatch_is_one_short_line(imagenet_weights, tmp_path, capsys):
    for name in ["n01440764", "cats", "dogs", "eels", "fish", "goats"]:
        (tmp_path / name).mkdir()
        _jpeg(tmp_path / name / "a.jpg", 0, 100)
    capsys.readouterr()
    assert main(["eval", "--model", "resnet50", "--weights", str(imagenet_weights), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) <= 300, err
    assert "the 1000 ImageNet classes" in err[0] and "found 5 of 6 folders that are not: cats, dogs, eels and 2 more" in err[0]


def test_eval_needs_a_target_or_model_weights_and_data(imagenet_weights, capsys):
    for args in (["eval"], ["eval", "--model", "resnet50", "--data", "x"], ["eval", "run", "--model", "resnet50"]):
        assert main(args) == 2
        assert "--model NAME --weights FILE --data" in capsys.readouterr().err


# --- tar shards ------------------------------------------------------------------------------------------

def _shards(root: Path, name: str, folder: Path, count: int) -> str:
    files = sorted(folder.rglob("*.JPEG"))
    for s in range(count):
        with tarfile.open(root / f"{name}-{s:04d}.tar", "w") as tar:
            for i, path in enumerate(files[s::count]):
                for ext, data in (("jpg", path.read_bytes()), ("cls", str(WNIDS.index(path.parent.name)).encode())):
                    info = tarfile.TarInfo(f"{path.stem}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"{name}-{{0000..{count - 1:04d}}}.tar")


def test_tar_shards_train_and_evaluate(folder, tmp_path, capsys):
    train = _shards(tmp_path, "train", folder, 4)
    val = _shards(tmp_path, "val", folder, 2)
    out = tmp_path / "run"
    assert main(stream_args(train, out, 1, "--val-data", str(tmp_path / "val-*.tar"))) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["pipeline"] == "stream" and config["classes"] == ["0", "1", "2"]
    assert (config["train_images"], config["val_images"]) == (48, 48)
    result = eval_json(capsys, str(out), "--data", val)
    assert result["n"] == 48 and result["top1"] == pytest.approx(float(metrics(out)[0]["val_acc"]))
    assert main(stream_args(train, tmp_path / "noval", 1)) == 2
    assert "--val-data" in capsys.readouterr().err


# --- data-parallel streaming ------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_stream_and_skip_a_step_no_rank_can_take(folder, tmp_path):
    """Rank 1's half of one global batch is entirely unreadable: both ranks skip that step together (no
    hang), and the skipped images are counted over both ranks."""
    data = tmp_path / "data"
    for wnid in WNIDS:
        (data / wnid).mkdir(parents=True)
        for p in sorted((folder / wnid).iterdir()):
            (data / wnid / p.name).write_bytes(p.read_bytes())
    train_files, _ = train_val_split(scan_class_folders(data), 0.1, 0)
    batches = EpochBatches(len(train_files), 8, train=True, seed=0, rank=1, world_size=2)
    batches.set_epoch(0)
    for ticket in next(iter(batches)):
        train_files.path(ticket.index).write_bytes(b"\xff\xd8\xff broken")
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "convzoo", *stream_args(data, out, 1, "--pipeline", "stream", "--workers", "0")],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert metrics(out)[0]["skipped"] == "4"
