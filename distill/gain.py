"""Is the distilled student really better than its baseline? Accuracy gains with their noise bands.

Shared by `distill run`'s summary, the benchmarks and their reports: a figure is only called a gain
when it is larger than what the luck of the test sample could produce.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def distillation_gain(student: float, baseline: float, n_test: int) -> dict[str, Any]:
    """Student minus baseline accuracy, in points, with the 95% band of test-set sampling noise.

    The band is 1.96 standard errors of the difference of two independent accuracies measured on
    `n_test` images: a gain inside it could be luck of the test sample. When both models' answers
    on the same images are at hand, `paired_gain` gives a narrower, sharper band.
    """
    se = math.sqrt((student * (1 - student) + baseline * (1 - baseline)) / max(n_test, 1))
    points, band = 100 * (student - baseline), 100 * 1.96 * se
    return {"accuracy_points": round(points, 3), "noise_band_points": round(band, 3),
            "significant": abs(points) > band, "negative_transfer": points < 0}


def paired_gain(student_correct: torch.Tensor, baseline_correct: torch.Tensor) -> dict[str, Any]:
    """Student minus baseline accuracy on the same test images, with McNemar's paired 95% band.

    Only the images the two models disagree on carry evidence: with `b` right by the student alone
    and `c` by the baseline alone, the gain is (b - c) / n, and were the models equally good, b - c
    would vary by sqrt(b + c). Both models sharing the easy and the hard images makes this band
    narrower than `distillation_gain`'s, which has to treat the two accuracies as independent.
    """
    b = int((student_correct & ~baseline_correct).sum())
    c = int((baseline_correct & ~student_correct).sum())
    return _mcnemar(b, c, len(student_correct), "paired (McNemar)")


def pooled_paired_gain(gains: list[dict[str, Any]]) -> dict[str, Any]:
    """One verdict over several seeds' `paired_gain`s: McNemar on all their disagreements together.

    Were distillation worth nothing, each image a student and its baseline disagree on would be
    won by either with even odds, in every seed independently (each seed trains new models), so
    sum(b) - sum(c) varies by sqrt(sum(b) + sum(c)). The pooled gain, (sum(b) - sum(c)) / sum(n),
    is the mean of the seeds' gains; pooling narrows the band about sqrt(seeds) times, so a gain too
    small for one seed can be significant over three. Like the one-seed test, it speaks for these
    test images; the seeds vary the labelled subset, initial weights and order, not the test set.
    """
    b = sum(g["student_only_right"] for g in gains)
    c = sum(g["baseline_only_right"] for g in gains)
    return _mcnemar(b, c, sum(g["images"] for g in gains), f"pooled paired (McNemar over {len(gains)} seeds)")


def _mcnemar(b: int, c: int, n: int, test: str) -> dict[str, Any]:
    """The gain (b - c) / n in points, with the 95% band 1.96 sqrt(b + c) / n."""
    points, band = 100 * (b - c) / max(n, 1), 100 * 1.96 * math.sqrt(b + c) / max(n, 1)
    return {"accuracy_points": round(points, 3), "noise_band_points": round(band, 3),
            "significant": abs(points) > band, "negative_transfer": points < 0,
            "test": test, "student_only_right": b, "baseline_only_right": c, "images": n}
