"""``convzoo info``: what this machine offers convzoo: the CPU's low-precision arithmetic as the OS, torch,
oneDNN and OpenVINO see it, whether bf16 pays and why, CUDA, and the optional runtimes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..hardware import hardware_report


def _lines(report: dict[str, Any]) -> list[str]:
    cpu, tv, cuda = report["cpu"], report["torch"], report["cuda"]
    probes = ", ".join(f"{k.removeprefix('is_').removesuffix('_supported')}={v}" for k, v in tv.items()
                       if k.startswith("is_"))
    runtimes = ", ".join(f"{name} {version or 'not installed'}" for name, version in report["runtimes"].items())
    lines = [
        f"cpu: {cpu['model']} ({cpu['vendor']}, {cpu['logical_cpus']} logical CPUs)",
        f"  flags ({cpu['flags_from']}): {' '.join(cpu['flags']) or 'none of those that matter'}",
        f"  bf16 arithmetic: {cpu['bf16_arithmetic'] or 'none'}; int8 dot products: {cpu['int8_arithmetic'] or 'none'}",
        f"torch {tv['version']}: kernels {tv['cpu_capability']}, {tv['threads']} threads; {probes}",
        f"  oneDNN {tv['onednn_version'] or 'absent'}: {report['onednn_isa'] or 'no ISA reported'}",
        f"OpenVINO's CPU: {', '.join(report['openvino_cpu']) if report['openvino_cpu'] else 'OpenVINO not installed'}",
        f"cuda: {cuda['device'] + ' (bf16: ' + str(cuda['bf16_supported']) + ')' if cuda['available'] else 'none'}",
    ]
    lines += [f"bf16 pays on {'the CPU' if device == 'cpu' else 'CUDA'}: {'yes' if pays else 'no'}: "
              f"{report['bf16_why'][device]}" for device, pays in report["bf16_pays"].items() if pays is not None]
    return [*lines, f"runtimes: {runtimes}"]


def cmd_info(args: argparse.Namespace) -> int:
    """``convzoo info``: the hardware report as text lines, or as JSON with ``--json``."""
    report = hardware_report(onednn=not args.no_onednn)
    print(json.dumps(report, indent=2) if args.json else "\n".join(_lines(report)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``info`` verb."""
    p = sub.add_parser("info", help="the CPU's bf16/int8 arithmetic as torch, oneDNN and OpenVINO see it, "
                                    "and whether bf16 pays")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument("--no-onednn", action="store_true", help="skip oneDNN's ISA probe (a 2 s child process)")
    p.set_defaults(func=cmd_info)
