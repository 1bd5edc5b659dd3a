"""Latency budgets: time candidate models in ONNX Runtime, choose the most capable one that fits,
and judge whether a measured model meets a budget, within the noise of the measurement.

MACs are a poor guide to latency (depthwise convolutions, channel counts that miss the kernels'
sweet spots, memory-bound layers), so candidates are timed, not estimated: each is built with
random weights, exported to a verified ONNX file, and timed with `distill bench`'s interleaved
rounds (`bench.time_interleaved`), all in one process, so their latencies compare. The noise
stated with every p50 is the robust standard deviation (1.4826 x MAD) of the rounds' own
medians (`bench.latency_stats`).
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench import latency_stats, ort_runner, physical_cores, runner_accuracy, time_interleaved
from .errors import DistillError
from .export import export_onnx, load_onnx
from .models import ModelCard, build_model
from .models.stats import count_macs, count_params, si
from .settings import check_provider

CPU = "CPUExecutionProvider"


@dataclass
class Timing:
    """Latency of one model at one batch size: median, 90th percentile, and the median's noise."""

    p50_ms: float
    p90_ms: float
    noise_ms: float  # robust standard deviation of the per-round medians
    rounds: int
    calls: int


@dataclass
class Candidate:
    """One candidate student: what it is, what it costs, how fast it ran."""

    model: str
    options: dict[str, Any]
    params: int
    macs: int
    p50_ms: float
    p90_ms: float
    noise_ms: float = 0.0

    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.model}({opts})" if opts else self.model


def check_budget(budget_ms: Any, where: str = "latency budget") -> float:
    """A latency budget in milliseconds: a positive, finite number."""
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not (
            math.isfinite(budget_ms) and budget_ms > 0):
        raise DistillError(f"{where}: expected a positive number of milliseconds, got {budget_ms!r}")
    return float(budget_ms)


def time_onnx(files: Mapping[str, str | Path], input_shape: Sequence[int], *, batch: int = 1,
              provider: str = CPU, threads: int | None = None, rounds: int = 20, round_time: float = 0.1,
              warmup: int = 3) -> dict[str, Timing]:
    """Latency of each ONNX file at `batch`, timed interleaved in ONNX Runtime on `provider`."""
    check_provider(provider)
    threads = threads or physical_cores()
    runners = {name: ort_runner(load_onnx(path, threads, provider)) for name, path in files.items()}
    x = np.ascontiguousarray(torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0)).numpy())
    timed = time_interleaved(runners, {name: x for name in runners}, rounds=rounds, round_time=round_time,
                             warmup=warmup)
    out = {}
    for name, per_round in timed.items():
        s = latency_stats(per_round, batch)
        out[name] = Timing(float(s["p50_ms"]), float(s["p90_ms"]), s["p50_noise_ms"], rounds, int(s["calls"]))
    return out


def onnx_latency(input_shape: Sequence[int], *, batch: int = 1, provider: str = CPU, rounds: int = 10,
                 round_time: float = 0.05) -> Callable[[torch.nn.Module], float]:
    """A function timing a model's ONNX export (p50 in ms), as `prune.prune_to_latency` needs."""
    check_provider(provider)

    def measure(model: torch.nn.Module) -> float:
        with torch.no_grad():
            classes = model.eval()(torch.zeros(1, *input_shape)).shape[-1]
        card = ModelCard(arch=type(model).__name__, num_classes=classes, input_shape=tuple(input_shape))
        with tempfile.TemporaryDirectory(prefix="distill-latency-") as folder:
            path = export_onnx(model, card, Path(folder) / "model.onnx", atol=1e-3).path
            return time_onnx({"model": path}, input_shape, batch=batch, provider=provider, rounds=rounds,
                             round_time=round_time)["model"].p50_ms
    return measure


def measure_candidates(candidates: Sequence[tuple[str, dict[str, Any]]], num_classes: int,
                       input_shape: Sequence[int], *, batch: int = 1, provider: str = CPU,
                       rounds: int = 20, round_time: float = 0.1, seed: int = 0) -> list[Candidate]:
    """Build each (model, options) with random weights, export it to ONNX, and time them together.

    A candidate that cannot be built or exported is a DistillError naming it (its index and model).
    """
    check_provider(provider)
    built = []
    with tempfile.TemporaryDirectory(prefix="distill-latency-") as folder:
        files = {}
        for i, (name, options) in enumerate(candidates):
            where = f"candidate {i} ({name} {options or '{}'})"
            try:
                torch.manual_seed(seed)
                model = build_model(name, num_classes, input_shape, **options).eval()
                card = ModelCard(arch=name, num_classes=num_classes, input_shape=tuple(input_shape),
                                 kwargs=dict(options))
                files[str(i)] = export_onnx(model, card, Path(folder) / f"candidate{i}.onnx", atol=1e-3).path
            except DistillError as e:
                raise DistillError(f"{where} cannot be used: {e}") from e
            except Exception as e:  # a constructor's own error
                raise DistillError(f"{where} cannot be built: {type(e).__name__}: {e}; expected a model "
                                   "and options that build for this data") from e
            built.append((name, options, count_params(model), count_macs(model, input_shape)))
        timings = time_onnx(files, input_shape, batch=batch, provider=provider, rounds=rounds,
                            round_time=round_time)
    return [Candidate(name, dict(options), params, macs, t.p50_ms, t.p90_ms, t.noise_ms)
            for (name, options, params, macs), t in zip(built, timings.values())]


