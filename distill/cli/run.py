"""`distill run`, `distill recipes` and `distill models`."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import DistillError

if TYPE_CHECKING:
    from ..recipe import Recipe

# Set by `distill run --nproc N` for the ranks it launches: the folder where a rank leaves the user
# error (DistillError) that stopped it, for the parent to print once.
RANK_ERRORS_ENV = "DISTILL_RANK_ERRORS"


@click.command()
@click.argument("recipe")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory (default: the recipe's out, else runs/NAME).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set student.epochs=2 --set distill.terms.0.weight=0.5")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the same directory from its last complete epoch.")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where to train: auto, cpu, cuda or cuda:N (default: the recipe's device, auto).")
@click.option("--data-root", type=click.Path(), default=None, help="Folder with <dataset>.npz files (default: $DISTILL_DATA, else ~/.cache/distill/data).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, metavar="K",
              help="Run every phase once per seed (the recipe's seed, seed + 1, ...) into RUN/seed-N/, and report "
                   "each model's accuracy as mean +- sd and the gain pooled over the seeds (the same as "
                   "--set seeds=K).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes (DistributedDataParallel): reruns itself under torchrun.")
@click.option("--trust-code", is_flag=True,
              help="Let the recipe's checkpoints build any 'package.module:factory' model, running that code "
                   "(the same as --set trust_code=true): only for files you trust.")
def run(recipe: str, out: str | None, overrides: tuple[str, ...], resume: bool, device: str | None,
        data_root: str | None, seeds: int | None, quiet: bool, nproc: int, trust_code: bool) -> None:
    """Train a teacher, distil it into a student, train the student alone as a baseline,
    and print what distillation bought.

    RECIPE is a .toml file or the name of a shipped recipe (see `distill recipes`).

    \b
    Examples:
      distill run recipes/quickstart.toml
      distill run quickstart --set student.epochs=2 --out runs/try
      distill run quickstart --seeds 3 --out runs/q3          # mean +- sd, pooled verdict
      DISTILL_DATA=~/data distill run recipes/mnist_hinton.toml --set teacher.epochs=1
      distill run recipes/mnist_hinton.toml --resume        # after an interruption
      distill run recipes/cifar10_vgg13_vgg8.toml --nproc 4  # 4 processes, DDP
      torchrun --nproc_per_node=4 -m distill run recipes/cifar10_vgg13_vgg8.toml   # the same

    The run directory holds recipe.toml (resolved), teacher.pt, student.pt, baseline.pt
    (pseudo.pt with baseline.pseudo_labels), history.csv, metrics.json and report.html; with
    --seeds, one such directory per seed (seed-N/) beside the pooled metrics.json and report.html.
    """
    from .. import distributed
    from ..pipeline import run_recipe
    from ..recipe import find_recipe, load_recipe
    from ..settings import check_device
    from ..summary import summary_table

    with _user_errors_once_per_launch():
        if out is not None and not out.strip():
            raise DistillError("--out is empty; expected a directory for the run")
        if device is not None:
            check_device(device)
        path = find_recipe(recipe)
        if trust_code:
            overrides = (*overrides, "trust_code=true")
        if seeds is not None:
            overrides = (*overrides, f"seeds={seeds}")
        parsed = load_recipe(path, list(overrides))  # validate before starting processes
        if nproc > 1 and "LOCAL_RANK" not in os.environ:
            _check_before_launch(parsed, device, data_root, nproc)
            sys.exit(_relaunch_under_torchrun(nproc))
        metrics = run_recipe(parsed, out=out, resume=resume, device=device, data_root=data_root,
                             progress=not quiet)
    if not distributed.is_main():
        return
    click.echo("")
    click.echo(summary_table(metrics))
    where = Path(out or parsed.out or Path("runs") / parsed.name)
    click.echo(f"run directory: {where} (open {where / 'report.html'} for the whole story)")


def _check_before_launch(recipe: Recipe, device: str | None, data_root: str | None, nproc: int) -> None:
    """What every rank would check first, checked once here: the device (one GPU per process),
    and the data (its path, classes and limits; a download happens here, once, not in every rank)."""
    import torch

    from ..model_data import data_for_recipe
    from ..settings import resolve_device

    if resolve_device(device or recipe.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise DistillError(f"--nproc {nproc} needs one GPU per process but this machine has "
                           f"{torch.cuda.device_count()}; expected --nproc at most that, or --device cpu")
    data_for_recipe(recipe, data_root)


@contextlib.contextmanager
def _user_errors_once_per_launch() -> Iterator[None]:
    """Under torchrun every rank meets the same user error; the launch reports it once, as one line.

    A rank that `distill run --nproc` started leaves the message in the parent's folder (the
    parent prints it) and exits 2; under a torchrun started by hand rank 0 prints it and the others
    exit 2 quietly. Outside torchrun the error goes on to the usual one-line report."""
    from .. import distributed
    from ..files import atomic_write_text

    try:
        yield
    except DistillError as e:
        if "LOCAL_RANK" not in os.environ:
            raise
        rank, folder = distributed.launch_rank(), os.environ.get(RANK_ERRORS_ENV)
        if folder:
            atomic_write_text(Path(folder) / f"rank{rank}.txt", str(e))
        elif rank == 0:
            raise
        sys.exit(2)


def _relaunch_under_torchrun(nproc: int) -> int:
    """Run this same command in `nproc` processes with torchrun (in this process); its exit code.

    A user error in the ranks ends the launch as in one process: one line, exit code 2, without
    torchrun's failure report. Any other failure prints that report (the ranks print their
    tracebacks) and returns 1; with --debug it raises."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    debug = "--debug" in args
    command = ["--standalone", f"--nproc_per_node={nproc}", "-m", "distill", *args]
    with tempfile.TemporaryDirectory(prefix="distill-ranks-") as folder:
        if not debug:  # else rank 0 raises, and shows its traceback
            os.environ[RANK_ERRORS_ENV] = folder
            logging.disable(logging.ERROR)  # torchrun's own log lines
        try:
            torchrun.main(command)
        except ChildFailedError as failure:
            reports = sorted(Path(folder).glob("rank*.txt"), key=lambda p: int(p.stem.removeprefix("rank")))
            if reports:
                raise DistillError(reports[0].read_text()) from None
            if debug:
                raise
            click.echo(str(failure), err=True)
            return 1
        finally:
            logging.disable(logging.NOTSET)
            os.environ.pop(RANK_ERRORS_ENV, None)
    return 0


