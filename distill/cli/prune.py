"""`distill prune`: remove channels from a checkpoint's model until it costs a given share of MACs."""
from __future__ import annotations

from pathlib import Path

import click

from .options import POSITIVE


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--macs", "macs_ratio", type=float, default=0.5, show_default=True,
              help="Fraction of the original MACs to keep, between 0 and 1 (0.5 = half).")
@click.option("--latency-ms", type=float, default=None,
              help="Instead of --macs: prune step by step until the ONNX Runtime latency (CPU, batch 1, p50) is "
                   "at most this many milliseconds; channel rounding is chosen for speed (--round-to is ignored).")
@click.option("--importance", default="magnitude", show_default=True,
              help="How channels are ranked: magnitude, taylor (needs data, see --data) or lamp.")
@click.option("--steps", type=POSITIVE, default=5, show_default=True,
              help="Prune in this many rounds, re-ranking channels between them.")
@click.option("--round-to", type=POSITIVE, default=8, show_default=True,
              help="Keep channel counts multiples of this (1 = any count).")
@click.option("--data", "dataset", default=None,
              help="Dataset for taylor's calibration batch (e.g. cifar10); without it, random inputs.")
@click.option("--data-root", type=click.Path(), default=None,
              help="Folder with <dataset>.npz files (default: $DISTILL_DATA, else ~/.cache/distill/data).")
@click.option("--batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Calibration batch size for taylor, at most 4096 (one batch: gradients of all of it at once).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where to write the pruned checkpoint (default: CHECKPOINT with a .pruned.pt suffix).")
@click.option("--trust-code", is_flag=True,
              help="Let checkpoints build 'package.module:factory' models, running that code: only for "
                   "files you trust.")
def prune(checkpoint: str, macs_ratio: float, latency_ms: float | None, importance: str, steps: int, round_to: int,
          dataset: str | None, data_root: str | None, batch: int, output: str | None, trust_code: bool) -> None:
    """Prune whole channels from CHECKPOINT's model (structured pruning with torch-pruning) until
    its MACs are --macs of the original, and save a smaller model that loads like any checkpoint.

    \b
    Examples:
      distill prune runs/quickstart/student.pt --macs 0.5 -o student-half.pt
      distill prune teacher.pt --macs 0.3 --importance taylor --data cifar10 --steps 10
      distill prune runs/quickstart/student.pt --latency-ms 0.5   # to a latency budget

    Prune, then fine-tune (distil from the unpruned model) to win back accuracy.
    """
    from ..files import refuse_overwrite
    from ..prune import prune_checkpoint
    from ..settings import check_prune

    check_prune(macs_ratio, importance, steps, round_to)
    if latency_ms is not None:
        from ..latency import check_budget
        check_budget(latency_ms, "--latency-ms")
    out = Path(output) if output else Path(checkpoint).with_suffix(".pruned.pt")
    refuse_overwrite([("--output", out)], [checkpoint, dataset])
    calibration = None
    if importance == "taylor":
        calibration = _calibration_batch(checkpoint, dataset, data_root, batch, trust_code)
    elif dataset:
        click.echo(f"warning: --data is only used by taylor importance, not {importance}", err=True)
    report = prune_checkpoint(checkpoint, out, macs_ratio=macs_ratio, importance=importance,
                              steps=steps, round_to=round_to, calibration=calibration, latency=True,
                              latency_budget_ms=latency_ms, trust_code=trust_code)
    click.echo(report.summary())
    click.echo(f"wrote {out}")


def _calibration_batch(checkpoint: str, dataset: str | None, data_root: str | None, size: int,
                       trust_code: bool):
    """(inputs, labels) for Taylor importance: real images when --data names a dataset."""
    import torch

    from ..models import load_checkpoint

    model, card = load_checkpoint(checkpoint, trust_code)
    if dataset is None:
        click.echo("warning: taylor importance on random inputs labelled by the model itself; pass "
                   "--data NAME to rank channels on real images", err=True)
        x = torch.randn(size, *card.input_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return x, model(x).argmax(1)
    from ..data import take_batch
    from ..model_data import data_for_card

    bundle = data_for_card(dataset, card, root=data_root, train_limit=size)
    return take_batch(bundle.train, size)
