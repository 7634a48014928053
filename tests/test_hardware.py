"""convzoo.hardware: the CPU's flags as Linux reports them, torch's and oneDNN's view, and the bf16 rule.

The /proc/cpuinfo samples are cut from real machines' files (flags line shortened to the ones that matter
plus neighbours): an Intel Xeon with AMX (Sapphire Rapids), an AMD EPYC with AVX512-BF16 and no AMX, and
an AVX2-only CPU.
"""

import json
import warnings

import pytest
import torch

from convzoo import hardware, runtime
from convzoo.cli import main
from convzoo.hardware import (CpuInfo, bf16_pays, bf16_verdict, cpu_info, hardware_report, parse_cpuinfo,
                              warn_if_bf16_slow)

XEON_AMX = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags		: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni avx512_fp16 amx_bf16 amx_tile amx_int8

processor	: 1
vendor_id	: GenuineIntel
flags		: fpu sse
"""
EPYC_BF16 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9B14
flags		: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
AVX2_ONLY = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags		: fpu sse sse2 avx avx2 fma
"""


@pytest.mark.parametrize("text, model, bf16, int8", [
    (XEON_AMX, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "amx_bf16", "amx_int8"),
    (EPYC_BF16, "AMD EPYC 9B14", "avx512_bf16", "avx512_vnni"),
    (AVX2_ONLY, "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", None, None),
])
def test_parse_cpuinfo_names_the_fastest_low_precision_arithmetic(text, model, bf16, int8):
    info = parse_cpuinfo(text)
    assert info.model == model
    assert info.bf16_arithmetic == bf16 and info.int8_arithmetic == int8
    assert "fpu" not in info.flags and "avx2" in info.flags  # only the flags that matter are kept


def test_flags_agree_with_torchs_probes():
    """/proc/cpuinfo (or torch's fallback) and torch's cpuinfo library see the same CPU."""
    info = cpu_info()
    for flag, probe in [("avx2", "_is_avx2_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
                        ("amx_tile", "_is_amx_tile_supported"), ("avx512_vnni", "_is_vnni_supported")]:
        if hasattr(torch.cpu, probe):
            assert (flag in info.flags) == getattr(torch.cpu, probe)(), flag


@pytest.mark.parametrize("text, pays, why", [
    (XEON_AMX, True, "the CPU has amx_bf16 arithmetic and torch has oneDNN"),
    (EPYC_BF16, True, "the CPU has avx512_bf16 arithmetic and torch has oneDNN"),
    (AVX2_ONLY, False, "the CPU has no AMX-BF16 or AVX512-BF16 arithmetic"),
])
def test_bf16_pays_on_cpus_with_bf16_arithmetic(monkeypatch, text, pays, why):
    """The rule on three kinds of CPU, whatever CPU runs the test; the runtime layer's bf16_pays (what the
    trainer, predict and eval default to) is the same rule."""
    monkeypatch.setattr(hardware, "cpu_info", lambda: parse_cpuinfo(text))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    cpu = torch.device("cpu")
    assert bf16_pays(cpu) is pays and runtime.bf16_pays(cpu) is pays
    assert bf16_verdict(cpu)[1].startswith(why)
    assert bf16_pays(torch.device("meta")) is False


def test_bf16_does_not_pay_without_onednn(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: parse_cpuinfo(XEON_AMX))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert bf16_verdict(torch.device("cpu")) == (False, "the CPU has amx_bf16, but this torch has no oneDNN to use it")


def test_bf16_pays_on_cuda_follows_torch():
    if not torch.cuda.is_available():
        assert bf16_pays(torch.device("cuda")) is False
    else:
        assert bf16_pays(torch.device("cuda")) is torch.cuda.is_bf16_supported()


def test_bf16_where_it_does_not_pay_warns_one_line(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: parse_cpuinfo(AVX2_ONLY))
    with pytest.warns(UserWarning, match=r"bf16 on this CPU \(Intel\(R\) Xeon\(R\) CPU E5-2686 v4.*\) will be slow: "
                                         r"the CPU has no AMX-BF16 .*; fp32 is faster here") as rec:
        warn_if_bf16_slow(torch.device("cpu"))
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    monkeypatch.setattr(hardware, "cpu_info", lambda: parse_cpuinfo(XEON_AMX))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_bf16_slow(torch.device("cpu"))


def test_onednn_isa_matches_the_flags():
    """oneDNN's own word for the ISA it dispatches to (from its verbose channel) names bf16 and AMX exactly
    where the CPU's flags do."""
    isa = hardware.onednn_isa()
    if not torch.backends.mkldnn.is_available():
        assert isa is None
        return
    info = cpu_info()
    assert isa is not None and "AVX" in isa
    assert ("bfloat16" in isa) == (info.bf16_arithmetic is not None)
    assert ("AMX" in isa) == ("amx_tile" in info.flags)


def test_hardware_report_is_json_and_consistent():
    report = hardware_report(onednn=False)
    json.dumps(report)
    info = cpu_info()
    assert report["cpu"]["flags"] == sorted(info.flags) and set(info.flags) <= set(hardware.FLAGS)
    assert report["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["bf16_pays"]["cpu"] is bf16_pays(torch.device("cpu"))
    assert report["onednn_isa"] == "not probed"


def test_cpu_info_without_proc_cpuinfo_uses_torchs_probes(monkeypatch):
    def no_file(*args, **kwargs):
        raise OSError("no /proc here")

    hardware.cpu_info.cache_clear()
    monkeypatch.setattr("builtins.open", no_file)
    try:
        info = hardware.cpu_info()
    finally:
        monkeypatch.undo()
        hardware.cpu_info.cache_clear()
    assert isinstance(info, CpuInfo) and info.source == "torch.cpu"
    assert ("avx512_bf16" in info.flags) == bool(torch.cpu._is_avx512_bf16_supported())


# --- convzoo info --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, verdict", [(XEON_AMX, "bf16 pays on the CPU: yes: the CPU has amx_bf16 arithmetic"),
                                           (AVX2_ONLY, "bf16 pays on the CPU: no: the CPU has no AMX-BF16")])
def test_info_prints_the_cpu_and_the_bf16_verdict(monkeypatch, capsys, text, verdict):
    monkeypatch.setattr(hardware, "cpu_info", lambda: parse_cpuinfo(text))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert main(["info", "--no-onednn"]) == 0
    out = capsys.readouterr().out
    info = parse_cpuinfo(text)
    assert out.startswith(f"cpu: {info.model} ({info.vendor}, ")
    assert f"flags (/proc/cpuinfo): {' '.join(sorted(info.flags))}\n" in out
    assert f"torch {torch.__version__}: kernels {torch.backends.cpu.get_cpu_capability()}" in out
    assert verdict in out and "oneDNN" in out and "runtimes: onnxruntime " in out


def test_info_json_is_the_hardware_report(capsys):
    assert main(["info", "--json", "--no-onednn"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(hardware_report(onednn=False)))
    assert report["bf16_pays"]["cpu"] is bf16_pays(torch.device("cpu"))
    assert report["bf16_why"]["cpu"] == bf16_verdict(torch.device("cpu"))[1]
