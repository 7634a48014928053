"""What the verbs share: warnings printed as one ``convzoo: warning:`` line each."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator


def warn(message: str) -> None:
    """Print ``message`` as one ``convzoo: warning:`` line on stderr."""
    print(f"convzoo: warning: {message}", file=sys.stderr)


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
