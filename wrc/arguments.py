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


def positive_multiple_of(step: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type`` for positive multiples of ``step`` (image sizes on a patch lattice); ``why`` says where
    the step comes from in the error."""
    reason = f" ({why})" if why else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or value % step:
            raise argparse.ArgumentTypeError(f"expected a positive multiple of {step}{reason}; got {text!r}")
        return value

    parse.__name__ = f"multiple of {step}"
    return parse
