"""The benchmark runs and prints a well-formed table on a tiny input (it is not a timing test)."""

import json
import subprocess
import sys

import pytest
import torch

import convzoo
from convzoo.bench import _jobs, results_table, run_bench
from convzoo.cli import main
from convzoo.optimize import fuse_batchnorm, optimize_for_inference


def test_run_bench_rows_and_ratios():
    logs = []
    result = run_bench(["resnext50_32x4d"], batch_size=2, input_size=(32, 32), modes=("infer", "train"),
                       runtimes=("eager", "optimized"), against=("timm",), device="cpu", warmup=0, repeats=1,
                       log=logs.append)
    assert result.matmul.gflops > 0 and result.matmul.label == "fp32 matmul 2048^3"
    assert result.device == f"cpu ({torch.get_num_threads()} threads)"
    rows = result.rows
    impls = [(r.mode, r.impl) for r in rows]
    assert impls == [("infer", "convzoo eager"), ("infer", "convzoo optimized"), ("infer", "timm NCHW"),
                     ("infer", "timm channels_last"), ("train", "convzoo eager"), ("train", "timm NCHW"),
                     ("train", "timm channels_last")]
    for r in rows:
        assert r.img_per_s > 0 and r.gmac_per_img > 0
        assert (r.ratio is not None) == r.impl.startswith("convzoo")
    events = [line.split(": ")[0].strip() for line in logs[1:]]
    assert events == ["resnext50_32x4d infer timm NCHW", "resnext50_32x4d infer timm channels_last",
                      "resnext50_32x4d train timm NCHW", "resnext50_32x4d train timm channels_last",
                      "convzoo rows in the trainer's process state",
                      "resnext50_32x4d infer convzoo eager", "resnext50_32x4d infer convzoo optimized",
                      "resnext50_32x4d train convzoo eager"]
    table = results_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)


@pytest.mark.parametrize("name, impls", [
    ("xception", ["timm NCHW", "timm channels_last", "keras (torch backend)"]),
    ("xception_timm", ["timm NCHW", "timm channels_last", "keras (torch backend)"]),
    ("inception_v3_keras", ["timm NCHW", "timm channels_last", "keras (torch backend)"]),
    ("resnext50_32x4d", ["timm NCHW", "timm channels_last"]),
    ("resnext29_32x4d", []),
])
def test_references_are_the_same_network_in_timm_and_keras(name, impls):
    """The registry's timm_name/keras_app: conventions may differ (xception beside timm's legacy_xception)."""
    jobs = _jobs(name, "infer", torch.zeros(1, 3, 32, 32), 1, ("eager",), ("timm", "keras"))
    assert [j.impl for j in jobs] == ["convzoo eager", *impls]


def test_run_bench_against_plain():
    rows = run_bench(["xception_cifar_tiny"], batch_size=2, input_size=(32, 32), modes=("train",),
                     runtimes=("eager", "channels_last"), against=("plain",), device="cpu", warmup=0, repeats=1,
                     log=lambda s: None).rows
    assert [r.impl for r in rows] == ["convzoo eager", "convzoo channels_last", "plain PyTorch NCHW"]
    plain = rows[-1]
    assert plain.ratio is None and plain.img_per_s > 0
    for r in rows[:2]:
        assert r.ratio == pytest.approx(r.img_per_s / plain.img_per_s)


def test_bench_cli_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(["bench", "resnet50v2", "--input-size", "32", "32", "--batch-size", "1", "--repeats", "1",
                 "--warmup", "0", "--against", "keras", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["device"] == f"cpu ({torch.get_num_threads()} threads)" and data["torch"] == torch.__version__
    assert data["matmul_dtype"] == "fp32" and data["matmul_n"] == 2048 and data["matmul_gflops"] > 0
    assert [r["impl"] for r in data["rows"]] == ["convzoo eager", "convzoo optimized", "keras (torch backend)"]
    assert "| resnet50v2 | keras (torch backend) | infer | 1 |" in capsys.readouterr().out


def test_bench_rejects_unknown_runtime(capsys):
    assert main(["bench", "resnet50", "--runtime", "turbo"]) == 2
    assert "runtime must be one of" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no CUDA device is present")
def test_bench_cuda_without_gpu_is_one_line_error(capsys):
    assert main(["bench", "xception_cifar_tiny", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == "convzoo: error: --device cuda: no CUDA device is available\n"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_bench_on_cuda():
    result = run_bench(["xception_cifar_tiny"], batch_size=8, input_size=(32, 32), modes=("infer", "train"),
                       runtimes=("eager", "bf16"), against=("plain",), device="cuda", warmup=1, repeats=2,
                       log=lambda s: None)
    assert result.device == torch.cuda.get_device_name() and result.matmul.dtype == "bf16"
    plain = ["plain PyTorch NCHW", "plain PyTorch bf16 channels_last", "plain PyTorch bf16 channels_last compiled"]
    assert [(r.mode, r.impl) for r in result.rows] == [
        (mode, impl) for mode in ("infer", "train") for impl in ["convzoo eager", "convzoo bf16", *plain]]
    for r in result.rows:
        assert r.batch == 8 and r.img_per_s > 0 and 0 < r.min_ms <= r.median_ms <= r.max_ms
        assert (r.ratio is not None) == r.impl.startswith("convzoo")


def test_fused_model_equals_unfused():
    model = convzoo.create_model("xception_cifar_slim_thinner").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-4)
    v2 = fuse_batchnorm(convzoo.create_model("resnet50v2").eval())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in v2.modules()) == 17  # pre-activations stay


RSS_AFTER_FREE = """
import sys, torch
from convzoo.optimize import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "tuned" else False
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
x = torch.ones(64 << 20)
del x
print(tuned, (rss() - before) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_allocator_keeps_freed_memory():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", int(out[1])

    tuned, kept_mib = run("default")
    assert not tuned and kept_mib < 16, "by default a freed 256 MiB tensor goes back to the OS"
    tuned, kept_mib = run("tuned")
    assert tuned and kept_mib >= 250, "tuned, the process keeps it for the next step"
