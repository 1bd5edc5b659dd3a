"""One exception type for every mistake a user can fix.

The CLI turns a `DistillError` into one line on stderr and exit code 2; anything else is a bug
and keeps its traceback. Messages name what was wrong and what was expected.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """A user-facing error: bad recipe, path, model, layer name, file or argument."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
