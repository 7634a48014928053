"""Diagrams of a network as it runs: the dataflow graph ``torch.export`` traces from the model's forward,
drawn by Graphviz (``dot``) with the skip connections, additions and concatenations where they are.

Each node is a module at the chosen depth of the module tree (1: the model's stages, 2: their children),
labelled with its path, type and output shape; an operation that a module's own ``forward`` performs
between its children (a residual addition, a concatenation of branches) is a node of its own. Stages are
grouped into clusters by the model's ``stage_groups()`` (Xception's flows, Inception's grids, ResNet's
stages); at depth 2 each stage is a cluster too.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ConvzooError
from .utils.fileio import atomic_write, atomic_write_text

DEPTHS = (1, 2)
_STYLE = ('  rankdir=TB; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", '
          'fontsize=10]; edge [color="#555555"];')


class GraphvizError(ConvzooError):
    """Graphviz is missing or failed to render."""


@dataclass
class _Node:
    """One box: a module at the chosen depth, or an operation of a module's own forward."""

    id: str
    kind: str  # the module's type, or the operation's name
    shape: tuple[int, ...] = ()


@dataclass
class Dataflow:
    """The traced graph at one depth: nodes in execution order, edges between them (deduplicated)."""

    nodes: dict[str, _Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)


def _owner(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _op_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0].rstrip("_")


def _inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    for arg in node.args:
        for a in arg if isinstance(arg, (list, tuple)) else (arg,):
            if isinstance(a, torch.fx.Node):
                found.append(a)
    return found


def _box(owner: str, op: str, depth: int, modules: dict[str, nn.Module], counts: dict) -> tuple[str, str]:
    """The node (id, kind) that an operation ``op`` run by module ``owner`` belongs to at ``depth``."""
    parts = owner.split(".") if owner else []
    if len(parts) >= depth or (parts and next(modules[owner].children(), None) is None):
        box = ".".join(parts[:depth])
        return box, type(modules[box]).__name__
    counts[owner, op] += 1
    n = counts[owner, op]
    return ".".join(filter(None, (owner, op + (f"_{n - 1}" if n > 1 else "")))), op


def dataflow(model: nn.Module, input_size: tuple[int, int, int], depth: int = 1) -> Dataflow:
    """The dataflow of ``model``'s forward on one image of ``input_size`` (C, H, W), traced by
    ``torch.export`` (on the model's device; a model on the meta device is traced without memory), with the
    operations grouped into the modules ``depth`` deep (see the module docstring)."""
    if depth not in DEPTHS:
        raise ConfigError(f"depth must be 1 or 2, got {depth}")
    device = next(model.parameters(), torch.empty(0)).device
    program = torch.export.export(model.eval(), (torch.zeros(1, *input_size, device=device),))
    modules = dict(model.named_modules())
    flow, counts = Dataflow(), defaultdict(int)
    flow.nodes["input"] = _Node("input", "input", tuple(input_size))
    box_of = {name: "input" for name in program.graph_signature.user_inputs}
    for node in program.graph.nodes:
        if node.op not in ("call_function", "output"):
            continue
        if node.op == "output":
            box, kind = "output", "output"
        else:
            box, kind = _box(_owner(node), _op_name(node), depth, modules, counts)
        value = node.meta.get("val")
        shape = tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else ()
        if node.op == "output":
            shape = flow.nodes[box_of[_inputs(node)[0].name]].shape
        flow.nodes.setdefault(box, _Node(box, kind)).shape = shape or flow.nodes[box].shape
        box_of[node.name] = box
        for source in _inputs(node):
            edge = (box_of.get(source.name), box)
            if edge[0] is not None and edge[0] != box and edge not in flow.edges:
                flow.edges.append(edge)
    return flow


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(node: _Node) -> str:
    shape = "x".join(map(str, node.shape))
    if node.id in ("input", "output"):
        return f"{node.id}\\n{shape}"
    kind = "" if node.id.rsplit(".", 1)[-1].startswith(node.kind) else f"\\n{node.kind}"  # an operation's id names it
    return f"{node.id}{kind}\\n{shape}" if shape else f"{node.id}{kind}"


def to_dot(model: nn.Module, input_size: tuple[int, int, int] | None = None, depth: int = 1) -> str:
    """Graphviz source of :func:`dataflow` (``input_size`` default: the registered one): the nodes inside
    clusters of the model's ``stage_groups()`` (and, at depth 2, of each stage), the modules outside any
    stage (the head) in a 'head' cluster, and an edge for each tensor passed between nodes."""
    input_size = tuple(input_size or model.default_cfg.input_size)
    flow = dataflow(model, input_size, depth)
    groups = model.stage_groups()
    tree: dict[str, dict[str, list[_Node]]] = {}
    loose = []
    for node in flow.nodes.values():
        stage = node.id.split(".")[0]
        if node.id in ("input", "output"):
            loose.append(node)
        else:
            group = groups.get(stage, "head")
            tree.setdefault(group, {}).setdefault(stage if stage in groups and depth > 1 else "", []).append(node)
    lines = ["digraph convzoo {", _STYLE]
    lines += [f'  {_quote(n.id)} [label="{_label(n)}", fillcolor="#ffffff"];' for n in loose]
    for i, (group, stages) in enumerate(tree.items()):
        lines.append(f'  subgraph cluster_{i} {{ label={_quote(group)}; style=dashed; color="#8899aa";')
        for j, (stage, nodes) in enumerate(stages.items()):
            if stage:
                lines.append(f'    subgraph cluster_{i}_{j} {{ label={_quote(stage)}; style=dotted;')
            lines += [f'      {_quote(n.id)} [label="{_label(n)}"];' for n in nodes]
            if stage:
                lines.append("    }")
        lines.append("  }")
    lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in flow.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_source: str, path: str | Path) -> Path:
    """Write ``dot_source`` to ``path`` atomically: ``.dot`` as text, ``.svg``/``.png``/``.pdf`` through
    Graphviz. Raises :class:`ConfigError` (another suffix), :class:`GraphvizError` and
    :class:`~convzoo.errors.OutputError`."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("dot", "svg", "png", "pdf"):
        raise ConfigError(f"output must end in .svg, .png, .pdf or .dot, got {path.name!r}")
    if fmt == "dot":
        return atomic_write_text(path, dot_source)
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError("rendering needs Graphviz's `dot` (apt-get install graphviz); "
                            f"or write {path.with_suffix('.dot').name} and render it elsewhere")
    done = subprocess.run([exe, f"-T{fmt}"], input=dot_source.encode(), capture_output=True)
    if done.returncode != 0:
        raise GraphvizError(f"dot failed: {done.stderr.decode(errors='replace').strip().splitlines()[0]}")
    return atomic_write(path, done.stdout)
