"""Option types the commands share: numbers that make sense, refused at parse time in one line."""
from __future__ import annotations

import math
from typing import Any

import click


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and infinity: nan compares false with every bound,
    so a plain range lets `--atol nan` through and every check against it silently passes."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
POSITIVE_NUMBER = FiniteRange(min=0, min_open=True)
