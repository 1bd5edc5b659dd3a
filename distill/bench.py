"""Teacher vs students: latency, throughput, size, cost and accuracy, measured so ratios hold.

Speed ratios between models only mean something when both were measured under the same
conditions, so every model is timed in the same process, with the same thread count, and
interleaved: each timing round gives every (model, runtime) pair a turn, in rotating order, so a
burst of load from elsewhere on the machine hits all of them alike. Warm-up calls are not timed.

MACs come from PyTorch's FLOP counter (`torch.utils.flop_counter.FlopCounterMode`, MACs = FLOPs/2:
convolutions and matmuls, elementwise ops not counted); ONNX files carry the figure their export
computed in their metadata. Speedups compare each model with the teacher in the teacher's own
fastest runtime, so a student never looks fast merely because the teacher ran slowly.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .errors import DistillError
from .export import (card_from_onnx, export_onnx, graph_shapes, load_onnx, onnx_metadata, onnx_size, run_onnx,
                     verify_onnx)
from .files import atomic_write, atomic_write_text
from .models import ModelCard, finite_weights, load_checkpoint
from .models.stats import count_macs, count_params

RUN_FILES = ("teacher", "student", "baseline", "pruned")  # checkpoints a run directory may hold
RUNTIMES = ("eager", "ort")

Data = Dataset | DataLoader | tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]


@dataclass
class Artifact:
    """One model to measure: a PyTorch module (timed eagerly) and/or an ONNX file (timed in ORT)."""

    name: str
    card: ModelCard
    model: nn.Module | None = None
    onnx: Path | None = None
    file: Path | None = None  # where it came from
    precision: str = "float32"
    params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None  # of `file`, else of the weights in memory
    onnx_is_temporary: bool = False  # exported by `benchmark` only to time ORT
    fixed_batch: int | None = None  # the only batch size an ONNX graph without a batch axis takes


@dataclass
class BenchResult:
    """Everything `benchmark` measured; `to_dict()` is the bench.json layout.

    `rows` has one entry per (artifact, runtime): latency percentiles and throughput per batch
    size, accuracy, and ratios against the teacher at the smallest batch size.
    """

    teacher: str
    teacher_runtime: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    artifacts: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, artifact: str, runtime: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["artifact"] == artifact and r["runtime"] == runtime)

    def table(self, markdown: bool = False) -> str:
        """The results as an aligned text table (or a Markdown one)."""
        return _format_table(*_table(self), markdown=markdown)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core, so count once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        cores.add(siblings.read_text().strip() if siblings.is_file() else str(cpu))
    return max(1, len(cores))


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    import onnxruntime
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(), "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def load_artifact(source: str | Path | Artifact | tuple[nn.Module, ModelCard], name: str | None = None,
                  trust_code: bool | Iterable[str] = False) -> Artifact:
    """An Artifact from a checkpoint, an ONNX file, or a (model, card) pair.

    A checkpoint `x.pt` with a float `x.onnx` beside it uses that file as its ONNX form (checked
    against the checkpoint before timing), so the file you ship is the one measured. `trust_code`
    as in `load_checkpoint`.
    """
    if isinstance(source, Artifact):
        return replace(source)  # benchmark fills in temporary ONNX paths: keep the caller's object as it was
    if isinstance(source, tuple):
        model, card = source
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        return Artifact(name or card.arch, card, model=model.eval(), params=count_params(model),
                        macs=count_macs(model, card.input_shape), size_bytes=size)
    path = Path(source)
    if path.suffix == ".onnx":
        return _onnx_artifact(path, name or path.name.removesuffix(".onnx"))
    model, card = load_checkpoint(path, trust_code)
    if not finite_weights(model):  # its latency could be timed, but every accuracy figure would be noise
        raise DistillError(f"checkpoint {path} holds NaN or infinite weights; expected a trained model (this one "
                           "diverged or is damaged)")
    sibling = path.with_suffix(".onnx")
    onnx = sibling if sibling.is_file() and onnx_metadata(sibling).get("precision", "float32") == "float32" else None
    return Artifact(name or path.stem, card, model=model, onnx=onnx, file=path, params=count_params(model),
                    macs=count_macs(model, card.input_shape), size_bytes=path.stat().st_size)


def _onnx_artifact(path: Path, name: str) -> Artifact:
    """An ONNX file as its graph says it runs: one (batch, C, H, W) input, and, for a file distill
    exported, the same input shape and class count its metadata claims."""
    meta = onnx_metadata(path)
    shape, out = graph_shapes(path)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise DistillError(f"{path} has input shape {shape}; expected (batch, C, H, W) with fixed C, H, W")
    classes = out[-1] if out and isinstance(out[-1], int) else 0  # 0: not fixed in the graph
    card = card_from_onnx(path) or ModelCard("onnx", classes, tuple(shape[1:]))  # a foreign file: its graph
    if tuple(card.input_shape) != tuple(shape[1:]) or card.num_classes != (classes or card.num_classes):
        raise DistillError(f"{path} takes inputs {tuple(shape[1:])} and gives {classes or '?'} logits, but its "
                           f"metadata says {tuple(card.input_shape)} and {card.num_classes}; expected a file "
                           "whose metadata describes its graph (as distill export writes)")
    return Artifact(name, card, onnx=path, file=path, precision=meta.get("precision", "float32"),
                    params=meta.get("params"), macs=meta.get("macs"), size_bytes=onnx_size(path),
                    fixed_batch=shape[0] if isinstance(shape[0], int) else None)


def run_artifacts(run_dir: str | Path) -> dict[str, Path]:
    """The models of a `distill run` directory: its checkpoints, then ONNX files not beside one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"run directory {run_dir} does not exist; expected a folder written by distill run")
    found = {stem: run_dir / f"{stem}.pt" for stem in RUN_FILES if (run_dir / f"{stem}.pt").is_file()}
    for f in sorted(run_dir.glob("*.onnx")):
        stem = f.name.removesuffix(".onnx")
        if stem not in found:
            found[stem] = f
        elif onnx_metadata(f).get("precision", "float32") != "float32":
            found[f"{stem}.onnx"] = f
    if "teacher" not in found:
        raise DistillError(f"{run_dir} has no teacher.pt; expected a run directory with teacher.pt and "
                           "student.pt, or pass --teacher and --student")
    return found


