"""What the verbs share: argument types that refuse a bad value where it is parsed (with the valid range or
the accepted extensions in the one-line message), and warnings printed as one ``convzoo: warning:`` line each."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from ..data.dataset import MAX_SIDE
from ..errors import ConvzooWarning, UnknownModelError
from ..registry import get_model_cfg
from ..runtime import PRECISIONS, RUNTIME_PRECISIONS, RUNTIMES
from ..train.recipes import MAX_SEED


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (``high`` None: at least ``low``)."""
    expected = f"an integer in [{low}, {high}]" if high is not None else f"an integer of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
image_side = int_in(1, MAX_SIDE)
seed = int_in(0, MAX_SEED)


def float_in(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    bracket = "(" if low_open else "["
    expected = f"a finite number in {bracket}{low:g}, {high:g}" + (")" if math.isinf(high) else "]")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


def _check_writable(path: Path) -> None:
    """Refuse ``path`` when its folder cannot take a new file: the first existing folder above it is a
    file, or creating (and at once removing) a file there fails."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {path}: {ancestor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".convzoo-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {path}: the folder {ancestor} takes no new files "
                                         f"({exc.strerror})") from None


def model_name(text: str) -> str:
    """An argparse type: a registered model name (the error names the closest ones)."""
    try:
        get_model_cfg(text)
    except UnknownModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_output_file(path: str | Path, suffixes: tuple[str, ...], what: str, folder_ok: bool = False) -> Path:
    """``path`` as an output file of ``what``: its extension one of ``suffixes`` (or, with ``folder_ok``, an
    existing folder), not an existing folder otherwise, and in a folder that can take a new file; else
    :class:`argparse.ArgumentTypeError` (a usage error) naming the path and the accepted extensions."""
    path = Path(path)
    if path.is_dir():
        if folder_ok:
            return path
        raise argparse.ArgumentTypeError(f"{path} is an existing folder; {what} is written to a file")
    if path.suffix.lower() not in suffixes:
        accepted = " or ".join(filter(None, (", ".join(suffixes[:-1]), suffixes[-1])))
        raise argparse.ArgumentTypeError(f"{what} is written to a {accepted} file, got {path}")
    _check_writable(path)
    return path


def output_file(*suffixes: str, what: str = "the output", folder_ok: bool = False) -> Callable[[str], Path]:
    """An argparse type: an output path ending in one of ``suffixes`` (see :func:`check_output_file`)."""
    return lambda text: check_output_file(text, suffixes, what, folder_ok)


def add_runtime_flags(p: argparse.ArgumentParser, guard: str = "") -> None:
    """``--runtime``, ``--precision`` (or ``--bf16/--no-bf16``) and ``--calibration``, shared by predict and
    eval; ``guard`` ends the help of ``--precision``. :func:`precision_of` reads the precision back."""
    runs = "; ".join(f"{r} {'/'.join(ps)}" for r, ps in RUNTIME_PRECISIONS.items())
    p.add_argument("--runtime", choices=RUNTIMES, default="eager",
                   help="run the model in PyTorch (eager, default), or BatchNorm folded and exported to ONNX in "
                        "ONNX Runtime or OpenVINO (the CPU only; OpenVINO: pip install 'convzoo[openvino]')")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--precision", choices=PRECISIONS,
                       help=f"arithmetic of the model ({runs}); default: bf16 where the runtime runs it and it "
                            f"pays on the device (a CPU with AMX-BF16 or AVX512-BF16, see `convzoo info`; a CUDA GPU "
                            f"with bf16), else fp32{guard}")
    group.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                       help="the same as --precision bf16 (--no-bf16: fp32); slow on a CPU without bf16 arithmetic")
    p.add_argument("--calibration", metavar="DIR|GLOB",
                   help="images to calibrate --precision int8 on: a folder or a glob of a few hundred images like "
                        "those the model will see (default for a checkpoint of a run: its training data)")


def precision_of(args: argparse.Namespace) -> str | None:
    """The precision :func:`add_runtime_flags`' flags ask for, None when none is named."""
    return args.precision if args.bf16 is None else "bf16" if args.bf16 else "fp32"


def warn(message: str) -> None:
    """Print ``message`` as one ``convzoo: warning:`` line on stderr."""
    print(f"convzoo: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def convzoo_warnings_as_lines() -> Iterator[None]:
    """While inside, each :class:`ConvzooWarning` is printed at once as one ``convzoo: warning:`` line on
    stderr; other warnings are shown as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ConvzooWarning)
        shown = warnings.showwarning

        def show(message: Any, category: type[Warning], *rest: Any, **kwargs: Any) -> None:
            if issubclass(category, ConvzooWarning):
                print(f"convzoo: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, *rest, **kwargs)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print the Python warnings raised inside the block as ``convzoo: warning:`` lines, after it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                warn(str(w.message))
