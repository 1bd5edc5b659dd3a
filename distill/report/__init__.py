"""report.html: one self-contained page per run (and a comparison page for several runs).

A run's figures and tables come from the files it leaves (metrics.json, history.csv, recipe.toml,
bench.json, predictions.npz); the page has no script and loads nothing from the network, so it
opens from the file system and can be mailed as one file. See `write_report`.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import DistillError
from ..files import atomic_write_text, refuse_overwrite
from .pages import REPORT, comparison_page, run_page, seed_dirs, seeds_page
from .predictions import PREDICTIONS, Predictions, read_predictions, save_predictions
from .rundata import RunData, read_run

__all__ = ["PREDICTIONS", "REPORT", "Predictions", "RunData", "read_predictions", "read_run",
           "refresh_report", "save_predictions", "write_comparison", "write_report"]


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html (and, for a multi-seed run, each seed's own) from the run's files;
    returns its path. A run in progress gets a page that names the phases still missing."""
    run = read_run(run_dir)
    if run.seeds:
        seeds = []
        for path in seed_dirs(run):
            write_report(path)
            seeds.append(read_run(path))
        html = seeds_page(run, seeds)
    else:
        html = run_page(run)
    out = run.path / REPORT
    atomic_write_text(out, html)
    return out


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write one page comparing several runs (runs x models, gains side by side, curves overlaid)."""
    out = Path(out)
    if out.is_dir():
        raise DistillError(f"--out {out} is a directory; expected an .html file path for the comparison")
    runs = [read_run(p) for p in run_dirs]
    refuse_overwrite([("--out", out)], [f for run in runs for f in run.path.iterdir() if f.name != REPORT])
    atomic_write_text(out, comparison_page(runs))
    return out


def refresh_report(run_dir: str | Path) -> Path | None:
    """`write_report` for a run in progress: a report that cannot be drawn warns instead of
    stopping the training whose results it shows (metrics.json and history.csv are written)."""
    try:
        return write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the page is a view of the run, never a reason to lose it
        warnings.warn(f"report.html of {run_dir} not refreshed ({type(e).__name__}: {e}); "
                      f"`distill report {run_dir}` tries again", stacklevel=2)
        return None