def benchmark(artifacts: Mapping[str, str | Path | Artifact | tuple[nn.Module, ModelCard]], *,
              teacher: str | None = None, batch_sizes: Sequence[int] = (1,), threads: int | None = None,
              rounds: int = 20, round_time: float = 0.2, warmup: int = 3,
              runtimes: Sequence[str] = RUNTIMES, data: Data | None = None, max_samples: int | None = None,
              atol: float = 1e-4, progress: bool = True, trust_code: bool | Iterable[str] = False) -> BenchResult:
    """Time every artifact in PyTorch eager and ONNX Runtime, interleaved; count cost; test accuracy.

    `artifacts` maps a name to a checkpoint, ONNX file, (model, card) pair or Artifact; `teacher`
    names the reference (default: the first). Checkpoints are exported to a temporary, verified
    ONNX file for the ORT timing. Each of `rounds` rounds gives every (artifact, runtime) at least
    `round_time` seconds of back-to-back calls. `threads` defaults to the physical cores. `data`
    (a Dataset, DataLoader or (x, y) tensors of preprocessed inputs) adds test accuracy.
    `trust_code` as in `load_checkpoint`.

    On a shared machine, set OMP_WAIT_POLICY=PASSIVE before torch is imported (`import distill`
    does, unless it is set): spinning OpenMP threads otherwise inflate eager latency many times over.
    """
    if not artifacts:
        raise DistillError("nothing to benchmark; expected at least a teacher")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise DistillError(f"unknown runtime {unknown}; expected some of {', '.join(RUNTIMES)}")
    if not batch_sizes or min(batch_sizes) < 1 or rounds < 1:
        raise DistillError(f"batch sizes {list(batch_sizes)} and rounds {rounds}; expected positive numbers")
    teacher = teacher or next(iter(artifacts))
    if teacher not in artifacts:
        raise DistillError(f"teacher {teacher!r} is not among the artifacts ({', '.join(artifacts)})")
    threads = threads or physical_cores()
    arts = {name: load_artifact(src, name, trust_code) for name, src in artifacts.items()}
    _check_batch_sizes(arts, batch_sizes, data)
    if data is not None:
        _check_data(arts, data)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="distill-bench-") as workdir:
            runners = _runners(arts, runtimes, Path(workdir), threads, atol, progress)
            if not any(a == teacher for a, _ in runners):
                raise DistillError(f"teacher {teacher!r} cannot run in {', '.join(runtimes)}; expected a "
                                   "checkpoint (eager and ORT) or an ONNX file (ORT)")
            accuracy = {key: runner_accuracy(fn, data, max_samples, f"accuracy {key[0]} ({key[1]})", progress)
                        for key, fn in runners.items()} if data is not None else {}
            timings = _time(runners, arts, batch_sizes, rounds, round_time, warmup, progress)
            settings = {"batch_sizes": sorted(batch_sizes), "rounds": rounds, "round_time_s": round_time,
                        "warmup_calls": warmup, "runtimes": list(runtimes), "interleaved": True,
                        "accuracy_samples": _count(data, max_samples) if data is not None else None}
            return _result(arts, teacher, runners, timings, accuracy, machine_info(threads), settings)
    finally:
        torch.set_num_threads(previous_threads)


