"""Stratified index selection: limits, few-label subsets and validation splits.

Every function returns sorted positions, so a subset keeps the data's original order and the same
arguments always give the same result.
"""
from __future__ import annotations

import numpy as np


def stratified(labels: np.ndarray, n: int, order: np.ndarray | None = None) -> np.ndarray:
    """`n` positions whose class proportions match `labels`, taken from each class in `order`.

    Each class gets floor(n * share); the leftover slots go to the classes with the largest
    fractional parts (ties to the lower label). `order` (default: data order) says which members
    of a class come first: pass a seeded permutation for a random subset.
    """
    order = np.arange(len(labels)) if order is None else order
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(quota - exact, kind="stable")[: n - quota.sum()]] += 1
    return _take(labels, order, dict(zip(classes.tolist(), quota.tolist())))


def per_class(labels: np.ndarray, n: int, order: np.ndarray) -> np.ndarray:
    """At most `n` positions of each class, the first ones in `order`."""
    return _take(labels, order, {c: n for c in np.unique(labels).tolist()})


def split(labels: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a seeded stratified hold-out of `n_out` positions and the rest."""
    out = stratified(labels, n_out, np.random.default_rng(seed).permutation(len(labels)))
    return np.setdiff1d(np.arange(len(labels)), out), out


def _take(labels: np.ndarray, order: np.ndarray, quota: dict[int, int]) -> np.ndarray:
    ordered = labels[order]
    parts = [order[ordered == c][:k] for c, k in quota.items()]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=int)
