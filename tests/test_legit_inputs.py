"""Issue 14: legitimate data is not refused. A CIFAR-10 python folder re-saved by Python 3 with pickle protocol
2 (which stores bytes through ``_codecs.encode``) loads, while a pickle referring to ``_codecs.decode`` or
``os.system`` is still refused; ``predict --weights RUN/best`` works right after a crash between the two
checkpoint renames, as ``eval`` and ``--resume`` do."""

from __future__ import annotations

import codecs
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import CLASSES10, Artefacts, Payload, error_line, run_in_process, train_argv, write_cifar_bin

PER_BATCH = 12


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("artefacts"))


def write_cifar_python3(folder: Path, binary_twin: Path) -> Path:
    """The CIFAR-10 python layout, each file ``pickle.dump(..., protocol=2)`` by Python 3 (bytes keys and
    strings, numpy arrays), holding the images of the binary folder ``binary_twin``."""
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        records = np.fromfile(binary_twin / f"{name}.bin", np.uint8).reshape(-1, 3073)
        files = [f"{name}_{i}.png".encode() for i in range(len(records))]
        batch = {b"batch_label": name.encode(), b"labels": records[:, 0].astype(int).tolist(),
                 b"data": records[:, 1:].copy(), b"filenames": files}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES10], b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@pytest.fixture(scope="module")
def cifar_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same images as a binary CIFAR-10 folder and as a Python 3 protocol-2 python folder."""
    root = tmp_path_factory.mktemp("protocol2")
    binary = write_cifar_bin(root / "cifar-10-batches-bin", 5 * PER_BATCH, PER_BATCH)
    python = write_cifar_python3(root / "cifar-10-batches-py", binary)
    assert b"_codecs\nencode" in (python / "test_batch").read_bytes(), "protocol 2 did not store bytes via _codecs"
    return binary, python


def eval_json(capsys, checkpoint: Path, data: Path) -> dict:
    shown = run_in_process(["eval", str(checkpoint), "--data", str(data), "--json", "--device", "cpu"], capsys)
    assert shown.code == 0, shown.err
    return json.loads(shown.out)


def test_python3_protocol_2_cifar_folder_loads(cifar_pair, artefacts, capsys):
    binary, python = cifar_pair
    from_python = eval_json(capsys, artefacts.checkpoint, python)
    from_binary = eval_json(capsys, artefacts.checkpoint, binary)
    assert from_python["n"] == PER_BATCH
    assert {k: from_python[k] for k in ("top1", "top5", "per_class")} == \
           {k: from_binary[k] for k in ("top1", "top5", "per_class")}


def test_python3_protocol_2_cifar_folder_trains(cifar_pair, tmp_path, capsys):
    shown = run_in_process(train_argv(cifar_pair[1], tmp_path / "run", 1, "--batch-size", "16"), capsys)
    assert shown.code == 0, shown.err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_images"] == 54


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("func, named", [(codecs.decode, "_codecs.decode"), (os.system, "system")])
def test_other_globals_are_still_refused(func, named, protocol, cifar_pair, artefacts, tmp_path, capsys):
    """Protocol 4 stores bytes natively: the only global its pickle refers to is the payload's."""
    folder = Path(shutil.copytree(cifar_pair[1], tmp_path / "cifar-10-batches-py"))
    meta = pickle.loads((folder / "batches.meta").read_bytes())
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    marker = tmp_path / "pwned"
    args = (b"x", "latin1") if func is codecs.decode else (f"touch {marker}",)
    payload = {b"data": Payload(func, *args), b"labels": []}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=protocol))
    shown = run_in_process(["eval", str(artefacts.checkpoint), "--data", str(folder), "--device", "cpu"], capsys)
    error_line(shown, str(folder / "test_batch"), named)
    assert not marker.exists()


def test_predict_after_a_crash_between_the_checkpoint_renames(artefacts, tmp_path, capsys):
    """write_checkpoint renames best/ to .best.old, then the new folder to best/: a crash in between leaves
    only .best.old, which eval and --resume already use."""
    run = Path(shutil.copytree(artefacts.run, tmp_path / "run"))
    (run / "best").rename(run / ".best.old")
    image = str(artefacts.image)
    crashed = run_in_process(["predict", "--weights", str(run / "best"), image, "--json", "--top", "3",
                              "--device", "cpu"], capsys)
    assert crashed.code == 0, crashed.err
    intact = run_in_process(["predict", "--weights", str(artefacts.run / "best"), image, "--json", "--top", "3",
                             "--device", "cpu"], capsys)
    assert intact.code == 0, intact.err
    assert json.loads(crashed.out)["predictions"] == json.loads(intact.out)["predictions"]
    evaluated = run_in_process(["eval", str(run), "--json", "--device", "cpu"], capsys)
    assert evaluated.code == 0, evaluated.err