def _check_batch_sizes(arts: dict[str, Artifact], batch_sizes: Sequence[int], data: Data | None) -> None:
    """An ONNX graph with a fixed batch size runs at that size only: refuse other timing batch
    sizes, and test accuracy (run in batches of 64), before ONNX Runtime fails half way."""
    for art in arts.values():
        if art.fixed_batch is None:
            continue
        asked = sorted(set(batch_sizes)) + (["64 (accuracy)"] if data is not None else [])
        if asked != [art.fixed_batch]:
            raise DistillError(f"{art.file} has a fixed batch size of {art.fixed_batch} but this benchmark runs "
                               f"batches of {', '.join(map(str, asked))}; expected a dynamic batch axis (as distill "
                               "export writes), or only its batch size: no throughput batch, no accuracy")


def _check_data(arts: dict[str, Artifact], data: Data) -> None:
    """Every model must take the test images and predict the data's classes: otherwise ONNX Runtime
    fails mid-run, or a 5-class model scored on 10-class data counts every other image as a miss."""
    first = next(_batches(data, 1), None)
    if first is None:
        return  # empty data: runner_accuracy says so
    shape = tuple(first[0].shape[1:])
    classes = getattr(data, "num_classes", None)  # a DataBundle knows; plain tensors do not
    for art in arts.values():
        where = art.file or art.card.arch
        if tuple(art.card.input_shape) != shape:
            raise DistillError(f"{art.name} ({where}) takes inputs of shape {tuple(art.card.input_shape)} but the "
                               f"test data gives {shape}; expected every model to take the data's inputs")
        if classes and art.card.num_classes and art.card.num_classes != classes:
            raise DistillError(f"{art.name} ({where}) predicts {art.card.num_classes} classes but the test data "
                               f"has {classes}; expected every model to predict the data's classes")


Runner = Callable[[torch.Tensor], Any]


def _runners(arts: dict[str, Artifact], runtimes: Sequence[str], workdir: Path, threads: int, atol: float,
             progress: bool) -> dict[tuple[str, str], Runner]:
    """(artifact, runtime) -> a function running one batch; exports checkpoints ORT will need."""
    runners: dict[tuple[str, str], Runner] = {}
    for art in tqdm(arts.values(), desc="preparing", disable=None if progress else True, leave=False):
        if "eager" in runtimes and art.model is not None:
            runners[art.name, "eager"] = _eager(art.model)
        if "ort" in runtimes and (art.onnx is not None or art.model is not None):
            if art.onnx is None:
                art.onnx = export_onnx(art.model, art.card, workdir / f"{art.name}.onnx", atol=atol).path
                art.onnx_is_temporary = True
            elif art.model is not None:  # an ONNX file shipped beside its checkpoint: still the same model?
                probe = torch.randn(2, *art.card.input_shape, generator=torch.Generator().manual_seed(0))
                try:
                    verify_onnx(art.onnx, art.model, probe, atol, label="random")
                except DistillError as e:
                    raise DistillError(f"{art.onnx} is stale: {e}; expected the export of {art.file} "
                                       "(run distill export again)") from e
            runners[art.name, "ort"] = ort_runner(load_onnx(art.onnx, threads))
    return runners


