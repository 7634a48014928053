"""The benchmark runs and prints a well-formed table on a tiny input (it is not a timing test)."""

import json

import torch

import convzoo
from convzoo.bench import markdown_table, run_bench
from convzoo.cli import main
from convzoo.optimize import fuse_batchnorm, optimize_for_inference


def test_run_bench_rows_and_ratios():
    peak, rows = run_bench(["resnext50_32x4d"], batch_size=2, input_size=(32, 32), modes=("infer", "train"),
                           runtimes=("eager", "optimized"), against=("timm",), warmup=0, repeats=1, log=lambda s: None)
    assert peak > 0
    impls = [(r.mode, r.impl) for r in rows]
    assert impls == [("infer", "convzoo eager"), ("infer", "convzoo optimized"), ("infer", "timm NCHW"),
                     ("infer", "timm channels_last"), ("train", "convzoo eager"), ("train", "timm NCHW"),
                     ("train", "timm channels_last")]
    for r in rows:
        assert r.img_per_s > 0 and r.gmac_per_img > 0
        assert (r.ratio is not None) == r.impl.startswith("convzoo")
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_bench_cli_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(["bench", "resnet50v2", "--input-size", "32", "32", "--batch-size", "1", "--repeats", "1",
                 "--warmup", "0", "--against", "keras", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert [r["impl"] for r in data["rows"]] == ["convzoo eager", "convzoo optimized", "keras (torch backend)"]
    assert "| resnet50v2 | keras (torch backend) | infer | 1 |" in capsys.readouterr().out


def test_bench_rejects_unknown_runtime(capsys):
    assert main(["bench", "resnet50", "--runtime", "turbo"]) == 2
    assert "runtime must be one of" in capsys.readouterr().err


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
