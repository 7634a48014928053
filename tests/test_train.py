"""The training loop end to end on a tiny Xception and a few hundred CIFAR images: the run folder, exact
resuming after SIGKILL, NaN stops, fine-tuning, data-parallel training and one-line errors."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convzoo import load_checkpoint
from convzoo.cli import main
from convzoo.data import embedded_cifar10
from convzoo.data.transforms import ImageTransform
from convzoo.errors import ConfigError
from convzoo.hardware import bf16_pays
from convzoo.train import TrainOptions, resume, start
from convzoo.train.build import build_model
from convzoo.train.recipes import apply_settings, from_dict, get_recipe, override
from convzoo.train.runfolder import load_model_weights
from convzoo.train.trainer import resume_recipe

# Two stem convs and one residual block: a few thousand parameters, about a second per 1,000 images.
TINY = '{"stem": [[8, 2], [16, 1]], "blocks": [{"widths": [16, 16]}]}'
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_cifar(root: Path, n_train: int, n_test: int = 100) -> Path:
    """A CIFAR-10 binary folder made of the embedded images: ``n_train`` over the five training batches."""
    ds = embedded_cifar10()
    records = np.concatenate([ds.labels.numpy().astype(np.uint8)[:, None], ds.images.reshape(len(ds), -1).numpy()], 1)
    root.mkdir(parents=True)
    per = n_train // 5
    for i in range(5):
        (root / f"data_batch_{i + 1}.bin").write_bytes(records[i * per:(i + 1) * per].tobytes())
    (root / "test_batch.bin").write_bytes(records[-n_test:].tobytes())
    (root / "batches.meta.txt").write_text("\n".join(ds.classes) + "\n")
    return root


def train_args(data: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    """``convzoo train`` arguments for the tiny model on ``data``."""
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "32",
            "--set", f"model_kwargs={TINY}", "--device", "cpu", "--deterministic", *extra]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m convzoo ARGS`` in a fresh process with one thread."""
    return subprocess.run([sys.executable, "-m", "convzoo", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def exit_code(args: list[str]) -> int:
    """``main(args)``'s exit code, also when the argument parser refuses a value (SystemExit)."""
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code


def tensors(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run / which / "model.safetensors")


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def results(run: Path) -> list[tuple[str, ...]]:
    """The metrics that do not depend on timing."""
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr")
    return [tuple(row[k] for k in keys) for row in metrics(run)]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("data") / "cifar", 200)


@pytest.fixture(scope="module")
def run(cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(train_args(cifar, out)) == 0
    return out


def test_run_folder_holds_every_artefact(run, capsys):
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.csv", "curves.png", "last", "best"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert not any(n.startswith(".") for n in names), "temporary files left behind"
    for which in ("last", "best"):
        assert {p.name for p in (run / which).iterdir()} == {"model.safetensors", "state.pt"}
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "xception_cifar_tiny" and config["recipe"]["name"] == "fast"
    assert config["recipe"]["epochs"] == 2 and config["recipe"]["batch_size"] == 32
    assert config["train_images"] == 180 and config["val_images"] == 20
    assert config["data"]["val_fraction"] == 0.1 and config["data"]["split_seed"] == 0
    assert config["classes"] == embedded_cifar10().classes
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["partial"] is None
    assert state["loader"] == {"seed": 0, "epoch": 2, "step": 0, "workers": 0, "world_size": 1}
    assert state["optimizer"]["state"] and state["rng"].dtype == torch.uint8
    model = build_model(from_dict(config["recipe"]), 10)
    from convzoo.weights import load_weights

    load_weights(model, run / "last" / "model.safetensors")
    assert torch.equal(model.fc.weight, tensors(run)["fc.weight"])


def test_best_checkpoint_of_a_table_model_rebuilds_on_its_own(run, cifar, tmp_path, capsys):
    """The tiny model is built from a table of blocks given as JSON; its checkpoint still records the
    arguments, so load_checkpoint, eval and predict need neither --model nor the run's config."""
    checkpoint = run / "best" / "model.safetensors"
    model = load_checkpoint(checkpoint).eval()
    assert model.checkpoint_info.model_args == {"num_classes": 10, **json.loads(TINY)}
    assert model.class_names == embedded_cifar10().classes
    trained = build_model(from_dict(json.loads((run / "config.json").read_text())["recipe"]), 10).eval()
    load_model_weights(trained, run / "best")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))

    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "xception_cifar_tiny"
    alone = tmp_path / "alone.safetensors"
    shutil.copyfile(checkpoint, alone)
    assert main(["eval", str(run), "--data", str(cifar), "--json"]) == 0
    in_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(alone), "--data", str(cifar), "--json"]) == 0
    outside = json.loads(capsys.readouterr().out)
    assert (outside["top1"], outside["per_class"]) == (in_run["top1"], in_run["per_class"])

    image = tmp_path / "frog.png"
    Image.fromarray(embedded_cifar10().images[0].permute(1, 2, 0).numpy()).save(image)
    # predict in float32, compared at 1e-5 on any CPU
    assert main(["predict", "--weights", str(checkpoint), str(image), "--top", "1", "--json",
                 "--precision", "fp32"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]
    with torch.no_grad():
        probs = model(ImageTransform.from_model(model)([image])).softmax(1)
    assert top["label"] == model.class_names[int(probs.argmax())]
    assert top["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_epoch_summary_lines(cifar, tmp_path, capsys):
    assert main(train_args(cifar, tmp_path / "r", 1)) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("epoch 1/1"))
    for word in ("train loss", "acc", "val loss", "lr", "img/s"):
        assert word in line
    assert line.endswith("s")


def test_library_runs_report_through_logging_not_stdout(cifar, tmp_path, capsys, caplog):
    recipe = apply_settings(override(get_recipe("fast"), epochs=1, batch_size=32), [f"model_kwargs={TINY}"])
    out = tmp_path / "lib"
    with caplog.at_level(logging.INFO, logger="convzoo.train"):
        run = start(TrainOptions(recipe, data=str(cifar), out=out, device="cpu"))
        assert run.epoch == 0 and run.history == [] and (out / "config.json").is_file()
        assert not (out / "last").exists()
        assert run.fit() == out and run.epoch == 1
    assert capsys.readouterr().out == ""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("convzoo.train")]
    assert lines[0].startswith("training xception_cifar_tiny (fast recipe) on 180 images")
    assert lines[1].startswith("epoch 1/1") and lines[2].startswith("best val acc")
    again = resume(TrainOptions(resume_recipe(out, epochs=2), resume=out, device="cpu"))
    assert again.epoch == 1 and again.history == run.history and again.best == run.best


