"""`distill probe`: linear-probe accuracy per depth of a teacher, and which depth to transfer from."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import DistillError

CHECKPOINT_SUFFIXES = (".pt", ".pth")


def _split_list(value: str | None, option: str, cast=str) -> list | None:
    if value is None:
        return None
    try:
        items = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        items = []
    if not items:
        raise DistillError(f"{option} {value!r}: expected a comma-separated list such as "
                           f"{'5,6,7,8,9' if cast is int else 'layer2,layer3,layer4'}")
    return items


def _from_checkpoint(path: Path, data: str | None, data_root: str | None, classes: list[int] | None,
                     per_class: int | None, test_limit: int | None, trust_code: bool):
    """(model, bundle) for a distill checkpoint, preprocessed the way its card says."""
    from ..model_data import data_for_card
    from ..models import load_checkpoint

    if data is None:
        raise DistillError(f"probing checkpoint {path} needs data; expected --data NAME (e.g. cifar10), "
                           "an image folder or an .npz file")
    model, card = load_checkpoint(path, trust_code)
    bundle = data_for_card(data, card, root=data_root, same_classes=False, classes=classes,
                           per_class=per_class, test_limit=test_limit)
    return model, bundle


def _from_recipe(recipe: str, overrides: list[str], run_dir: Path | None, data_root: str | None,
                 per_class: int | None, test_limit: int | None, trust_code: bool):
    """(model, bundle, source): the recipe's teacher (its run's teacher.pt with --run) on its data."""
    import torch

    from ..model_data import data_for_recipe
    from ..models import build_model, load_checkpoint
    from ..phases.context import recipe_trust
    from ..recipe import find_recipe, load_recipe

    r = load_recipe(find_recipe(recipe), overrides)
    trust = trust_code or recipe_trust(r)
    bundle = data_for_recipe(r, data_root, augment=False, test_limit=test_limit, per_class=per_class)
    if run_dir is not None:
        path = run_dir / "teacher.pt"
        if not path.is_file():
            raise DistillError(f"run directory {run_dir} has no teacher.pt; expected the --out of a "
                               "`distill run` whose teacher phase finished")
        model, card = load_checkpoint(path, trust)
        if (card.arch, card.kwargs) != (r.teacher.model, r.teacher.options):
            raise DistillError(f"{path} is a {card.arch!r} with options {card.kwargs}, but the recipe's teacher is "
                               f"a {r.teacher.model!r} with options {r.teacher.options}; expected the --run "
                               "directory of a run of this recipe")
        return model, bundle, path
    if r.teacher.checkpoint:
        return load_checkpoint(r.teacher.checkpoint, trust)[0], bundle, Path(r.teacher.checkpoint)
    if not r.teacher.weights:
        click.echo("warning: the recipe's teacher has no weights, so this probes random features; "
                   "expected teacher.weights, or --run DIR to probe the trained teacher", err=True)
    torch.manual_seed(r.seed)
    model = build_model(r.teacher.model, bundle.num_classes, bundle.input_shape, weights=r.teacher.weights,
                        **r.teacher.options)
    return model, bundle, None


@click.command()
@click.argument("source")
@click.option("--layers", default=None, metavar="A,B,...",
              help="Module paths to probe (default: the model's top-level children with parameters).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With a recipe: probe this run directory's trained teacher.pt, not the teacher as built.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
@click.option("--data", default=None,
              help="With a checkpoint: dataset name (e.g. cifar10), image folder or .npz file.")
@click.option("--data-root", default=None, help="Folder with <dataset>.npz files (default: $DISTILL_DATA).")
@click.option("--classes", default=None, metavar="I,J,...", help="With a checkpoint: keep these labels only.")
@click.option("--per-class", type=int, default=None, help="Training images per class (few-label setting).")
@click.option("--test-limit", type=int, default=None, help="Test images scored (stratified; default: all).")
@click.option("--folds", default=5, show_default=True,
              help="Cross-validation folds on train that choose, when the data has no validation split.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where probe.json and probe.png go (default: STEM_probe/ beside the checkpoint, "
                   "else ./RECIPE_probe/).")
@click.option("--trust-code", is_flag=True,
              help="Let checkpoints build 'package.module:factory' models, running that code: only for "
                   "files you trust.")
def probe(source: str, layers: str | None, run_dir: Path | None, overrides: tuple[str, ...], data: str | None,
          data_root: str | None, classes: str | None, per_class: int | None, test_limit: int | None,
          folds: int, device: str, out: Path | None, trust_code: bool) -> None:
    """Fit a linear classifier on each layer's pooled activations and print accuracy per depth,
    with the depth to transfer from. For small data unlike the pretraining data, earlier layers
    often beat the top.

    SOURCE is a distill checkpoint (.pt; pick data with --data) or a recipe (.toml or a shipped
    name), whose teacher is probed as built with its weights, or from --run DIR. The best layer is
    chosen on the validation split (else by --folds cross-validation on train), never on the test set.

    \b
    Examples:
      distill probe runs/mnist/teacher.pt --data mnist --classes 5,6,7,8,9 --per-class 100
      distill probe teacher.pt --data data/my_images --layers layer2,layer3,layer4
      distill probe recipes/imagefolder_resnet152_resnet18.toml --layers layer1,layer2,layer3,layer4
      distill probe quickstart --run runs/quickstart
    """
    from ..files import refuse_overwrite
    from ..probe import default_layers, probe_layers, write_probe_report
    from ..settings import resolve_device

    # a recipe is a .toml file or a shipped name; any other existing file is read as a checkpoint
    is_checkpoint = source.endswith(CHECKPOINT_SUFFIXES) or (Path(source).is_file() and not source.endswith(".toml"))
    if is_checkpoint and (run_dir or overrides):
        raise DistillError("--run and --set apply to a recipe; expected a recipe as SOURCE, or a "
                           "checkpoint without them")
    if not is_checkpoint and (data or classes):
        raise DistillError("--data and --classes apply to a checkpoint; a recipe names its data, so "
                           "expected --set data.name=NAME or --set data.classes=[...]")
    if is_checkpoint:
        path = Path(source)
        model, bundle = _from_checkpoint(path, data, data_root, _split_list(classes, "--classes", int),
                                         per_class, test_limit, trust_code)
        default_out = path.parent / f"{path.stem}_probe"
    else:
        model, bundle, path = _from_recipe(source, list(overrides), run_dir, data_root, per_class, test_limit,
                                           trust_code)
        default_out = path.parent / f"{path.stem}_probe" if path else Path(f"{Path(source).stem}_probe")
    report_dir = out or default_out
    refuse_overwrite([("--out's probe.json", report_dir / "probe.json"), ("--out's probe.png", report_dir / "probe.png")],
                     [source, data])
    chosen = _split_list(layers, "--layers") or default_layers(model)
    result = probe_layers(model, chosen, bundle.train_plain, bundle.test, val=bundle.val,
                          folds=folds, device=resolve_device(device))
    json_path, png_path = write_probe_report(result, report_dir,
                                             title=f"linear probes: {path or source}")
    click.echo(result.table())
    click.echo(f"recommendation: {result.recommendation()}")
    click.echo(f"wrote {json_path} and {png_path}")
