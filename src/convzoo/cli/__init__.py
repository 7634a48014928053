"""The ``convzoo`` command line: argument parsing and the error boundary. Each verb lives in a module of
this package with ``register(subparsers)`` and a ``cmd_<verb>(args) -> int``; the library functions the
verbs call return values and raise :class:`~convzoo.errors.ConvzooError`, and only this package prints.
Every ``ConvzooError`` is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from ..errors import ConvzooError

# Modules that add verbs, each with ``register(subparsers)``.
VERB_MODULES: list[str] = [
    "convzoo.cli.models",
    "convzoo.cli.predict",
    "convzoo.cli.export",
    "convzoo.cli.graph",
    "convzoo.cli.bench",
    "convzoo.cli.train",
    "convzoo.cli.weights",
    "convzoo.cli.info",
]


PREFIX = "convzoo: error: "


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``convzoo: error:`` line (every verb's too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PREFIX}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = Parser(prog="convzoo",
                    description="Xception, Inception V3, ResNet and ResNeXt, exact to their references.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConvzooError, argparse.ArgumentTypeError) as e:
        print(f"{PREFIX}{e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"{PREFIX}{e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convzoo: interrupted", file=sys.stderr)
        return 130
