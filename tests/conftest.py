"""Shared test setup: Keras runs on the torch backend; tests use few threads and fixed seeds."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_restore_determinism():
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(False)
