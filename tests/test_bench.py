"""The benchmark runs and prints a well-formed table on a tiny input (it is not a timing test)."""

import json
import subprocess
import sys

import pytest
import torch

import convzoo
from convzoo import hardware
from convzoo.bench import (ANCHORS, Row, _check_choices, _choices, _Exports, _jobs, _set_ratios, default_choices,
                           results_table, run_bench)
from convzoo.errors import ConfigError, MissingDependencyError
from convzoo.cli import main
from convzoo.optimize import fuse_batchnorm, optimize_for_inference


def test_run_bench_rows_and_ratios():
    logs = []
    result = run_bench(["resnext50_32x4d"], batch_size=2, input_size=(32, 32), modes=("infer", "train"),
                       runtimes=("eager", "optimized"), precisions=("fp32",), against=("timm",), device="cpu",
                       warmup=0, repeats=1, log=logs.append)
    assert list(result.matmuls) == ["fp32"] and result.matmuls["fp32"].gflops > 0
    assert result.matmuls["fp32"].label == "fp32 matmul 2048^3"
    assert result.device == f"cpu ({torch.get_num_threads()} threads)"
    rows = result.rows
    impls = [(r.mode, r.impl) for r in rows]
    assert impls == [("infer", "convzoo eager fp32"), ("infer", "convzoo optimized fp32"), ("infer", "timm NCHW"),
                     ("infer", "timm channels_last"), ("train", "convzoo eager fp32"), ("train", "timm NCHW"),
                     ("train", "timm channels_last")]
    for r in rows:
        assert r.img_per_s > 0 and r.gmac_per_img > 0 and r.ceiling == "fp32 matmul 2048^3"
        assert (r.ratio is not None) == r.impl.startswith("convzoo")
    events = [line.split(": ")[0].strip() for line in logs[1:]]
    assert events == ["resnext50_32x4d infer timm NCHW", "resnext50_32x4d infer timm channels_last",
                      "resnext50_32x4d train timm NCHW", "resnext50_32x4d train timm channels_last",
                      "convzoo rows in the trainer's process state",
                      "resnext50_32x4d infer convzoo eager fp32", "resnext50_32x4d infer convzoo optimized fp32",
                      "resnext50_32x4d train convzoo eager fp32"]
    table = results_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)


TIMM_BF16 = ["timm NCHW", "timm channels_last", "timm bf16 channels_last", "OpenVINO bf16 on timm"]


@pytest.mark.parametrize("name, impls", [
    ("xception", [*TIMM_BF16, "keras (torch backend)"]),
    ("xception_timm", [*TIMM_BF16, "keras (torch backend)"]),
    ("inception_v3_keras", [*TIMM_BF16, "keras (torch backend)"]),
    ("resnext50_32x4d", TIMM_BF16),
    ("resnext29_32x4d", []),
])
def test_references_are_the_same_network_in_timm_openvino_and_keras(tmp_path, name, impls):
    """The registry's timm_name/keras_app: conventions may differ (xception beside timm's legacy_xception);
    the bf16 references where the run has bf16 rows."""
    x = torch.zeros(1, 3, 32, 32)
    jobs = _jobs(name, "infer", x, 1, ("eager",), ("fp32", "bf16"), ("timm", "openvino", "keras"), _Exports(tmp_path))
    assert [j.impl for j in jobs] == ["convzoo eager fp32", "convzoo eager bf16", *impls]
    fp32_only = _jobs(name, "infer", x, 1, ("eager",), ("fp32",), ("timm", "openvino"), _Exports(tmp_path))
    assert [j.impl for j in fp32_only][1:] == [i.replace("bf16", "fp32") for i in impls
                                               if i not in ("timm bf16 channels_last", "keras (torch backend)")]


def test_run_bench_against_plain():
    rows = run_bench(["xception_cifar_tiny"], batch_size=2, input_size=(32, 32), modes=("train",),
                     runtimes=("eager", "channels_last"), precisions=("fp32",), against=("plain",), device="cpu",
                     warmup=0, repeats=1, log=lambda s: None).rows
    assert [r.impl for r in rows] == ["convzoo eager fp32", "convzoo channels_last fp32", "plain PyTorch NCHW"]
    plain = rows[-1]
    assert plain.ratio is None and plain.img_per_s > 0
    for r in rows[:2]:
        assert r.ratio == pytest.approx(r.img_per_s / plain.img_per_s)


