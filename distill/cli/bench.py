"""`distill bench`: teacher vs students, latency, size and accuracy, in one interleaved run."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from ..errors import DistillError
from .options import NON_NEGATIVE, POSITIVE, POSITIVE_NUMBER

def _name(path: Path, taken: dict) -> str:
    name = path.name.removesuffix(".onnx") if path.suffix == ".onnx" else path.stem
    return f"{path.parent.name}/{name}" if name in taken else name


@click.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path),
              help="Teacher checkpoint or ONNX file (default: RUN_DIR/teacher.pt).")
@click.option("--student", "students", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Student checkpoint or ONNX file; repeat for several (added to RUN_DIR's).")
@click.option("--throughput-batch", type=click.IntRange(0, 4096), default=16, show_default=True,
              help="Batch size for the throughput figure, at most 4096 (latency is always at batch 1); "
                   "0 skips it.")
@click.option("--threads", type=POSITIVE, default=None, help="Threads for both runtimes (default: physical cores).")
@click.option("--rounds", type=POSITIVE, default=20, show_default=True, help="Interleaved timing rounds.")
@click.option("--round-time", type=POSITIVE_NUMBER, default=0.2, show_default=True,
              help="Seconds each model runs per round (at least one call).")
@click.option("--warmup", type=NON_NEGATIVE, default=3, show_default=True,
              help="Untimed calls per model before timing.")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(["eager", "ort"]),
              default=("eager", "ort"), show_default=True, help="Runtimes to time.")
@click.option("--data", "data_name", default=None,
              help="Dataset for test accuracy (e.g. cifar10); without it accuracy is skipped.")
@click.option("--data-root", default=None, help="Folder with <dataset>.npz files (default: $DISTILL_DATA).")
@click.option("--max-samples", type=POSITIVE, default=None, help="Test images for accuracy (default: all).")
@click.option("--atol", type=POSITIVE_NUMBER, default=1e-4, show_default=True,
              help="Max |ORT - PyTorch| on logits for the exports made to time ORT.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where bench.json/md/png go (default: RUN_DIR, else ./bench).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--trust-code", is_flag=True,
              help="Let checkpoints build 'package.module:factory' models, running that code: only for "
                   "files you trust.")
def bench(run_dir: Path | None, teacher: Path | None, students: tuple[Path, ...], throughput_batch: int,
          threads: int | None, rounds: int, round_time: float, warmup: int, runtimes: tuple[str, ...],
          data_name: str | None, data_root: str | None, max_samples: int | None, atol: float,
          out: Path | None, quiet: bool, trust_code: bool) -> None:
    """Measure teacher and students: latency (p50/p90/p99 at batch 1) and throughput in PyTorch
    eager and ONNX Runtime, parameters, MACs, file size and (with --data) test accuracy.

    Models are timed in the same run, interleaved round by round, with threads set to the
    physical cores; speedups are against the teacher in its own fastest runtime.

    \b
    Examples:
      distill bench runs/quickstart
      distill bench runs/cifar --data cifar10 --max-samples 2000
      distill bench --teacher big.pt --student small.pt --student small.int8.onnx --throughput-batch 0
    """
    from ..bench import benchmark, report_paths, run_artifacts, summary_lines, write_report
    from ..files import refuse_overwrite

    artifacts: dict = dict(run_artifacts(run_dir)) if run_dir else {}
    if teacher:
        artifacts.pop("teacher", None)
        artifacts = {_name(teacher, {}): teacher, **artifacts}
    for s in students:
        artifacts[_name(s, artifacts)] = s
    if not artifacts:
        raise DistillError("nothing to benchmark; expected a run directory or --teacher and --student")
    if len(artifacts) < 2:
        raise DistillError("only a teacher was given; expected at least one --student (or a run directory)")
    report_dir = out or run_dir or Path("bench")
    refuse_overwrite([("bench report", p) for p in report_paths(report_dir).values()],
                     [*artifacts.values(), data_name])
    first = next(iter(artifacts))
    data = None
    if data_name:  # preprocess as the teacher expects; load it once
        from ..bench import load_artifact
        from ..model_data import data_for_card
        artifacts[first] = load_artifact(artifacts[first], first, trust_code)
        card = artifacts[first].card  # a foreign ONNX file may not say its class count (0)
        data = data_for_card(data_name, card, root=data_root, same_classes=card.num_classes > 0)
    batch_sizes = (1, throughput_batch) if throughput_batch > 1 else (1,)
    result = benchmark(artifacts, teacher=first, batch_sizes=batch_sizes, threads=threads, rounds=rounds,
                       round_time=round_time, warmup=warmup, runtimes=runtimes, data=data,
                       max_samples=max_samples, atol=atol, progress=not quiet, trust_code=trust_code)
    if Path(sys.argv[0]).name in ("distill", "__main__.py"):
        result.settings["command"] = shlex.join(["distill", *sys.argv[1:]])
    paths = write_report(result, report_dir)
    if "eager" in runtimes and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        click.echo("note: PyTorch's OpenMP threads spin while waiting (OMP_WAIT_POLICY is not PASSIVE); on a "
                   "busy machine that can inflate eager latency many times: run with OMP_WAIT_POLICY=PASSIVE")
    click.echo(result.table())
    click.echo("")
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