@click.command()
def recipes() -> None:
    """List the shipped recipes with what each is for.

    \b
    Example:
      distill recipes
      distill run quickstart
    """
    from ..recipe import shipped_recipes_dir

    folder = shipped_recipes_dir()
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise DistillError(f"no recipes found in {folder}; expected the recipes/ folder of a source checkout")
    width = max(len(f.stem) for f in files) + 2
    for f in files:
        try:
            description = tomllib.loads(f.read_text()).get("description", "")
        except tomllib.TOMLDecodeError:
            description = "(invalid TOML)"
        click.echo(f"{f.stem:<{width}}{description}")
    click.echo(f"\n({folder}; run one with `distill run NAME`)")


@click.command()
@click.option("--layers", "layers_of", metavar="NAME", default=None,
              help="List the layer paths of model NAME that distillation terms can read.")
@click.option("--input-shape", default="3,32,32", show_default=True, help="C,H,W used to build the model for --layers.")
def models(layers_of: str | None, input_shape: str) -> None:
    """List the model names recipes accept, or the layer paths of one model.

    \b
    Examples:
      distill models
      distill models --layers resnet8x4
      distill models --layers resnet18 --input-shape 3,224,224
      distill models --layers timm:resnet18
    """
    from ..models.registry import build_model, small_input_models, torchvision_names
    from ..taps import module_paths

    if layers_of:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
            if len(shape) != 3 or min(shape) < 1 or shape[0] not in (1, 3) or max(shape[1:]) > 4096:
                raise ValueError
        except ValueError:
            raise DistillError(f"--input-shape {input_shape!r}: expected C,H,W such as 3,32,32 (C 1 or 3, "
                               "sides of 1 to 4096 pixels)") from None
        model = build_model(layers_of, 10, shape)
        for path in module_paths(model):
            click.echo(f"{path:<40} {type(model.get_submodule(path)).__name__}")
        click.echo(f"{'logits':<40} (the model output)")
        return
    click.echo("small models:      mlp, small_cnn")
    click.echo("32x32 (CRD/DKD):   " + ", ".join(sorted(small_input_models())))
    click.echo("torchvision:       " + ", ".join(torchvision_names()))
    click.echo("timm:              'timm:NAME', any name in timm.list_models() (pip install 'distill[timm]')")
    click.echo("your own:          'package.module:factory' (called with num_classes and options)")
