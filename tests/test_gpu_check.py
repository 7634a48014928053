"""scripts/gpu_check.sh runs its stages, logs each one, and keeps going past a failing step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the stages run for real: make gpu-check")
def test_gpu_check_runs_stages_and_records_them(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "tests", "bench-cifar"], capture_output=True,
                          text=True, env=env, timeout=600)
    summary = (tmp_path / "summary.md").read_text()
    assert "| tests | 0 |" in summary, summary
    assert f"torch {torch.__version__}" in (tmp_path / "device.txt").read_text()
    assert "skipped" in (tmp_path / "tests.log").read_text()
    assert "| bench_cifar_slim | 2 |" in summary, "without a GPU the CUDA bench fails in one line"
    assert proc.returncode == 1 and "1 failed step(s)" in proc.stdout
    assert "no CUDA device is available" in (tmp_path / "bench_cifar_slim.log").read_text()
