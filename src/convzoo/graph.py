"""Diagrams of a network's blocks and flows with output shapes, drawn by Graphviz (``dot``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ConvzooError
from .utils.fileio import atomic_write_text, ensure_dir


class GraphvizError(ConvzooError):
    """Graphviz is missing or failed to render."""


def to_dot(model: nn.Module, input_size: tuple[int, int, int] | None = None, depth: int = 1) -> str:
    """Graphviz source: one node per stage (``depth=2``: per layer inside each stage) in execution order,
    labelled with its type and output shape (C, H, W, at ``input_size``, default the registered one), grouped
    into clusters by the model's ``stage_groups()`` (Xception's flows, Inception's grids, ResNet's stages),
    then the head."""
    input_size = input_size or tuple(model.default_cfg.input_size)
    if depth not in (1, 2):
        raise ConfigError(f"depth must be 1 or 2, got {depth}")
    names = list(model.stage_names)
    targets = {}
    for stage in names:
        module = getattr(model, stage)
        children = list(module.named_children()) if depth == 2 else []
        for child, m in children or [("", module)]:
            targets[f"{stage}.{child}" if child else stage] = m
    shapes: dict[str, tuple[int, ...]] = {}

    def record(key: str):
        def hook(_m: nn.Module, _inp, out: torch.Tensor) -> None:
            shapes.setdefault(key, tuple(out.shape[1:]))
        return hook

    hooks = [m.register_forward_hook(record(key)) for key, m in targets.items()]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    order = list(shapes)
    lines = ["digraph convzoo {", '  rankdir=TB; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
             'fontname="Helvetica", fontsize=10]; edge [color="#555555"];',
             f'  input [label="input\\n{"x".join(map(str, input_size))}", fillcolor="#ffffff"];']
    groups = model.stage_groups()
    clusters: dict[str, list[str]] = {}
    for key in order:
        clusters.setdefault(groups[key.split(".")[0]], []).append(key)
    for i, (flow, keys) in enumerate(clusters.items()):
        lines.append(f'  subgraph cluster_{i} {{ label="{flow}"; style=dashed; color="#8899aa";')
        for key in keys:
            shape = "x".join(map(str, shapes[key]))
            lines.append(f'    "{key}" [label="{key}\\n{type(targets[key]).__name__}\\n{shape}"];')
        lines.append("  }")
    head = f"{model.global_pool or 'no'} pool" + (f" + fc ({model.num_classes})" if model.num_classes else "")
    lines.append(f'  head [label="{head}", fillcolor="#fbeeee"];')
    chain = ["input", *(f'"{k}"' for k in order), "head"]
    lines += [f"  {a} -> {b};" for a, b in zip(chain, chain[1:])]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_source: str, path: str | Path) -> Path:
    """Write ``dot_source`` to ``path``: ``.dot`` as text, ``.svg``/``.png``/``.pdf`` through Graphviz.
    Raises :class:`ConfigError` (another suffix), :class:`GraphvizError` and :class:`~convzoo.errors.OutputError`."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("dot", "svg", "png", "pdf"):
        raise ConfigError(f"output must end in .svg, .png, .pdf or .dot, got {path.name!r}")
    ensure_dir(path.parent)
    if fmt == "dot":
        return atomic_write_text(path, dot_source)
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError("rendering needs Graphviz's `dot` (apt-get install graphviz); "
                            f"or write {path.with_suffix('.dot').name} and render it elsewhere")
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot_source.encode(), capture_output=True)
    if done.returncode != 0:
        raise GraphvizError(f"dot failed: {done.stderr.decode(errors='replace').strip().splitlines()[0]}")
    return path
