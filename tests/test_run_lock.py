"""Issue 14: a run folder has one writer, held for the whole run. A second training into it, or a --resume
of a run that is still going, is refused with one line saying the folder is in use by another process; a
lock left by a killed process never blocks a later --resume. Real processes: ``python -m convzoo``."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bad_inputs import ENV, Shown, error_line, run_in_fresh_process, train_argv, write_cifar_bin

IN_USE = re.compile(r"in use|another (convzoo )?process|locked|still running|being written", re.IGNORECASE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """600 CIFAR-like training images: an epoch of the tiny model takes about a second."""
    return write_cifar_bin(tmp_path_factory.mktemp("lock") / "cifar", 600)


class Training:
    """``python -m convzoo ARGV`` running in the background; its stdout lines collected as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "convzoo", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, prefix: str, timeout: float = 240) -> None:
        """Block until a stdout line starts with ``prefix``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if line.startswith(prefix):
                return
            if line == "":
                raise AssertionError(f"ended before {prefix!r}: exit {self.proc.wait()}, {self.proc.stderr.read()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)


def seed_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["recipe"]["seed"]


def epochs_in(run: Path) -> int:
    """The epochs metrics.csv records."""
    return (run / "metrics.csv").read_text().count("\n") - 1


def epoch_of(checkpoint: Path) -> int:
    return torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)["epoch"]


@pytest.mark.slow
def test_a_running_training_holds_its_folder_until_it_is_killed(data, tmp_path):
    run = tmp_path / "run"
    first = Training(train_argv(data, run, 500, "--seed", "1"))
    try:
        first.wait_for("epoch 1/")
        second = run_in_fresh_process(train_argv(data, run, 2, "--seed", "2", "--overwrite"))
        error_line(second, str(run), IN_USE)
        resume = run_in_fresh_process(["train", "--resume", str(run)])
        error_line(resume, str(run), IN_USE)
        assert first.proc.poll() is None, "the first training stopped"
        assert seed_of(run) == 1, "the refused training changed the run folder"
    finally:
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL

    # metrics.csv is written after the checkpoints: the kill may have come between them (one epoch more).
    target = epochs_in(run) + 2
    resumed = run_in_fresh_process(["train", "--resume", str(run), "--epochs", str(target)])
    assert resumed.code == 0, resumed.err
    assert "resuming after epoch" in resumed.out
    assert epoch_of(run / "last") == epochs_in(run) == target and seed_of(run) == 1


@pytest.mark.slow
def test_two_trainings_started_together_one_runs_the_other_is_refused(data, tmp_path):
    run = tmp_path / "run"
    trainings = [Training(train_argv(data, run, 3, "--seed", "1"))]
    time.sleep(0.3)
    trainings.append(Training(train_argv(data, run, 3, "--seed", "2")))
    try:
        codes = [t.proc.wait(300) for t in trainings]
    finally:
        for t in trainings:
            t.kill()
    assert sorted(codes) == [0, 2], f"exit codes {codes}: expected one run and one refusal"
    winner, loser = (trainings[0], trainings[1]) if codes[0] == 0 else (trainings[1], trainings[0])
    refused = error_line_of(loser)
    assert IN_USE.search(refused), refused
    assert seed_of(run) == (1 if winner is trainings[0] else 2), "config.json is not the finished run's"
    assert epoch_of(run / "last") == 3
    assert epochs_in(run) == 3


def error_line_of(training: Training) -> str:
    """The refused process's one error line (checked against the contract; its stdout may not be read)."""
    out = "".join(iter(lambda: training.lines.get(timeout=10), ""))
    return error_line(Shown(training.proc.returncode, out, training.proc.stderr.read()))
