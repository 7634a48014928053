"""A run folder has one writer, and a failed write stops a run in one line without losing work: the lock on
run.lock, a second writer or resume refused with the holder's pid, a killed holder never blocking a resume,
full disks at each kind of write (simulated by making a stdlib or library write raise ENOSPC), read-only
folders and --out through a file."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convzoo.cli import main
from convzoo.errors import OutputError
from convzoo.train import TrainOptions, start
from convzoo.train.recipes import apply_settings, get_recipe, override
from convzoo.train.runfolder import LOCK_FILE, RunLock, find_checkpoint, newest_checkpoint, read_state

from test_train import ENV, TINY, metrics, run_cli, train_args, write_cifar

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("data") / "cifar", 200)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convzoo: error: "), err
    assert "Traceback" not in err[0] and len(err[0]) <= 300 + len("convzoo: error: ")
    return err[0]


def fail_when(monkeypatch, owner, name: str, when) -> None:
    """Make ``owner.name`` raise ENOSPC from the call for which ``when(call number from 1, *args)`` is true."""
    original, calls, failed = getattr(owner, name), [0], [False]

    def failing(*args, **kwargs):
        calls[0] += 1
        failed[0] = failed[0] or when(calls[0], *args)
        if failed[0]:
            raise NO_SPACE
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


def from_call(n: int):
    return lambda call, *args: call >= n


# --- one writer -----------------------------------------------------------------------------------------

def test_second_training_into_a_running_folder_is_refused_with_the_holders_pid(tmp_path, capsys):
    data = write_cifar(tmp_path / "cifar", 1000)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "convzoo", *train_args(data, out, 4)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        created = json.loads((out / "config.json").read_text())["created"]
        assert main(train_args(data, out, 1)) == 2
        line = one_error_line(capsys)
        assert str(out) in line and f"pid {first.pid}" in line and "choose another --out" in line
        assert main(train_args(data, out, 1, "--overwrite")) == 2
        assert f"pid {first.pid}" in one_error_line(capsys)
        assert main(["train", "--resume", str(out)]) == 2
        assert f"pid {first.pid}" in one_error_line(capsys)
        assert first.wait(300) == 0, first.stderr.read()
    finally:
        first.kill()
    assert json.loads((out / "config.json").read_text())["created"] == created
    assert [r["epoch"] for r in metrics(out)] == ["1", "2", "3", "4"]


def test_a_lock_left_by_a_killed_process_does_not_block_resume(cifar, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(cifar, out, 1)) == 0
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from convzoo.train.runfolder import RunLock; "
                               f"lock = RunLock.acquire({str(out)!r}, ''); print('held', flush=True); time.sleep(120)"],
                              env={**ENV, "PYTHONPATH": os.pathsep.join(sys.path)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"in use by another convzoo train \(pid {holder.pid}\)"):
            RunLock.acquire(out, "")
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        holder.kill()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in metrics(out)] == ["1", "2"]
    assert (out / LOCK_FILE).is_file()


def test_the_lock_is_held_while_training_and_given_up_after(cifar, tmp_path):
    recipe = apply_settings(override(get_recipe("fast"), epochs=1, batch_size=32), [f"model_kwargs={TINY}"])
    out = tmp_path / "lib"
    run = start(TrainOptions(recipe, data=str(cifar), out=out, device="cpu"))
    with pytest.raises(OutputError, match=rf"{out} is in use by another convzoo train \(pid {os.getpid()}\)"):
        RunLock.acquire(out, "")
    run.fit()
    RunLock.acquire(out, "").release()


# --- write errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["last", "best", "metrics", "tensorboard", "curves"])
def test_full_disk_stops_in_one_line_and_keeps_the_last_good_checkpoint(where, cifar, tmp_path, capsys, monkeypatch):
    """Epoch 1 writes best/ (state.pt: torch.save call 1), then last/ (call 2); epoch 2 calls 3 (best, when it
    improves) or 3/4. Each failure leaves a complete checkpoint whose advice is --resume, never --overwrite."""
    from matplotlib.figure import Figure
    from tensorboard.summary.writer.record_writer import RecordWriter

    out = tmp_path / "run"
    patch = {"last": (torch, "save", from_call(2)), "best": (torch, "save", from_call(3)),
             "metrics": (os, "replace", lambda call, src, dst: str(dst).endswith("metrics.csv") and call > 10),
             "tensorboard": (RecordWriter, "write", from_call(4)), "curves": (Figure, "savefig", from_call(1))}[where]
    fail_when(monkeypatch, *patch)
    assert main(train_args(cifar, out, 3, "--set", "label_smoothing=0", "--set", "lr=1e-4")) == 2
    line = one_error_line(capsys)
    monkeypatch.undo()
    named = {"last": f"checkpoint {out / 'last'}", "best": "checkpoint", "metrics": str(out / "metrics.csv"),
             "tensorboard": f"TensorBoard events in {out}", "curves": str(out / "curves.png")}[where]
    assert named in line and "No space left on device" in line, line
    assert ".tmp" not in line and "--overwrite" not in line and f"--resume {out}" in line
    kept = newest_checkpoint(out)
    assert kept is not None and f"{kept.name}/ (epoch {read_state(kept)['epoch']}) is kept: free space" in line
    assert not any(p.name.endswith(".tmp") for p in out.iterdir()), "a temporary checkpoint folder was left"
    assert main(["train", "--resume", str(out)]) == 0
    assert [r["epoch"] for r in metrics(out)] == ["1", "2", "3"]


def test_full_disk_before_any_checkpoint_advises_a_fresh_start(cifar, tmp_path, monkeypatch):
    recipe = apply_settings(override(get_recipe("fast"), epochs=1, batch_size=32), [f"model_kwargs={TINY}"])
    out = tmp_path / "run"
    run = start(TrainOptions(recipe, data=str(cifar), out=out, device="cpu"))
    fail_when(monkeypatch, os, "fsync", from_call(1))  # the first write of model.safetensors
    with pytest.raises(OutputError) as info:
        run.fit()
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {out / 'best'}: No space left on device; no checkpoint")
    assert f"--out {out} --overwrite" in message and "\n" not in message
    assert find_checkpoint(out / "best") is None and find_checkpoint(out / "last") is None


def test_read_only_run_folder_is_one_line(cifar, tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "ro" / "run"
    assert main(train_args(cifar, out, 1)) == 2
    assert f"cannot create folder {out}: Read-only file system" in one_error_line(capsys)


def test_unwritable_out_is_refused_before_loading_the_data(tmp_path, capsys, monkeypatch):
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **k: Path(path) != tmp_path and access(path, mode, **k))
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    assert f"cannot create folder {tmp_path / 'run'}: {tmp_path} is not writable" in one_error_line(capsys)


def test_out_through_a_file_is_refused_at_once(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "file" / "run")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"convzoo: error: cannot create folder {tmp_path / 'file' / 'run'}: "
                                   f"{tmp_path / 'file'} is a file")
