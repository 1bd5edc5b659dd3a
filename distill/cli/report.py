"""`distill report`: a run's report.html again, or one page comparing several runs."""
from __future__ import annotations

import click


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where the page comparing several runs goes (default: comparison.html here).")
def report(runs: tuple[str, ...], out: str | None) -> None:
    """Write a run's report.html (summary, curves, per-class accuracy, agreement, pruning, export,
    bench, recipe), or, given several runs, one page comparing them.

    \b
    Examples:
      distill report runs/quickstart                  # runs/quickstart/report.html
      distill report runs/kd runs/dkd runs/crd -o kinds.html
    """
    from ..errors import DistillError
    from ..report import write_comparison, write_report

    if out is not None and not out.strip():
        raise DistillError("--out is empty; expected an .html file path for the comparison")
    if len(runs) == 1:
        if out is not None:
            raise DistillError(f"--out {out} is for a page comparing several runs; expected two or more runs, "
                               f"or none (one run's report is always {runs[0]}/report.html)")
        click.echo(f"report: {write_report(runs[0])}")
        return
    click.echo(f"comparison of {len(runs)} runs: {write_comparison(runs, out or 'comparison.html')}")
