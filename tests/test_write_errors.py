"""Issue 14: filesystem errors while writing are one line naming the user's path and the reason; a full disk
never costs a complete checkpoint, and the advice after it never destroys one; checkpoints follow the umask.

A full disk is simulated where the bytes leave Python: ``torch.save``, safetensors' ``save``/``save_file`` and
``os.fsync`` of a checkpoint file raise ``OSError(ENOSPC)`` once a condition on the run folder holds
(whichever of them the writer uses; nothing inside convzoo is patched).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Callable

import pytest
import safetensors.torch
import torch

from bad_inputs import (Artefacts, error_line, run_in_process, train_argv)

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
CHECKPOINT_FILE = re.compile(r"safetensors|state\.pt")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("artefacts"))


class FullDisk:
    """Checkpoint writes fail with ENOSPC while ``full(run)`` is true; ``hits`` counts the failures."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, run: Path, full: Callable[[Path], bool]) -> None:
        self.run, self.full, self.hits = run, full, 0
        for module, name in ((torch, "save"), (safetensors.torch, "save"), (safetensors.torch, "save_file")):
            monkeypatch.setattr(module, name, self._failing(getattr(module, name)))
        fsync = os.fsync

        def failing_fsync(fd: int) -> None:
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = ""
            if CHECKPOINT_FILE.search(Path(name).name):
                self._check()
            fsync(fd)

        monkeypatch.setattr(os, "fsync", failing_fsync)

    def _check(self) -> None:
        if self.full(self.run):
            self.hits += 1
            raise OSError(errno.ENOSPC, NO_SPACE)

    def _failing(self, func: Callable) -> Callable:
        def failing(*args, **kwargs):
            self._check()
            return func(*args, **kwargs)

        return failing


def complete(checkpoint: Path) -> bool:
    return (checkpoint / "model.safetensors").is_file() and (checkpoint / "state.pt").is_file()


def epoch_of(checkpoint: Path) -> int:
    return torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)["epoch"]


def test_full_disk_at_the_first_checkpoint_is_one_line(artefacts, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        disk = FullDisk(m, run, lambda run: True)
        shown = run_in_process(train_argv(artefacts.cifar, run, 1), capsys)
    assert disk.hits, "the simulated full disk was never reached"
    error_line(shown, str(run), NO_SPACE, quiet=False)


# When the disk fills: after epoch 1's best/ is complete (the first last/ fails), or at epoch 2.
FILLS = {"after-first-best": lambda run: complete(run / "best"),
         "at-epoch-2": lambda run: complete(run / "last")}


@pytest.mark.parametrize("when", list(FILLS))
def test_full_disk_keeps_the_good_checkpoint_and_resume_never_destroys_it(when, artefacts, tmp_path, capsys,
                                                                          monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        disk = FullDisk(m, run, FILLS[when])
        shown = run_in_process(train_argv(artefacts.cifar, run, 3), capsys)
    assert disk.hits, "the simulated full disk was never reached"
    error_line(shown, str(run), NO_SPACE, quiet=False)
    assert complete(run / "best") and epoch_of(run / "best") == 1
    best = (run / "best" / "model.safetensors").read_bytes()

    evaluated = run_in_process(["eval", str(run), "--json", "--device", "cpu"], capsys)
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["epoch"] == 1
    if when == "at-epoch-2":
        evaluated = run_in_process(["eval", str(run), "--checkpoint", "last", "--json", "--device", "cpu"], capsys)
        assert evaluated.code == 0, evaluated.err
        assert json.loads(evaluated.out)["epoch"] == 1

    resumed = run_in_process(["train", "--resume", str(run)], capsys)
    if resumed.code == 0:
        assert complete(run / "last") and epoch_of(run / "last") == 3
        return
    line = error_line(resumed, str(run))
    assert "--overwrite" not in line, "the advice would delete the complete best/"
    assert (run / "best" / "model.safetensors").read_bytes() == best


def test_full_disk_while_converting_weights_is_one_line(artefacts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "converted.safetensors"
    weights = artefacts.tiny_weights  # made before the disk fills
    with monkeypatch.context() as m:
        disk = FullDisk(m, out, lambda _: True)
        shown = run_in_process(["weights", "convert", str(weights), str(out), "--model",
                                "xception_cifar_tiny"], capsys)
    assert disk.hits, "the simulated full disk was never reached"
    error_line(shown, str(out), NO_SPACE)
    assert not out.exists() and list(tmp_path.iterdir()) == [], "a failed write left files behind"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_follow_the_umask(umask, mode, artefacts, tmp_path, capsys):
    run, converted = tmp_path / "run", tmp_path / "converted.safetensors"
    previous = os.umask(umask)
    try:
        trained = run_in_process(train_argv(artefacts.cifar, run, 1), capsys)
        convert = run_in_process(["weights", "convert", str(artefacts.tiny_weights), str(converted), "--model",
                                  "xception_cifar_tiny"], capsys)
    finally:
        os.umask(previous)
    assert trained.code == 0, trained.err
    assert convert.code == 0, convert.err
    files = [run / c / f for c in ("last", "best") for f in ("model.safetensors", "state.pt")]
    files += [run / "config.json", run / "metrics.csv", converted]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {name: oct(mode) for name in modes}
