"""A recipe's wall-clock budget: the run times its probe epochs, then trains the epochs that fit (at most the
recipe's), records them in config.json, and a resumed run keeps them."""

from __future__ import annotations

import json

import pytest

from convzoo.cli import main
from convzoo.train.recipes import BUDGET_PROBE_EPOCHS, budget_epochs, get_recipe, override
from convzoo.train.trainer import resume_recipe
from test_train import metrics, train_args, write_cifar


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("data") / "cifar", 100, n_test=20)


def test_epochs_that_fit_are_counted_after_the_probe():
    recipe = override(get_recipe("fast"), epochs=40, time_budget_min=1.0, warmup_epochs=2.0)
    # 60 s budget, 20 s spent on the probe, 10 s per epoch: 4 more after the probe's epochs.
    assert budget_epochs(recipe, 20.0, 10.0) == BUDGET_PROBE_EPOCHS + 4
    assert budget_epochs(override(recipe, epochs=5), 20.0, 10.0) == 5
    # Over budget: one epoch past the warm-up (the learning rate reaches its peak and decays) ...
    assert budget_epochs(recipe, 90.0, 10.0) == 3
    assert budget_epochs(override(recipe, warmup_epochs=5.0), 90.0, 10.0) == 6
    # ... and past the frozen epochs (the body trains at least one epoch).
    assert budget_epochs(override(recipe, freeze_epochs=7), 90.0, 10.0) == 8
    assert budget_epochs(override(recipe, epochs=4, freeze_epochs=7), 90.0, 10.0) == 4


@pytest.mark.parametrize("minutes, cap, expected", [(0.0001, 5, BUDGET_PROBE_EPOCHS + 1), (600, 3, 3)])
def test_run_trains_what_fits_and_records_it(cifar, tmp_path, capsys, minutes, cap, expected):
    out = tmp_path / "run"
    assert main(train_args(cifar, out, cap, "--set", f"time_budget_min={minutes}", "--set", "warmup_epochs=2")) == 0
    said = capsys.readouterr().out
    assert f"time budget {minutes:g} min: {expected} epochs" in said
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["epochs"] == expected and config["recipe"]["time_budget_min"] == 0
    assert config["time_budget"]["minutes"] == minutes and config["time_budget"]["epochs"] == expected
    assert config["time_budget"]["epoch_seconds"] > 0
    assert [int(r["epoch"]) for r in metrics(out)] == list(range(1, expected + 1))
    assert (out / "curves.png").is_file()

    # A resumed run trains the epochs it fixed (no second probe); --epochs still extends it.
    assert main(["train", "--resume", str(out), "--epochs", str(expected + 1)]) == 0
    assert "time budget" not in capsys.readouterr().out
    assert [int(r["epoch"]) for r in metrics(out)] == list(range(1, expected + 2))
    assert json.loads((out / "config.json").read_text())["time_budget"]["epochs"] == expected

    # A run stopped before the probe ended still has its budget: --epochs on resume turns it off too.
    config = json.loads((out / "config.json").read_text())
    config["recipe"]["time_budget_min"] = minutes
    (out / "config.json").write_text(json.dumps(config))
    assert resume_recipe(out, epochs=9).time_budget_min == 0 and resume_recipe(out).time_budget_min == minutes


def test_epochs_the_user_names_are_trained(cifar, tmp_path):
    """The fast recipe has a budget; --epochs (or --set epochs=N) trains that many epochs instead."""
    for flag in (["--epochs", "3"], ["--set", "epochs=3"]):
        out = tmp_path / flag[0].strip("-")
        args = train_args(cifar, out, 3)
        args[args.index("--epochs"):args.index("--epochs") + 2] = flag
        assert main(args) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["recipe"]["time_budget_min"] == 0 and "time_budget" not in config
        assert len(metrics(out)) == 3


def test_budget_with_a_schedule_it_would_change_is_refused(cifar, tmp_path, capsys):
    code = main(train_args(cifar, tmp_path / "run", 4, "--set", "time_budget_min=1", "--set", "warmup_epochs=0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "time_budget_min" in err[0] and "warmup_epochs=0" in err[0]
