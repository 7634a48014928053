"""``convzoo eval`` and ``convzoo compare`` on tiny runs."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convzoo import create_model
from convzoo.cli import main
from convzoo.train.evaluate import EvalOptions, evaluate_target
from convzoo.preprocess import CIFAR_MEAN, CIFAR_STD

from helpers import randomize_batchnorm_
from test_train import train_args, write_cifar


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("data") / "cifar", 200, n_test=60)


@pytest.fixture(scope="module")
def runs(cifar, tmp_path_factory) -> tuple[Path, Path]:
    """Two runs in fp32, so that eval (in fp32 here, see eval_json) reproduces their validation figures."""
    root = tmp_path_factory.mktemp("runs")
    assert main(train_args(cifar, root / "a", 2, "--no-bf16")) == 0
    assert main(train_args(cifar, root / "b", 1, "--no-bf16", "--set", "label_smoothing=0")) == 0
    return root / "a", root / "b"


def eval_json(capsys, *args: str) -> dict:
    """``eval --json`` in float32 (on any CPU: bf16 is the default where it pays)."""
    capsys.readouterr()
    assert main(["eval", *args, "--json", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_eval_run_on_its_validation_split(runs, capsys):
    run = runs[0]
    result = eval_json(capsys, str(run))
    assert {"top1", "top5", "n"} <= result.keys() and result["n"] == 20
    best = max(rows(run), key=lambda r: float(r["val_acc"]))
    assert result["top1"] == pytest.approx(float(best["val_acc"]))
    assert result["top5"] == pytest.approx(float(best["val_top5"]))
    assert 0 <= result["top1"] <= result["top5"] <= 1
    assert set(result["per_class"]) == set(json.loads((run / "config.json").read_text())["classes"])
    assert (run / "confusion.png").stat().st_size > 0


def test_eval_on_a_cifar_folder_uses_its_test_split(runs, cifar, capsys):
    result = eval_json(capsys, str(runs[0]), "--data", str(cifar), "--checkpoint", "last")
    assert result["n"] == 60 and result["epoch"] == 2


def test_eval_text_report(runs, capsys):
    assert main(["eval", str(runs[1] / "last")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "airplane" in out
    assert (runs[1] / "confusion-last.png").is_file()


def test_eval_a_checkpoint_outside_any_run(cifar, tmp_path, capsys):
    from convzoo.weights import save_checkpoint

    model = create_model("inception_v3_cifar", depth_multiplier=0.05, min_depth=4)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    path = save_checkpoint(model, tmp_path / "m.safetensors", classes, extra={"mean": CIFAR_MEAN, "std": CIFAR_STD},
                           model_args={"depth_multiplier": 0.05, "min_depth": 4})
    result = eval_json(capsys, str(path), "--data", str(cifar))
    assert result["n"] == 60 and result["model"] == "inception_v3_cifar"
    assert (tmp_path / "m.confusion.png").is_file()
    assert main(["eval", str(path)]) == 2
    assert "--data" in capsys.readouterr().err


def test_eval_on_cpu_matches_the_trainers_validation(runs):
    run = runs[0]
    tally = evaluate_target(run, opts=EvalOptions(device="cpu", precision="fp32")).tally
    best = max(rows(run), key=lambda r: float(r["val_acc"]))
    assert tally.loss == pytest.approx(float(best["val_loss"]), abs=1e-5)


def test_eval_device_cuda_without_cuda(runs, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main(["eval", str(runs[1]), "--device", "cuda"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "convzoo: error: --device cuda: no CUDA device is available"


def clear_cut_copy(cifar: Path, dest: Path, model: torch.nn.Module, margin: float = 0.1) -> Path:
    """A copy of the CIFAR folder whose test split keeps the images on which ``model``'s top logit leads the
    next by at least ``margin`` in float32, so that bfloat16 rounding cannot change their class."""
    shutil.copytree(cifar, dest)
    records = np.fromfile(dest / "test_batch.bin", np.uint8).reshape(-1, 1 + 3 * 32 * 32)
    x = torch.from_numpy(records[:, 1:]).view(-1, 3, 32, 32).float()
    x = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top2 = model.eval()(x).topk(2, 1).values
    (dest / "test_batch.bin").write_bytes(records[(top2[:, 0] - top2[:, 1] >= margin).numpy()].tobytes())
    return dest


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eval_on_cuda_matches_cpu(cifar, tmp_path, capsys):
    from convzoo.weights import save_checkpoint

    model = create_model("xception_cifar_tiny")
    randomize_batchnorm_(model)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    path = save_checkpoint(model, tmp_path / "m.safetensors", classes, extra={"mean": CIFAR_MEAN, "std": CIFAR_STD})
    data = clear_cut_copy(cifar, tmp_path / "clear", model)
    cpu = eval_json(capsys, str(path), "--data", str(data), "--device", "cpu")
    cuda = eval_json(capsys, str(path), "--data", str(data), "--device", "cuda")
    assert cuda["n"] == cpu["n"] >= 10
    assert cuda["top1"] == cpu["top1"] and cuda["per_class"] == cpu["per_class"]


def test_eval_errors_are_one_line(runs, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    empty = tmp_path / "run"
    shutil.copytree(runs[1], empty)
    shutil.rmtree(empty / "best")
    assert main(["eval", str(empty)]) == 2
    assert "best" in capsys.readouterr().err


def test_compare_table_and_figure(runs, tmp_path, capsys):
    png = tmp_path / "cmp.png"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | model | parameters | best val acc | final val acc | epochs | wall time |")
    a, b = out[2], out[3]
    assert a.startswith("| a | xception_cifar_tiny |") and b.startswith("| b | xception_cifar_tiny |")
    params = json.loads((runs[0] / "config.json").read_text())["params"]
    assert f"| {params:,} |" in a and "| 2 |" in a and "| 1 |" in b
    assert png.stat().st_size > 0


def test_eval_preprocessing_override_warns_in_one_line(runs, capsys):
    results = {}
    for mode in ("cifar", "tf"):
        capsys.readouterr()
        assert main(["eval", str(runs[1]), "--json", "--preprocessing", mode]) == 0
        captured = capsys.readouterr()
        results[mode] = json.loads(captured.out), captured.err.strip().splitlines()
    assert results["cifar"][1] == []  # the run's own normalisation: nothing to warn about
    lines = results["tf"][1]
    assert len(lines) == 1 and lines[0].startswith("convzoo: warning: --preprocessing tf differs from the 'cifar'")
    assert results["tf"][0]["n"] == results["cifar"][0]["n"]


@pytest.mark.parametrize("verb", ["eval", "compare"])
def test_eval_and_compare_without_matplotlib_say_how_to_install_it(verb, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` finds when it is not installed
    args = [str(runs[0])] if verb == "eval" else [str(runs[0]), "--out", str(tmp_path / "c.png")]
    assert main([verb, *args]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"convzoo: error: convzoo {verb} needs matplotlib, which is not installed: pip install 'convzoo[train]'"]
