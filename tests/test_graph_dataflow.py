"""Issue 13 §7: ``convzoo graph`` draws the traced dataflow, not the module order. In Xception's blocks the
residual 1x1 conv takes the block's input (not the max-pool's output) and an add node joins the two paths;
Inception's branches start from the same input and meet in one concatenation per Mixed block; at depth 1
the flows are labelled from the model's table (xception_cifar_slim_thinner's last two blocks are its exit
flow). The expected graph is the one the model's forward runs: torch.fx's trace of the same model is checked
against the same facts here, so the expectations are those of the reference trace."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.fx

import convzoo
from user_files import cli

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|->|--|[{}\[\];,=]|[^\s{}\[\];,="]+')


@dataclass
class Dot:
    """A Graphviz file: node labels, edges, and the labels of the subgraphs each node is declared in."""

    labels: dict[str, str] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    scopes: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def clusters(self, node: str) -> set[str]:
        return {s["label"] for s in self.scopes[node] if s.get("label")}

    def preds(self, node: str) -> set[str]:
        return {a for a, b in self.edges if b == node}

    def nodes(self, path: str) -> set[str]:
        """The nodes of module ``path`` (its id, or the first line of its label, names the path or a child)."""
        pattern = re.compile(rf"(?<![\w]){re.escape(path)}(?![\w])")
        by_id = {n for n in self.labels if pattern.search(n)}
        return by_id or {n for n, label in self.labels.items() if pattern.search(label.split("\n")[0])}

    def inputs(self, path: str) -> set[str]:
        """The nodes outside module ``path`` that feed it."""
        inside = self.nodes(path)
        assert inside, f"no node for {path!r} in {sorted(self.labels)[:20]}"
        return {p for n in inside for p in self.preds(n) if p not in inside}

    def ops(self, pattern: str) -> set[str]:
        """Nodes whose id or label names an operation matching ``pattern`` (e.g. add, cat)."""
        rx = re.compile(pattern)
        return {n for n, label in self.labels.items() if rx.search(n.lower()) or rx.search(label.lower())}


def _unquote(token: str) -> str:
    if token.startswith('"'):
        return token[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\l", "\n")
    return token


def _attrs(tokens: list[str], i: int) -> tuple[dict[str, str], int]:
    """The ``[k=v, ...]`` list starting at ``tokens[i] == '['``; returns it and the index after ``]``."""
    out, i = {}, i + 1
    while tokens[i] != "]":
        if tokens[i + 1] == "=":
            out[_unquote(tokens[i])] = _unquote(tokens[i + 2])
            i += 3
        else:
            i += 1
    return out, i + 1


def parse_dot(text: str) -> Dot:
    """Enough of the DOT language for a generated diagram: (sub)graphs, attributes, nodes, edge chains."""
    text = re.sub(r"^\s*(//|#).*$", "", text, flags=re.M)
    tokens = _TOKEN.findall(text)
    dot, stack, i = Dot(), [], 0

    def see(node: str) -> None:
        node = node.split(":")[0]
        dot.labels.setdefault(node, node)
        dot.scopes[node].extend(s for s in stack if s not in dot.scopes[node])
        return node

    while i < len(tokens):
        t = tokens[i]
        if t in ("strict", "digraph", "graph", "subgraph") and tokens[i + 1] != "[":
            while tokens[i] != "{":
                i += 1
            stack.append({"label": None})
            i += 1
        elif t == "{":
            stack.append({"label": None})
            i += 1
        elif t == "}":
            stack.pop()
            i += 1
        elif t in ("graph", "node", "edge") and tokens[i + 1] == "[":
            attrs, i = _attrs(tokens, i + 1)
            if t == "graph" and "label" in attrs:
                stack[-1]["label"] = attrs["label"]
        elif t in (";", ","):
            i += 1
        elif i + 1 < len(tokens) and tokens[i + 1] == "=":
            if t == "label":
                stack[-1]["label"] = _unquote(tokens[i + 2])
            i += 3
        else:
            chain = [see(_unquote(t))]
            i += 1
            while i < len(tokens) and tokens[i] in ("->", "--"):
                chain.append(see(_unquote(tokens[i + 1])))
                i += 2
            if i < len(tokens) and tokens[i] == "[":
                attrs, i = _attrs(tokens, i)
                if len(chain) == 1 and "label" in attrs:
                    dot.labels[chain[0]] = attrs["label"]
            dot.edges += list(zip(chain, chain[1:]))
    return dot


ADD = r"(?<![a-z])i?add(?![a-z])"
CAT = r"(?<![a-z])(cat|concat|concatenate)(?![a-z])"


def draw(capsys, tmp_path: Path, name: str, depth: int) -> Dot:
    out = tmp_path / f"{name}-{depth}.dot"
    code, _, err = cli(capsys, "graph", name, "-o", out, "--depth", depth)
    assert code == 0, err
    return parse_dot(out.read_text())


def test_parser_reads_the_dot_language():
    dot = parse_dot('digraph g { subgraph cluster_0 { label="exit flow"; "b6" [label="block6\\nX"]; } '
                    'add_1 [label="add"]; "b6" -> add_1 -> out; }')
    assert dot.labels["b6"] == "block6\nX" and dot.clusters("b6") == {"exit flow"}
    assert dot.preds("add_1") == {"b6"} and dot.nodes("block6") == {"b6"} and dot.ops(ADD) == {"add_1"}


# Inception V3 (torchvision layout): each Mixed block's branches, by their first module.
A = ("branch1x1", "branch5x5_1", "branch3x3dbl_1", "pool")
B = ("branch3x3", "branch3x3dbl_1", "pool")
C = ("branch1x1", "branch7x7_1", "branch7x7dbl_1", "pool")
D = ("branch3x3_1", "branch7x7x3_1", "pool")
E = ("branch1x1", "branch3x3_1", "branch3x3dbl_1", "pool")
MIXED = {"Mixed_5b": A, "Mixed_5c": A, "Mixed_5d": A, "Mixed_6a": B, "Mixed_6b": C, "Mixed_6c": C, "Mixed_6d": C,
         "Mixed_6e": C, "Mixed_7a": D, "Mixed_7b": E, "Mixed_7c": E}


def _exported_ops(name: str, size: int) -> list[tuple[str, str, list[str], str | None]]:
    """The model's forward as torch.export traces it: (node, op, input nodes, owning module path)."""
    model = convzoo.create_model(name).eval()
    graph = torch.export.export(model, (torch.zeros(1, 3, size, size),)).graph
    ops = []
    for n in graph.nodes:
        if n.op == "call_function":
            args = [a for a in n.args if isinstance(a, torch.fx.Node)]
            args += [a for a in (n.args[0] if n.args and isinstance(n.args[0], (list, tuple)) else ())
                     if isinstance(a, torch.fx.Node)]
            stack = n.meta.get("nn_module_stack")
            ops.append((n.name, str(n.target), [a.name for a in args], list(stack.values())[-1][0] if stack else None))
    return ops