def test_bench_cli_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(["bench", "resnet50v2", "--input-size", "32", "32", "--batch-size", "1", "--repeats", "1",
                 "--warmup", "0", "--runtime", "eager,optimized", "--precision", "fp32", "--against", "keras",
                 "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["device"] == f"cpu ({torch.get_num_threads()} threads)" and data["torch"] == torch.__version__
    assert data["matmuls"]["fp32"]["dtype"] == "fp32" and data["matmuls"]["fp32"]["n"] == 2048
    assert data["matmuls"]["fp32"]["gflops"] > 0 and data["load_average"] >= 0
    assert [r["impl"] for r in data["rows"]] == ["convzoo eager fp32", "convzoo optimized fp32",
                                                 "keras (torch backend)"]
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
                       runtimes=("eager", "channels_last"), precisions=("fp32", "bf16"), against=("plain",),
                       device="cuda", warmup=1, repeats=2, log=lambda s: None)
    assert result.device == torch.cuda.get_device_name()
    assert {m.label for m in result.matmuls.values()} == {"bf16 matmul 8192^3"}
    plain = ["plain PyTorch NCHW", "plain PyTorch bf16 channels_last", "plain PyTorch bf16 channels_last compiled"]
    convzoo_rows = [f"convzoo {r} {p}" for r in ("eager", "channels_last") for p in ("fp32", "bf16")]
    assert [(r.mode, r.impl) for r in result.rows] == [
        (mode, impl) for mode in ("infer", "train") for impl in [*convzoo_rows, *plain]]
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


# --- runtimes x precisions, ceilings, anchors (issue 16) ------------------------------------------------------

def test_low_precision_rows_and_their_ceilings():
    """Each runtime in each precision it runs, each row measured against the matmul of its precision."""
    pytest.importorskip("nncf")
    result = run_bench(["xception_cifar_tiny"], batch_size=2, input_size=(32, 32),
                       runtimes=("optimized", "onnxruntime", "openvino"), precisions=("fp32", "bf16", "int8"),
                       against=(), device="cpu", warmup=0, repeats=1, log=lambda s: None)
    assert {p: m.label for p, m in result.matmuls.items()} == {
        "fp32": "fp32 matmul 2048^3", "bf16": "bf16 matmul 2048^3", "int8": "int8 matmul 2048^3"}
    assert [(r.impl, r.precision) for r in result.rows] == [
        (f"convzoo {r} {p}", p) for r, p in [("optimized", "fp32"), ("optimized", "bf16"), ("onnxruntime", "fp32"),
                                             ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
                                             ("openvino", "int8")]]
    for r in result.rows:
        ceiling = result.matmuls[r.precision]
        assert r.ceiling == ceiling.label and r.img_per_s > 0
        assert r.frac_matmul == pytest.approx(r.gflops / ceiling.gflops) and r.ceiling_gflops == ceiling.gflops
        assert r.ratio is None and r.vs == {}  # no reference rows


def test_ratios_against_the_anchors():
    def row(impl, img_per_s):
        return Row("xception", impl, "infer", "bf16", 8, 1.0, 1.0, 1.0, img_per_s, 8.4, 1.0, 0.1, "bf16 matmul 2048^3",
                   10.0)

    rows = [row("convzoo openvino int8", 24.0), row("convzoo optimized bf16", 12.0), row("timm NCHW", 3.0),
            row("timm bf16 channels_last", 10.0), row("OpenVINO bf16 on timm", 20.0)]
    _set_ratios(rows)
    assert rows[0].ratio == pytest.approx(1.2) and rows[1].ratio == pytest.approx(0.6)
    assert rows[0].vs == pytest.approx({"timm bf16 channels_last": 2.4, "OpenVINO bf16 on timm": 1.2})
    assert rows[1].vs == pytest.approx({"timm bf16 channels_last": 1.2, "OpenVINO bf16 on timm": 0.6})
    assert rows[2].vs == {} and rows[2].ratio is None
    table = results_table(rows).splitlines()
    assert table[0].endswith("| vs best reference | vs timm bf16 channels_last | vs OpenVINO bf16 on timm |")
    assert table[2].endswith("| 1.20x | 2.40x | 1.20x |") and table[4].endswith("|  |  |  |")
    assert set(ANCHORS) == {"timm bf16 channels_last", "OpenVINO bf16 on timm"}


def test_interleaved_rounds_measure_every_row_in_the_trainers_state():
    logs = []
    rows = run_bench(["xception_cifar_tiny"], batch_size=2, input_size=(32, 32), runtimes=("eager", "optimized"),
                     precisions=("fp32",), against=("plain",), device="cpu", warmup=0, repeats=1, rounds=3,
                     log=logs.append).rows
    assert [r.impl for r in rows] == ["convzoo eager fp32", "convzoo optimized fp32", "plain PyTorch NCHW"]
    assert logs[1].startswith("all rows in the trainer's process state: ") and "3 interleaved rounds" in logs[1]
    assert logs[2].startswith("  xception_cifar_tiny infer: 3 rounds, load average ")
    assert logs[2].endswith("fp32 matmul 2048^3: {:.1f}".format(rows[0].ceiling_gflops))
    assert all(0 < r.min_ms <= r.median_ms <= r.max_ms for r in rows)
    assert rows[0].ratio == pytest.approx(rows[0].img_per_s / rows[2].img_per_s)


@pytest.mark.parametrize("cpu, precisions", [
    (hardware.CpuInfo("GenuineIntel", "Xeon AMX", 2, frozenset({"amx_bf16", "avx512_bf16"}), "test"),
     ("fp32", "bf16", "int8")),
    (hardware.CpuInfo("GenuineIntel", "Xeon AVX2", 2, frozenset({"avx2"}), "test"), ("fp32", "int8")),
])
def test_default_choices_follow_the_bf16_rule(monkeypatch, cpu, precisions):
    monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert default_choices(torch.device("cpu")) == (("eager", "optimized", "onnxruntime", "openvino"), precisions,
                                                    ("timm", "openvino", "keras"))


def test_defaults_leave_out_openvino_when_missing_and_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    logs = []
    runtimes, _, against = _choices(torch.device("cpu"), None, ("fp32",), None, logs.append)
    assert runtimes == ("eager", "optimized", "onnxruntime") and against == ("timm", "keras")
    assert logs == ["OpenVINO rows left out: openvino is not installed (pip install 'convzoo[openvino]')"]
    with pytest.raises(MissingDependencyError, match=r"needs openvino.*pip install 'convzoo\[openvino\]'"):
        run_bench(["xception_cifar_tiny"], runtimes=("openvino",), precisions=("fp32",), against=(), device="cpu")


@pytest.mark.parametrize("runtimes, precisions, against, device, message", [
    (("eager",), ("int8",), (), "cpu", "precision 'int8': none of the runtimes eager runs it"),
    (("eager",), ("fp16",), (), "cpu", "precision must be one of fp32, bf16, int8, got 'fp16'"),
    (("onnxruntime",), ("fp32",), (), "cuda", "runtime 'onnxruntime' runs on the CPU only"),
    (("eager",), ("fp32",), ("openvino",), "cuda", "the openvino reference runs on the CPU only"),
    (("eager",), ("fp32",), ("tvm",), "cpu", "--against takes plain, timm, openvino, keras, got 'tvm'"),
])
def test_choices_a_run_cannot_make_are_refused(runtimes, precisions, against, device, message):
    with pytest.raises(ConfigError, match=message):
        _check_choices(runtimes, precisions, against, torch.device(device))


def test_rounds_below_one_are_refused(capsys):
    """Refused where the flag is parsed: argparse exits 2 with one line naming the flag and its range."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "xception_cifar_tiny", "--device", "cpu", "--rounds", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "convzoo: error: argument --rounds: expected an integer of at least 1, got 0\n"


@pytest.mark.slow
def test_anchor_rows_of_issue_16_in_one_run():
    """timm fp32 and bf16, OpenVINO bf16 on timm's network, and convzoo's rows compared with both anchors."""
    pytest.importorskip("nncf")
    result = run_bench(["resnext50_32x4d"], batch_size=2, input_size=(32, 32),
                       runtimes=("optimized", "onnxruntime", "openvino"), precisions=("fp32", "bf16", "int8"),
                       against=("timm", "openvino"), device="cpu", warmup=0, repeats=1, rounds=2, log=lambda s: None)
    impls = [r.impl for r in result.rows]
    assert impls[-4:] == ["timm NCHW", "timm channels_last", "timm bf16 channels_last", "OpenVINO bf16 on timm"]
    for r in result.rows:
        assert r.ceiling == f"{r.precision} matmul 2048^3" and r.frac_matmul == pytest.approx(r.gflops / r.ceiling_gflops)
        if r.impl.startswith("convzoo"):
            assert set(r.vs) == set(ANCHORS)
