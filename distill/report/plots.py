"""The report's figures as SVG text: axis labels with units, a legend, fonts large enough at 100% zoom.

Text is drawn as paths (matplotlib's default), so a figure needs no font; the metadata block that
names web addresses is left out, so a page holds no URL a browser could fetch.
"""
from __future__ import annotations

import functools
import hashlib
import io
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

NOT_LOSSES = {"phase", "epoch", "lr", "train_accuracy", "val_accuracy", "skipped_steps", "seconds"}
WIDE = (10, 3.6)


def _memo(draw: Callable[..., str]) -> Callable[..., str]:
    """Reuse a figure drawn from the same figures before: `distill run` refreshes its report after
    every phase, and a finished phase's curves never change, so each is drawn once per process."""
    cache: OrderedDict[str, str] = OrderedDict()

    @functools.wraps(draw)
    def cached(*args: Any) -> str:
        key = hashlib.sha256(pickle.dumps(args)).hexdigest()  # whole arrays (repr elides long ones)
        if key not in cache:
            cache[key] = draw(*args)
            if len(cache) > 32:
                cache.popitem(last=False)
        return cache[key]
    return cached


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10, "svg.fonttype": "path",
                         "figure.constrained_layout.use": False})
    return plt


def svg(fig: Any) -> str:
    """The figure as one <svg> element (no XML prolog, DOCTYPE or metadata), and close it."""
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # no bbox_inches="tight": it draws twice
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    return text[text.index("<svg"):]