def choose(candidates: Sequence[Candidate], budget_ms: float) -> int:
    """The index of the most capable candidate (largest MACs; then the faster) whose p50 fits the
    budget. None fits: a DistillError naming the fastest candidate and its latency."""
    budget_ms = check_budget(budget_ms)
    if not candidates:
        raise DistillError("no candidates to choose from; expected at least one [[student.candidates]] entry")
    fits = [i for i, c in enumerate(candidates) if c.p50_ms <= budget_ms]
    if not fits:
        fastest = min(candidates, key=lambda c: c.p50_ms)
        raise DistillError(f"no candidate fits the latency budget of {budget_ms:g} ms: the fastest, "
                           f"{fastest.label()}, takes {fastest.p50_ms:.3g} ms (p50); expected a budget of at "
                           "least that, or smaller candidates")
    return max(fits, key=lambda i: (candidates[i].macs, -candidates[i].p50_ms))


def choice_record(candidates: Sequence[Candidate], chosen: int, budget_ms: float, batch: int,
                  provider: str) -> dict[str, Any]:
    """metrics.json's `student_choice`."""
    return {"budget_ms": budget_ms, "batch": batch, "provider": provider,
            "candidates": [asdict(c) for c in candidates], "chosen": chosen}


def choice_table(candidates: Sequence[Candidate], chosen: int | None, budget_ms: float) -> str:
    """The candidates as an aligned table, the chosen one marked, the ones over budget flagged."""
    rows = [("", "candidate", "p50 ms", "p90 ms", "noise ms", "params", "MACs", "")]
    for i, c in enumerate(candidates):
        mark = "<- chosen" if i == chosen else ("over budget" if c.p50_ms > budget_ms else "")
        rows.append((str(i), c.label(), f"{c.p50_ms:.3g}", f"{c.p90_ms:.3g}", f"{c.noise_ms:.2g}",
                     si(c.params), si(c.macs), mark))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) if k in (1, 7) else v.rjust(w) for k, (v, w) in
                               enumerate(zip(r, widths))).rstrip() for r in rows)


def verdict(timing: Timing | Mapping[str, float], budget_ms: float) -> str:
    """Whether a measured p50 meets the budget: "met" or "missed" when the p50 is further from it
    than its noise, else "within noise" (another measurement could go either way)."""
    p50 = timing["p50_ms"] if isinstance(timing, Mapping) else timing.p50_ms
    noise = timing["noise_ms"] if isinstance(timing, Mapping) else timing.noise_ms
    if p50 + noise <= budget_ms:
        return "met"
    if p50 - noise > budget_ms:
        return "missed"
    return "within noise"


def int8_decision(float_ms: float, int8_ms: float, float_accuracy: float, int8_accuracy: float,
                  max_drop_points: float) -> tuple[bool, str]:
    """Keep the int8 model only if it is faster AND loses at most `max_drop_points` points of test
    accuracy; (keep, the reason in words)."""
    drop = 100 * (float_accuracy - int8_accuracy)
    failed = []
    if not int8_ms < float_ms:
        failed.append(f"it is not faster ({int8_ms:.3g} ms vs {float_ms:.3g} ms float)")
    if drop > max_drop_points:
        failed.append(f"it loses {drop:.2f} points of test accuracy (at most {max_drop_points:g} allowed)")
    if failed:
        return False, "int8 rejected, float kept: " + " and ".join(failed)
    return True, (f"int8 kept: {float_ms / int8_ms:.2f}x faster ({int8_ms:.3g} vs {float_ms:.3g} ms), "
                  f"{drop:+.2f} points of accuracy lost")


def compare_int8(float_file: Path, int8_file: Path, input_shape: Sequence[int], data: Any, *,
                 max_drop_points: float, batch: int = 1, provider: str = CPU,
                 measure: Callable[..., dict[str, Timing]] = time_onnx) -> dict[str, Any]:
    """Time the float and int8 files together, test both, and decide (see `int8_decision`)."""
    timings = measure({"float": float_file, "int8": int8_file}, input_shape, batch=batch, provider=provider)
    accuracy = {k: runner_accuracy(ort_runner(load_onnx(f)), data) for k, f in
                (("float", float_file), ("int8", int8_file))}
    keep, reason = int8_decision(timings["float"].p50_ms, timings["int8"].p50_ms, accuracy["float"],
                                 accuracy["int8"], max_drop_points)
    return {"kept": keep, "reason": reason, "float_p50_ms": timings["float"].p50_ms,
            "int8_p50_ms": timings["int8"].p50_ms, "float_accuracy": accuracy["float"],
            "int8_accuracy": accuracy["int8"], "max_drop_points": max_drop_points}


def budget_summary(metrics: dict[str, Any]) -> list[str]:
    """The end-of-run lines: which candidate the budget chose, whether the exported models meet
    their budgets (with the noise), and whether int8 was kept."""
    lines, choice = [], metrics.get("student_choice")
    if choice and "candidates" in choice:
        c = choice["candidates"][choice["chosen"]]
        lines.append(f"latency budget {choice['budget_ms']:g} ms: chose {Candidate(**c).label()} (p50 {c['p50_ms']:.3g} "
                     f"ms, candidate {choice['chosen']} of {len(choice['candidates'])}; batch {choice['batch']}, "
                     f"{choice['provider']})")
    for name, v in metrics.get("budget_check", {}).items():
        lines.append(f"{name}.onnx: p50 {v['p50_ms']:.3g} +- {v['noise_ms']:.2g} ms (noise: spread of the p50 over "
                     f"{v['rounds']} rounds) against a budget of {v['budget_ms']:g} ms: {v['verdict'].upper()}")
    for role, exported in metrics.get("export", {}).items():
        if isinstance(exported, dict) and "int8" in exported:
            lines.append(f"{role}: {exported['int8']['reason']}")
    return lines