def _eager(model: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run


def ort_runner(session) -> Runner:
    """Run one batch (a tensor or a float32 array) through an ONNX Runtime session."""
    name = session.get_inputs()[0].name

    def run(x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return run_onnx(session, x)
        return session.run(None, {name: x})[0]
    return run


def _time(runners: dict[tuple[str, str], Runner], arts: dict[str, Artifact], batch_sizes: Sequence[int],
          rounds: int, round_time: float, warmup: int,
          progress: bool) -> dict[tuple[str, str, int], list[np.ndarray]]:
    """Per-round per-call seconds for every (artifact, runtime, batch), rounds interleaved across runners."""
    out: dict[tuple[str, str, int], list[np.ndarray]] = {}
    bar = tqdm(total=rounds * len(batch_sizes), desc="timing", disable=None if progress else True, leave=False)
    for batch in sorted(batch_sizes):
        inputs = {}
        for art, rt in runners:
            x = torch.randn(batch, *arts[art].card.input_shape, generator=torch.Generator().manual_seed(0))
            inputs[art, rt] = x if rt == "eager" else np.ascontiguousarray(x.numpy())
        timed = time_interleaved(runners, inputs, rounds=rounds, round_time=round_time, warmup=warmup,
                                 on_round=bar.update)
        out.update({(art, rt, batch): times for (art, rt), times in timed.items()})
    bar.close()
    return out


def time_interleaved(runners: Mapping[Any, Runner], inputs: Mapping[Any, Any], *, rounds: int = 20,
                     round_time: float = 0.2, warmup: int = 3,
                     on_round: Callable[[], Any] | None = None) -> dict[Any, list[np.ndarray]]:
    """Per-call seconds of each runner on its input, one array per round.

    Every round gives each runner at least `round_time` seconds of back-to-back calls, in an order
    that rotates from round to round, so a burst of load from elsewhere hits all of them alike.
    `warmup` calls per runner come first and are not timed.
    """
    keys = list(runners)
    for key in keys:
        for _ in range(warmup):
            runners[key](inputs[key])
    out: dict[Any, list[np.ndarray]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate who goes first
            fn, x, times = runners[key], inputs[key], []
            deadline = time.perf_counter() + round_time
            while True:
                start = time.perf_counter()
                fn(x)
                end = time.perf_counter()
                times.append(end - start)
                if end >= deadline:
                    break
            out[key].append(np.asarray(times))
        if on_round is not None:
            on_round()
    return out


def latency_stats(rounds: Sequence[np.ndarray], batch: int = 1) -> dict[str, float]:
    """Percentiles over every call of every round; `p50_noise_ms` is how much the p50 moves from one
    round to the next on this machine now: the robust standard deviation (1.4826 x the median
    absolute deviation) of the rounds' own medians, so one round hit by a burst of load from
    elsewhere does not swamp it."""
    times = np.concatenate(list(rounds))
    p50, p90, p99 = np.percentile(times, [50, 90, 99]) * 1e3
    medians = np.array([np.median(r) for r in rounds])
    noise = float(1.4826 * np.median(np.abs(medians - np.median(medians))) * 1e3)
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": times.mean() * 1e3,
            "throughput": batch / times.mean(), "calls": len(times), "p50_noise_ms": noise}


def _batches(data: Data, max_samples: int | None, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(data, "test") and not isinstance(data, (Dataset, DataLoader, tuple)):
        data = data.test  # a DataBundle
    if isinstance(data, (tuple, list)):
        x, y = (torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t) for t in data)
        loader: Any = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    elif isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise DistillError(f"test data is a {type(data).__name__}; expected a Dataset, DataLoader or (x, y) tensors")
    seen = 0
    for x, y in loader:
        if max_samples is not None:
            x, y = x[:max_samples - seen], y[:max_samples - seen]
        if len(x) == 0:
            return
        seen += len(x)
        yield torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def _count(data: Data, max_samples: int | None) -> int:
    return sum(len(y) for _, y in _batches(data, max_samples))


def runner_accuracy(fn: Runner, data: Data, max_samples: int | None = None, desc: str = "accuracy",
                    progress: bool = False) -> float:
    """Share of `data` (see `benchmark`) whose label is the top class of `fn`'s output."""
    correct = total = 0
    for x, y in tqdm(_batches(data, max_samples), desc=desc, disable=None if progress else True, leave=False):
        pred = np.asarray(fn(x)).argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(y)
    if total == 0:
        raise DistillError("the test data is empty; expected at least one (input, label) pair")
    return correct / total


def _result(arts: dict[str, Artifact], teacher: str, runners, timings, accuracy, machine, settings) -> BenchResult:
    lat_batch = min(settings["batch_sizes"])
    p50 = {(a, rt): latency_stats(timings[a, rt, lat_batch], lat_batch)["p50_ms"] for a, rt in runners}
    teacher_rt = min((rt for a, rt in runners if a == teacher), key=lambda rt: p50[teacher, rt])
    t_art, t_p50, t_acc = arts[teacher], p50[teacher, teacher_rt], accuracy.get((teacher, teacher_rt))
    rows = []
    for a, rt in runners:
        art, acc = arts[a], accuracy.get((a, rt))
        rows.append({
            "artifact": a, "runtime": rt, "precision": art.precision if rt == "ort" else "float32",
            "batches": {str(b): latency_stats(timings[a, rt, b], b) for b in settings["batch_sizes"]},
            "accuracy": acc,
            "speedup_vs_teacher": t_p50 / p50[a, rt],
            "accuracy_delta_vs_teacher": acc - t_acc if acc is not None and t_acc is not None else None,
            "macs_ratio_vs_teacher": t_art.macs / art.macs if t_art.macs and art.macs else None,
        })
    info = {}
    for a, art in arts.items():
        own = {rt: p50[a, rt] for b, rt in runners if b == a}
        info[a] = {"file": str(art.file) if art.file else None, "arch": art.card.arch,
                   "input_shape": list(art.card.input_shape), "precision": art.precision, "params": art.params,
                   "macs": art.macs, "size_bytes": art.size_bytes,
                   "onnx_file": str(art.onnx) if art.onnx and not art.onnx_is_temporary else None,
                   "onnx_size_bytes": onnx_size(art.onnx) if art.onnx else None,
                   "best_runtime": min(own, key=own.get) if own else None,
                   "ort_vs_eager": own["eager"] / own["ort"] if {"eager", "ort"} <= set(own) else None}
    return BenchResult(teacher, teacher_rt, machine, {**settings, "latency_batch": lat_batch}, info, rows)


def _table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    lat = str(result.settings["latency_batch"])
    big = str(max(result.settings["batch_sizes"]))

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def ms(v: float) -> str:  # 2 decimals, but 3 significant digits below 1 ms
        return format(v, ".2f" if v >= 1 else ".3g")

    head = ["model", "runtime", "p50 ms", "p90 ms", "p99 ms", f"img/s @{big}", "params M", "GMACs", "size MB",
            "acc %", "speedup", "MACs ratio", "Δacc pts"]
    rows = []
    for r in result.rows:
        art, s = result.artifacts[r["artifact"]], r["batches"][lat]
        rows.append([r["artifact"], r["runtime"] + (" int8" if r["precision"] == "int8" else ""),
                     ms(s["p50_ms"]), ms(s["p90_ms"]), ms(s["p99_ms"]),
                     num(r["batches"][big]["throughput"], ".1f"),
                     num(art["params"] and art["params"] / 1e6, ".2f"), num(art["macs"] and art["macs"] / 1e9, ".3f"),
                     num(art["size_bytes"] and art["size_bytes"] / 1e6, ".1f"),
                     num(r["accuracy"] and 100 * r["accuracy"], ".2f"),
                     num(r["speedup_vs_teacher"], ".2f") + "x", num(r["macs_ratio_vs_teacher"], ".2f"),
                     num(r["accuracy_delta_vs_teacher"] and 100 * r["accuracy_delta_vs_teacher"], "+.2f")])
    return head, rows


def _format_table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def summary_lines(result: BenchResult) -> list[str]:
    """One sentence per student: speedup against the teacher's fastest runtime, MACs bound, accuracy."""
    lat = result.settings["latency_batch"]
    p50 = result.row(result.teacher, result.teacher_runtime)["batches"][str(lat)]["p50_ms"]
    lines = [f"the teacher ({result.teacher}) is fastest in {result.teacher_runtime} (p50 {p50:.3g} ms at "
             f"batch {lat}, {result.machine['threads']} threads)"]
    for name, art in result.artifacts.items():
        if art["ort_vs_eager"] is not None:
            lines.append(f"{name}: ONNX Runtime is {art['ort_vs_eager']:.2f}x the speed of PyTorch eager")
    for r in result.rows:
        if r["artifact"] == result.teacher:
            continue
        text = f"{r['artifact']} ({r['runtime']}): {r['speedup_vs_teacher']:.2f}x the teacher's speed"
        if r["macs_ratio_vs_teacher"]:
            text += f" (MACs ratio {r['macs_ratio_vs_teacher']:.2f}x)"
        if r["accuracy_delta_vs_teacher"] is not None:
            text += f", accuracy {100 * r['accuracy_delta_vs_teacher']:+.2f} pts"
        lines.append(text)
    return lines


def report_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where bench.json, bench.md and bench.png go; the folder is made now, so a bad --out fails
    before the timing, not after it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DistillError(f"bench output {out} is a file; expected a directory for bench.json, bench.md "
                           "and bench.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DistillError(f"cannot write to {out}: {e.strerror}; expected a writable directory") from e
    return {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}


def write_report(result: BenchResult, out_dir: str | Path) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png (accuracy vs latency, or latency and size bars)."""
    paths = report_paths(out_dir)
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    m, s = result.machine, result.settings
    md = ["# distill bench", "",
          f"- machine: {m['cpu']}, {m['physical_cores']} physical cores, {m['threads']} threads "
          f"(torch {m['torch']}, onnxruntime {m['onnxruntime']}, OMP_WAIT_POLICY={m['omp_wait_policy']}), "
          f"{m['date']}, load average {m['load_average']:.1f}",
          f"- timing: {s['rounds']} interleaved rounds of >= {s['round_time_s']} s per model and runtime, "
          f"{s['warmup_calls']} warm-up calls excluded; latency at batch {s['latency_batch']}",
          f"- speedup: against the teacher ({result.teacher}) in its fastest runtime ({result.teacher_runtime})"]
    if s.get("command"):
        md.insert(2, f"- command: `{s['command']}`")
    md += ["", result.table(markdown=True), "", *[f"- {line}" for line in summary_lines(result)], "",
           f"![accuracy vs latency]({paths['png'].name})", ""]
    atomic_write_text(paths["md"], "\n".join(md))
    _plot(result, paths["png"])
    return paths


def _plot(result: BenchResult, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lat = str(result.settings["latency_batch"])
    labels = [f"{r['artifact']} ({r['runtime']}{' int8' if r['precision'] == 'int8' else ''})" for r in result.rows]
    p50 = [r["batches"][lat]["p50_ms"] for r in result.rows]
    acc = [r["accuracy"] for r in result.rows]
    if all(a is not None for a in acc):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.scatter(p50, [100 * a for a in acc])
        for i, (label, x, y) in enumerate(zip(labels, p50, acc)):  # alternate offsets: fewer overlaps
            ax.annotate(label, (x, 100 * y), fontsize=8, xytext=(4, 4 if i % 2 else -10), textcoords="offset points")
        front, best = [], -1.0  # Pareto front: nothing both faster and more accurate
        for x, y in sorted(zip(p50, acc)):
            if y > best:
                front.append((x, 100 * y))
                best = y
        ax.plot(*zip(*front), "--o", color="grey", mfc="none", ms=10, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(f"latency p50 at batch {lat} (ms, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.5 * len(labels) + 2))
        sizes = {a: info["size_bytes"] / 1e6 for a, info in result.artifacts.items() if info["size_bytes"]}
        for ax, names, values, xlabel, fmt in (
                (ax1, labels, p50, f"latency p50 at batch {lat} (ms, log scale)", "%.3g ms"),
                (ax2, list(sizes), list(sizes.values()), "file size (MB, log scale)", "%.3g MB")):
            bars = ax.barh(names, values)
            ax.bar_label(bars, fmt=fmt, fontsize=8, padding=2)
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 3, max(values) * 8)  # room for the labels
            ax.invert_yaxis()  # first artifact (the teacher) on top
            ax.set_xlabel(xlabel)
    fig.suptitle(f"{result.machine['cpu']}, {result.machine['threads']} threads", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