def test_start_and_resume_refuse_options_of_the_other(run, tmp_path):
    recipe = get_recipe("fast")
    with pytest.raises(ConfigError, match="resume\\(\\) continues"):
        start(TrainOptions(recipe, resume=run))
    with pytest.raises(ConfigError, match="set opts.resume"):
        resume(TrainOptions(recipe))
    with pytest.raises(ConfigError, match="data, weights cannot be set"):
        resume(TrainOptions(resume_recipe(run), resume=run, data="cifar10", weights=tmp_path / "w.pt"))


@pytest.mark.parametrize("package", ["tensorboard", "matplotlib"])
def test_training_without_an_extra_says_how_to_install_it(package, cifar, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what `import package` finds when it is not installed
    out = tmp_path / "r"
    assert main(train_args(cifar, out, 1)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"convzoo: error: convzoo train needs {package}, which is not installed: pip install 'convzoo[train]'"]
    assert not out.exists()


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    data = write_cifar(tmp_path / "cifar", 1000)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # Dropout makes the result depend on the global RNG state too, which the checkpoint restores.
    dropout = json.dumps({**json.loads(TINY), "drop_rate": 0.3})
    # Both runs in fresh processes with one thread: the same numerics, and nothing of this process's state.
    done = run_cli(train_args(data, reference, 3, "--set", f"model_kwargs={dropout}"))
    assert done.returncode == 0, done.stderr

    args = train_args(data, killed, 3, "--set", f"model_kwargs={dropout}")
    proc = subprocess.Popen([sys.executable, "-m", "convzoo", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/3"):
                break
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(killed / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 1, "the process was not killed during epoch 2"

    resumed = run_cli(["train", "--resume", str(killed)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stdout
    a, b = tensors(reference), tensors(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results(reference) == results(killed)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cifar, tmp_path, capsys):
    out = tmp_path / "nan"
    # The learning rate jumps to 5e10 after the first epoch.
    args = train_args(cifar, out, 3, "--set", "schedule=step", "--set", "milestones=1", "--set", "gamma=1e12",
                      "--set", "warmup_epochs=0")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became" in err[0] and "epoch 2" in err[0] and "epoch 1)" in err[0]
    assert torch.load(out / "last" / "state.pt", weights_only=True)["epoch"] == 1
    assert len(metrics(out)) == 1
    assert all(torch.isfinite(t).all() for t in tensors(out).values() if t.is_floating_point())


def test_fine_tune_new_classes_other_size_frozen_body(run, tmp_path):
    folder = tmp_path / "flowers"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("daisy", "rose", "tulip")):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            pixels = (rng.random((40, 48, 3)) * 80 + 60 * c).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    out = tmp_path / "ft"
    args = ["train", "--data", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--set", f"model_kwargs={TINY}", "--weights", str(run / "best"), "--freeze-epochs", "1",
            "--set", "val_fraction=0.25", "--device", "cpu"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["daisy", "rose", "tulip"] and config["input_size"] == [3, 32, 32]
    start, tuned = tensors(run, "best"), tensors(out)
    assert tuned["fc.weight"].shape == (3, 16)
    body = [k for k in start if not k.startswith("fc.")]
    assert all(torch.equal(start[k], tuned[k]) for k in body), "frozen body (and its BatchNorm statistics) changed"


def test_bf16_channels_last_on_cpu(cifar, tmp_path):
    out = tmp_path / "bf16"
    assert main(train_args(cifar, out, 1, "--bf16", "--channels-last")) == 0
    row = metrics(out)[0]
    assert np.isfinite(float(row["train_loss"])) and np.isfinite(float(row["val_loss"]))


def test_distributed_two_processes_match_one(cifar, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # NCHW: oneDNN's channels-last kernels round differently at batch 16 and 32, which 12 steps of
    # training grow to ~1e-3 in the weights.
    # fp32: bf16 (the default on CPUs with bf16 arithmetic) rounds differently at batch 16 and 32 too.
    assert main(train_args(cifar, single, 2, "--no-channels-last", "--no-bf16")) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "convzoo", *train_args(cifar, ddp, 2, "--no-channels-last", "--no-bf16")],
                          capture_output=True,
                          text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 2/2") == 1, "only rank 0 reports"
    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2
    a, b = tensors(single), tensors(ddp)
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-3, atol=1e-4), k
    for x, y in zip(metrics(single), metrics(ddp)):
        assert abs(float(x["train_loss"]) - float(y["train_loss"])) < 1e-4
        assert x["val_acc"] == y["val_acc"]


@pytest.mark.parametrize("case", ["recipe", "field", "epochs", "batch", "resume_missing", "resume_other",
                                  "data_missing", "resume_flag", "seed", "set_seed", "workers"])
def test_bad_input_is_one_line_and_exit_2(case, cifar, run, tmp_path, capsys):
    args = {
        "recipe": ["train", "--recipe", "no_such_recipe"],
        "field": ["train", "--set", "no_such_field=1"],
        "epochs": ["train", "--epochs", "0"],
        "batch": train_args(cifar, tmp_path / "b", 1, "--batch-size", "100000"),
        "resume_missing": ["train", "--resume", str(tmp_path / "nowhere")],
        "resume_other": ["train", "--resume", str(run), "--model", "resnet50"],
        "data_missing": ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")],
        "resume_flag": ["train", "--resume", str(run), "--lr", "0.1"],
        "seed": ["train", "--seed", "99999999999999999999999", "--data", str(tmp_path / "missing")],
        "set_seed": ["train", "--set", "seed=-1", "--data", str(tmp_path / "missing")],
        "workers": ["train", "--workers", "-1"],
    }[case]
    assert exit_code(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("convzoo: error:", "convzoo train: error:")), captured.err
    assert "Traceback" not in captured.err
    expected = {"recipe": "no_such_recipe", "field": "no_such_field", "epochs": "epochs", "batch": "100000",
                "resume_missing": "nowhere", "resume_other": "resnet50", "data_missing": "missing",
                "resume_flag": "--lr", "seed": "9223372036854775807", "set_seed": "9223372036854775807",
                "workers": "at least 0"}[case]
    assert expected in lines[0]
    assert not (tmp_path / "b").exists() and not (tmp_path / "m").exists()


def test_bad_input_in_a_fresh_process_has_no_traceback(tmp_path):
    proc = run_cli(["train", "--data", str(tmp_path / "missing")])
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_existing_run_folder_needs_overwrite_or_resume(cifar, run, tmp_path, capsys):
    assert main(train_args(cifar, run, 1)) == 2
    assert "--overwrite" in capsys.readouterr().err
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    assert main(train_args(cifar, other, 1, "--overwrite")) == 2
    assert (other / "keep.txt").exists()


def test_resume_a_finished_run_with_more_epochs(cifar, tmp_path):
    out = tmp_path / "r"
    assert main(train_args(cifar, out, 1)) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--deterministic"]) == 0
    assert [r["epoch"] for r in metrics(out)] == ["1", "2"]
    assert json.loads((out / "config.json").read_text())["recipe"]["epochs"] == 2


def test_defaults_are_recorded_and_a_resumed_run_keeps_its_layout(cifar, tmp_path):
    out = tmp_path / "layout"
    assert main(train_args(cifar, out, 1, "--no-channels-last")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["channels_last"] is False and config["compile"] is None
    assert config["bf16"] is bf16_pays(torch.device("cpu"))  # bf16 on CPUs with AMX-BF16 or AVX512-BF16
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["channels_last"] is False
    default = tmp_path / "default"
    assert main(train_args(cifar, default, 1)) == 0
    assert json.loads((default / "config.json").read_text())["channels_last"] is True


def test_metrics_read_every_few_steps_equal_metrics_read_every_step(cifar, tmp_path, monkeypatch):
    from convzoo.train import trainer

    every, sparse = tmp_path / "every", tmp_path / "sparse"
    assert main(train_args(cifar, every, 1)) == 0
    # What a CUDA device does: the sums stay on the device between reads.
    monkeypatch.setitem(trainer.SYNC_EVERY, "cpu", 4)
    assert main(train_args(cifar, sparse, 1)) == 0
    a, b = metrics(every)[0], metrics(sparse)[0]
    assert all(a[k] == b[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc"))


def test_l2_gradient_equals_the_penalty_gradient():
    from convzoo.train.build import kernels
    from convzoo.train.trainer import _add_l2_gradient

    torch.manual_seed(0)
    model = build_model(from_dict({"model": "xception_cifar_tiny"}), 10)
    x, l2 = torch.randn(4, 3, 32, 32), 5e-3
    weights = kernels(model)
    (model(x).square().sum() + l2 * sum(w.pow(2).sum() for w in weights)).backward()
    expected = [w.grad.clone() for w in weights]
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    _add_l2_gradient(weights, l2)
    assert all(torch.allclose(w.grad, e, rtol=1e-5, atol=1e-6) for w, e in zip(weights, expected))


def test_bad_compile_mode_is_rejected(cifar, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(train_args(cifar, tmp_path / "c", 1, "--compile", "turbo"))
    assert exit_.value.code == 2
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_cuda_training_defaults_to_bf16_and_resumes(cifar, tmp_path, compile_mode):
    out = tmp_path / "cuda"
    extra = ["--compile", compile_mode] if compile_mode else []
    args = ["train", "--data", str(cifar), "--out", str(out), "--epochs", "1", "--batch-size", "32",
            "--set", f"model_kwargs={TINY}", "--device", "cuda", *extra]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["bf16"] is torch.cuda.is_bf16_supported() and config["channels_last"] is True
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    rows = metrics(out)
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)


@pytest.mark.slow
def test_compiled_training_matches_eager(cifar, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(train_args(cifar, eager, 1)) == 0
    assert main(train_args(cifar, compiled, 1, "--compile", "reduce-overhead")) == 0
    assert json.loads((compiled / "config.json").read_text())["compile"] == "reduce-overhead"
    a, b = metrics(eager)[0], metrics(compiled)[0]
    assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-3
    assert abs(float(a["val_loss"]) - float(b["val_loss"])) < 1e-2