def loss_terms(rows: list[dict[str, Any]]) -> list[str]:
    """The loss columns of a phase's history: each term, then the total `loss`."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in NOT_LOSSES and k not in keys and isinstance(v, float)]
    return sorted(k for k in keys if k != "loss") + (["loss"] if "loss" in keys else [])


@_memo
def phase_curves(rows: list[dict[str, Any]], phase: str) -> str:
    """Loss per term, train/val accuracy and learning rate of one phase, against the epoch."""
    plt = _plt()
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(12, 3.8))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.92, wspace=0.3)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    terms = loss_terms(rows)
    if len(terms) == 2 and terms[-1] == "loss":  # one term: it is the total, drawn once
        terms = [("loss", f"{terms[0]} (the only term)")]
    else:
        terms = [(k, "total" if k == "loss" else k) for k in terms]
    for key, label in terms:
        loss_ax.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", ms=3,
                     lw=2.2 if key == "loss" else 1.4, label=label)
    _axes(loss_ax, f"{phase}: training loss", "loss (mean per image)")
    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        if any(key in r for r in rows):
            acc_ax.plot(epochs, [100 * r.get(key, np.nan) for r in rows], marker="o", ms=3, label=label)
    _axes(acc_ax, f"{phase}: accuracy", "accuracy (%)")
    lr_ax.plot(epochs, [r.get("lr", np.nan) for r in rows], marker="o", ms=3, label="learning rate")
    _axes(lr_ax, f"{phase}: learning rate", "learning rate (at epoch end)")
    return svg(fig)


@_memo
def overlay_curves(runs: dict[str, list[dict[str, Any]]], phase: str) -> str:
    """Total loss and accuracy of one phase in several runs, overlaid."""
    plt = _plt()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=WIDE)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.14, top=0.91, wspace=0.25)
    for name, rows in runs.items():
        epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
        loss_ax.plot(epochs, [r.get("loss", np.nan) for r in rows], marker="o", ms=3, label=name)
        key = "val_accuracy" if any("val_accuracy" in r for r in rows) else "train_accuracy"
        acc_ax.plot(epochs, [100 * r.get(key, np.nan) for r in rows], marker="o", ms=3,
                    label=f"{name} ({'val' if key == 'val_accuracy' else 'train'})")
    _axes(loss_ax, f"{phase}: total training loss", "loss (mean per image)")
    _axes(acc_ax, f"{phase}: accuracy", "accuracy (%)")
    return svg(fig)


@_memo
def per_class(class_names: list[str], accuracy: dict[str, np.ndarray]) -> str:
    """Test accuracy per class and model: bars for up to 30 classes, markers beyond."""
    plt = _plt()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(8, min(16, 0.45 * n * max(len(accuracy), 1))), 4.5))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.25 if 10 < n <= 30 else 0.13, top=0.92)
    x = np.arange(n)
    width = 0.8 / max(len(accuracy), 1)
    for i, (role, acc) in enumerate(accuracy.items()):
        if n <= 30:
            ax.bar(x + (i - (len(accuracy) - 1) / 2) * width, 100 * acc, width, label=role)
        else:
            ax.plot(x, 100 * acc, "o", ms=3, label=role)
    if n <= 30:
        ax.set_xticks(x, [name[:12] for name in class_names], rotation=45 if n > 10 else 0, ha="right" if n > 10 else "center")
    ax.set_ylim(0, 100)
    _axes(ax, "", "accuracy (%)", "class" if n <= 30 else "class index")
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=len(accuracy), frameon=False)
    ax.set_title("test accuracy per class", loc="left")
    return svg(fig)


@_memo
def disagreement(matrix: np.ndarray, class_names: list[str]) -> str:
    """Counts of the test images where teacher and student disagree: teacher's class x student's."""
    plt = _plt()
    n = len(class_names)
    side = max(5, min(12, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(side + 1.5, side + 1))
    fig.subplots_adjust(left=0.18, right=0.98, bottom=0.24, top=0.93)
    image = ax.imshow(matrix, cmap="Oranges", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="images (count)")
    if n <= 20:
        ticks = [name[:12] for name in class_names]
        ax.set_xticks(range(n), ticks, rotation=45, ha="right")
        ax.set_yticks(range(n), ticks)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=9,
                        color="white" if count > matrix.max() / 2 else "black")
    ax.set_xlabel("student's predicted class")
    ax.set_ylabel("teacher's predicted class")
    ax.set_title("test images where teacher and student disagree")
    ax.plot([], [], "s", color="tab:orange", label="count of disagreeing images")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.18 if n <= 20 else -0.08), frameon=False)
    return svg(fig)


@_memo
def bench(rows: list[dict[str, Any]], latency_batch: str) -> str:
    """Accuracy against latency (batch `latency_batch`, log scale) of every benchmarked artefact."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    fig.subplots_adjust(left=0.08, right=0.62, bottom=0.13, top=0.92)
    for r in rows:
        stats = r.get("batches", {}).get(latency_batch, {})
        if isinstance(r.get("accuracy"), (int, float)) and isinstance(stats.get("p50_ms"), (int, float)):
            label = f"{r.get('artifact')} ({r.get('runtime')}{' int8' if r.get('precision') == 'int8' else ''})"
            ax.scatter([stats["p50_ms"]], [100 * r["accuracy"]], s=40, label=label)
    ax.set_xscale("log")
    _axes(ax, f"accuracy vs latency (batch {latency_batch})", "test accuracy (%)", "median latency (ms, log scale)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return svg(fig)


@_memo
def gains(names: list[str], points: list[float], bands: list[float]) -> str:
    """Distillation gain per run (percentage points) with its 95% noise band as error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4.5))
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.25, top=0.92)
    x = np.arange(len(names))
    colours = ["tab:green" if p > b else "tab:red" if p < -b else "tab:grey" for p, b in zip(points, bands)]
    ax.bar(x, points, color=colours, label="gain (student - baseline)")
    ax.errorbar(x, points, yerr=bands, fmt="none", ecolor="black", capsize=6, label="95% noise band")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [n[:24] for n in names], rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    _axes(ax, "distillation gain per run", "gain (accuracy points)", "run")
    return svg(fig)


def _axes(ax: Any, title: str, ylabel: str, xlabel: str = "epoch") -> None:
    from matplotlib.ticker import MaxNLocator
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
