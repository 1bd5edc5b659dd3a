"""Checks of the size options of the built-in models, made before any layer is built.

A width of 0 builds layers with no channels that fail (or silently do nothing) at the first
forward pass; a negative one fails deep inside torch. Each check raises `OptionError`, whose
message starts with the option's name, so a recipe can report it under its key path
(`student.options.width: expected a positive integer, got 0`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import DistillError


class OptionError(DistillError):
    """A model option with a value that makes no sense; the message starts with the option name."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise OptionError(f"{name}: expected a positive integer, got {value!r}")
    return value


def positive_ints(name: str, values: Any, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """A list of integers >= `minimum` (of `length` items when given), e.g. layer widths."""
    ok = isinstance(values, Sequence) and not isinstance(values, str)
    ok = ok and all(_is_int(v) and v >= minimum for v in values) and length in (None, len(values))
    if not ok:
        count = f"{length} " if length is not None else ""
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise OptionError(f"{name}: expected a list of {count}{kind}, got {values!r}")
    return tuple(values)


def positive_number(name: str, value: Any) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise OptionError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def probability(name: str, value: Any) -> float:
    """A dropout rate: in [0, 1)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        raise OptionError(f"{name}: expected a probability in [0, 1), got {value!r}")
    return float(value)