def test_reference_trace_of_xception_has_the_skip_connections():
    """The facts the diagram must show, in torch.export's trace of the forward: the residual conv reads the
    block input, and one add with two inputs per residual block."""
    ops = _exported_ops("xception_cifar_tiny", 32)
    first_input = {owner: inputs[0] for _, target, inputs, owner in ops if "conv2d" in target}
    assert first_input["block2.residual"] == first_input["block2.sepconv1.depthwise"]
    adds = [(owner, inputs) for _, target, inputs, owner in ops if target.startswith("aten.add")]
    assert [owner for owner, _ in adds] == ["block2", "block3", "block4"] and all(len(i) == 2 for _, i in adds)


@pytest.mark.slow
def test_reference_trace_of_inception_has_one_concatenation_per_block():
    ops = _exported_ops("inception_v3", 75)
    for block, firsts in MIXED.items():
        cats = [inputs for _, target, inputs, owner in ops if target.startswith("aten.cat") and owner == block]
        assert max(len(i) for i in cats) == len(firsts), block


def test_xception_residual_blocks_are_drawn_as_they_run(capsys, tmp_path):
    dot = draw(capsys, tmp_path, "xception_cifar_tiny", 2)
    for block, first in (("block2", "sepconv1"), ("block3", "sepconv1_act")):
        feeding = dot.inputs(f"{block}.residual")
        assert feeding and feeding == dot.inputs(f"{block}.{first}"), (block, feeding)
        assert not feeding & dot.nodes(f"{block}.pool")
    adds = dot.ops(ADD)
    assert len(adds) == 3, sorted(adds)
    assert all(len(dot.preds(a)) == 2 for a in adds)

    def add_fed_by(*paths: str) -> str:
        found = [a for a in adds if all(dot.preds(a) & dot.nodes(p) for p in paths)]
        assert len(found) == 1, (paths, found)
        return found[0]

    add2 = add_fed_by("block2.pool", "block2.residual_bn")
    add3 = add_fed_by("block3.pool", "block3.residual_bn")
    assert dot.inputs("block3.residual") == {add2}
    add4 = add_fed_by("block4.sepconv3_bn")
    assert dot.preds(add4) - dot.nodes("block4.sepconv3_bn") == {add3}  # the identity skip of block 4


def test_inception_branches_are_parallel_and_meet_in_one_concatenation(capsys, tmp_path):
    dot = draw(capsys, tmp_path, "inception_v3", 2)
    cats = dot.ops(CAT)
    block_cat = {}
    for block, firsts in MIXED.items():
        feeding = [dot.inputs(f"{block}.{f}") for f in firsts]
        assert all(len(s) == 1 and s == feeding[0] for s in feeding), (block, feeding)
        inside = dot.nodes(block)
        mine = [c for c in cats if dot.preds(c) & inside]
        assert mine, f"no concatenation fed by {block}"
        block_cat[block] = max(mine, key=lambda c: len(dot.preds(c)))
        assert len(dot.preds(block_cat[block])) == len(firsts), (block, dot.preds(block_cat[block]))
    blocks = list(MIXED)
    for block, after in zip(blocks, blocks[1:]):
        assert dot.inputs(f"{after}.{MIXED[after][0]}") == {block_cat[block]}, (block, after)
    assert len(dot.preds(block_cat["Mixed_5b"])) == 4


@pytest.mark.parametrize("name,expected", [
    ("xception_cifar_slim_thinner", {"block5": "middle flow", "block6": "exit flow", "block7": "exit flow"}),
    ("xception", {"block4": "entry flow", "block5": "middle flow", "block12": "middle flow",
                  "block13": "exit flow", "block14": "exit flow"}),
])
def test_flows_are_labelled_from_the_model_table(capsys, tmp_path, name, expected):
    dot = draw(capsys, tmp_path, name, 1)
    flows = ("entry flow", "middle flow", "exit flow")
    for block, flow in expected.items():
        nodes = dot.nodes(block)
        assert nodes, block
        for n in nodes:
            labels = {f for f in flows if any(f in c.lower() for c in dot.clusters(n))}
            assert labels == {flow}, (block, n, dot.clusters(n))
