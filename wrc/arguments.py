"""Command-line argument types shared by the benchmarks and evaluation scripts, so that a bad count is refused by
argparse with the option named (``argument --steps: expected an integer >= 1; got '0'``), in one wording."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum`` (counts, sizes, steps)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # how the type reads in reprs and tracebacks
    return parse


positive_int = integer_at_least(1)
