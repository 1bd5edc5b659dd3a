"""Structured (channel) pruning to a MACs budget, with torch-pruning's dependency graph.

Removing a conv's output channels also shrinks every layer that reads them (its BatchNorm, the
next conv, a residual partner, the classifier's inputs); torch-pruning's dependency graph finds
those couplings, so the pruned model is a smaller dense model that needs no sparse kernels.

`prune_model` removes channels in `steps` rounds, each taking an equal share of the MACs, ranking
channels globally (one threshold for the whole network) and re-ranking as it goes, until the MACs
are `macs_ratio` of the original. Channel counts stay multiples of `round_to` (fast kernels) and
the classification head keeps its outputs.

A pruned model no longer matches the architecture its `ModelCard` builds.
`distill.models.structure` records and re-applies the pruned sizes as plain data, so a pruned checkpoint
still loads with `weights_only=True`.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import DistillError, did_you_mean
from .models.checkpoint import finite_weights, load_checkpoint, save_checkpoint
from .models.registry import last_layer
from .models.stats import si
from .settings import check_prune

TOLERANCE = 0.05  # the achieved MACs ratio counts as on target within 5% of it
_MAX_RATIO = 0.9  # no round removes more than 90% of a layer's channels
_STRIDE = 0.01  # the smallest step of a round: 1% of its channels
_AIM = 1.01  # a round stops once the MACs are within 1% above its goal
ROUND_TOS = (1, 8, 16)  # channel roundings tried at the last step of pruning to a latency budget
LATENCY_STEP = 0.8  # each step towards a latency budget keeps this share of the MACs


@dataclass
class PruneReport:
    """What pruning did to a model's cost; `ratio` is the achieved macs_after / macs_before."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ratio: float
    target: float
    steps: int
    importance: str
    latency_ms_before: float | None = None  # batch of one, best of 20; measured only when asked
    latency_ms_after: float | None = None   # (ONNX Runtime p50 when pruning to a latency budget)
    latency_budget_ms: float | None = None  # set: pruned to this latency, not to `target` MACs
    round_to: int | None = None             # the channel rounding kept (chosen for speed with a budget)
    trials: list[dict] = field(default_factory=list)  # with a budget: every step and rounding timed

    @property
    def on_target(self) -> bool:
        if self.latency_budget_ms is not None:
            return self.latency_ms_after is not None and self.latency_ms_after <= self.latency_budget_ms
        return abs(self.ratio - self.target) <= TOLERANCE * self.target

    def summary(self) -> str:
        """A small before/after table for the terminal."""
        rows = [("MACs", si(self.macs_before), si(self.macs_after), self.macs_after / self.macs_before),
                ("params", si(self.params_before), si(self.params_after),
                 self.params_after / self.params_before)]
        if self.latency_ms_before and self.latency_ms_after:
            rows.append(("latency (ms, batch 1)", f"{self.latency_ms_before:.2f}",
                         f"{self.latency_ms_after:.2f}", self.latency_ms_after / self.latency_ms_before))
        lines = [f"{'':<22}{'before':>10}{'after':>10}{'kept':>8}"]  # kept = after / before
        lines += [f"{name:<22}{before:>10}{after:>10}{kept:>8.1%}" for name, before, after, kept in rows]
        steps = f"{self.importance} importance, {self.steps} step{'s' * (self.steps != 1)}"
        if self.latency_budget_ms is not None:
            met = "met" if self.on_target else "NOT met"
            lines.append(f"target: {self.latency_budget_ms:g} ms ONNX latency at batch 1 ({met}); {steps}; channels "
                         f"rounded to multiples of {self.round_to} (the fastest of {', '.join(map(str, ROUND_TOS))} "
                         "at the last step)")
            return "\n".join(lines)
        verdict = "on target" if self.on_target else f"OFF target by more than {TOLERANCE:.0%}"
        lines.append(f"target: keep {self.target:.0%} of the MACs ({verdict}); {steps}")
        return "\n".join(lines)


def prune_model(model: nn.Module, example_input: Tensor, *, macs_ratio: float = 0.5,
                importance: str = "magnitude", steps: int = 5, round_to: int = 8,
                calibration: tuple[Tensor, Tensor] | None = None,
                ignored_layers: Iterable[nn.Module | str] | None = None,
                latency: bool = False) -> PruneReport:
    """Remove channels from `model`, in place, until its MACs are `macs_ratio` of what they were.

    `example_input` is a batch the model accepts (used to trace it and count MACs). Taylor
    importance needs a `calibration` batch `(x, y)` of inputs and labels for its gradients.
    `ignored_layers` (modules or their names) keep their output channels, as the head always does.
    On a DistillError raised mid-way the model may be left partly pruned.
    """
    check_prune(macs_ratio, importance, steps, round_to)
    if importance == "taylor" and calibration is None:
        raise DistillError("taylor importance needs a calibration batch (x, y) for its gradients; "
                           "expected calibration=(inputs, labels), or importance 'magnitude' or 'lamp'")
    ignored = [last_layer(model)[1], *_resolve(model, ignored_layers or [])]
    was_training = model.training
    model.eval()  # trace and score without touching BatchNorm statistics
    try:
        with torch.no_grad():
            expected_shape = model(example_input).shape
        macs_before, params_before, layers = _count(model, example_input)
        before_ms = _latency_ms(model, example_input) if latency else None
        macs_after, params_after = macs_before, params_before
        for step in range(1, steps + 1):
            goal = macs_ratio ** (step / steps) * macs_before
            if macs_after <= goal * _AIM:  # an earlier round overshot
                continue
            macs_after, params_after, layers = _prune_round(
                model, example_input, importance, calibration, ignored, round_to, macs_after, layers, goal)
            if macs_after > goal * (1 + TOLERANCE):
                raise DistillError(
                    f"cannot prune {type(model).__name__} to {macs_ratio:.0%} of its MACs: it stopped at "
                    f"{macs_after / macs_before:.1%} with every prunable layer at its limit; expected a "
                    "larger MACs ratio or fewer ignored layers")
        with torch.no_grad():
            shape = model(example_input).shape
        if shape != expected_shape:
            raise DistillError(f"pruned {type(model).__name__} returns shape {tuple(shape)}, not "
                               f"{tuple(expected_shape)}; expected a model torch-pruning can follow")
        after_ms = _latency_ms(model, example_input) if latency else None
    except DistillError:
        raise
    except Exception as e:  # whatever torch-pruning or the pruned forward raised: this model is beyond it
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise DistillError(f"torch-pruning cannot prune {type(model).__name__} ({type(e).__name__}: {why}); "
                           "expected a model of standard layers whose forward does not hard-code channel "
                           "counts (pass the layers it cannot follow as ignored_layers)") from e
    finally:
        if importance == "taylor":
            model.zero_grad(set_to_none=True)  # the calibration gradients, stale once channels went
        model.train(was_training)
    return PruneReport(macs_before, macs_after, params_before, params_after, macs_after / macs_before,
                       macs_ratio, steps, importance, before_ms, after_ms)


def _resolve(model: nn.Module, layers: Iterable[nn.Module | str]) -> list[nn.Module]:
    names = dict(model.named_modules())
    found = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in names:
                raise DistillError(f"no layer {layer!r} in {type(model).__name__}"
                                   f"{did_you_mean(layer, [n for n in names if n])}; expected a module name")
            layer = names[layer]
        found.append(layer)
    return found


def _prune_round(model: nn.Module, x: Tensor, importance: str, calibration: tuple[Tensor, Tensor] | None,
                 ignored: list[nn.Module], round_to: int, macs: int, layers: dict[nn.Module, float],
                 goal: float) -> tuple[int, int, dict[nn.Module, float]]:
    """Prune from `macs` (per layer: `layers`) to at most `goal` MACs or until nothing is left to
    prune; return the new count (see `_count`).

    Each step re-ranks the channels and goes halfway (at least 1% of the channels) to the cut that
    MACs ~ kept_channels ** alpha predicts, alpha fitted as it goes (2 at first). Its groups are
    pruned one by one, stopping as soon as the goal is met: rounding to `round_to` makes any single
    step remove more MACs than its share of channels.
    """
    if importance == "taylor":
        _taylor_gradients(model, calibration)
    pruner = tp.pruner.BasePruner(
        model, x, importance=_importance(importance), global_pruning=True, pruning_ratio=_MAX_RATIO,
        max_pruning_ratio=_MAX_RATIO, iterative_steps=math.ceil(_MAX_RATIO / _STRIDE),
        ignored_layers=ignored, round_to=round_to)
    estimate = _macs_estimate(macs, layers)
    ratio, alpha = 0.0, 2.0
    for step in range(1, pruner.iterative_steps + 1):
        wanted = 1 - (goal / macs) ** (1 / alpha)
        ratio = min(ratio + max(_STRIDE, (wanted - ratio) / 2), _MAX_RATIO)
        pruner.per_step_pruning_ratio[step] = ratio  # share of the round's channels gone after this step
        for group in pruner.step(interactive=True):
            group.prune()
            if estimate() <= goal * _AIM:
                return _count(model, x)
        kept = estimate() / macs
        if 0 < kept < 1:
            alpha = math.log(kept) / math.log(1 - ratio)
        if ratio >= _MAX_RATIO:
            break
    return _count(model, x)


def _macs_estimate(macs: int, layers: dict[nn.Module, float]) -> Callable[[], float]:
    """A cheap, slightly high MACs count while channels go: a layer's MACs scale with its weight's size.

    Layers without a `weight` (activations, pooling) count as fixed; they shrink too, so the
    estimate stays at or a little above the true count.
    """
    scaled = [(m, n, m.weight.numel()) for m, n in layers.items()
              if n and not list(m.children()) and isinstance(getattr(m, "weight", None), Tensor)]
    fixed = macs - sum(n for _, n, _ in scaled)
    return lambda: fixed + sum(n * m.weight.numel() / size for m, n, size in scaled)


def _importance(name: str) -> tp.importance.Importance:
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    return tp.importance.GroupMagnitudeImportance(p=2)


def _taylor_gradients(model: nn.Module, calibration: tuple[Tensor, Tensor]) -> None:
    """Gradients of the loss on the calibration batch, which Taylor importance multiplies with weights."""
    x, y = calibration
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(x), y).backward()


def _count(model: nn.Module, x: Tensor) -> tuple[int, int, dict[nn.Module, float]]:
    """(MACs, parameters, MACs of each module) for one forward pass on `x`."""
    macs, params, layer_macs, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    return int(macs), int(params), layer_macs


def _latency_ms(model: nn.Module, x: Tensor, runs: int = 20, warmup: int = 5) -> float:
    """Fastest of `runs` forward passes on one sample, after warm-up passes: on a busy machine the
    minimum is the stable statistic (other processes only ever add time)."""
    x = x[:1]
    times = []
    with torch.inference_mode():
        for _ in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return min(times[warmup:])


def prune_to_latency(model: nn.Module, example_input: Tensor, budget_ms: float,
                     latency_ms: Callable[[nn.Module], float], *, importance: str = "magnitude",
                     step: float = LATENCY_STEP, max_steps: int = 25, search_round_to: int = 8,
                     calibration: tuple[Tensor, Tensor] | None = None,
                     ignored_layers: Iterable[nn.Module | str] | None = None) -> tuple[nn.Module, PruneReport]:
    """A copy of `model` pruned step by step until `latency_ms(model)` is within `budget_ms` (the
    model itself when it already is); the pruned model and what was done.

    Each step keeps `step` of the MACs the model has then (channels rounded to `search_round_to`)
    and times the result. The step that reaches the budget is redone from the model before it with
    every rounding of ROUND_TOS, and the fastest result kept: rounding changes which kernels run,
    and the best multiple depends on the runtime, so it is measured rather than fixed.
    """
    from .latency import check_budget
    budget_ms = check_budget(budget_ms)
    names = {id(m): n for n, m in model.named_modules()}  # copies are pruned: name layers, not modules
    ignored = [names[id(x)] if isinstance(x, nn.Module) else x for x in ignored_layers or []]
    macs_before, params_before, _ = _count(model, example_input)
    before = after = latency_ms(model)
    current, trials, rounding = model, [], None
    for k in range(1, max_steps + 1):
        if after <= budget_ms:
            break
        tried = {}
        for r in [search_round_to] + [r for r in ROUND_TOS if r != search_round_to]:
            trial = copy.deepcopy(current)
            try:
                prune_model(trial, example_input, macs_ratio=step, importance=importance, steps=1, round_to=r,
                            calibration=calibration, ignored_layers=ignored)
            except DistillError as e:
                if tried:  # this rounding cannot take the step: others can
                    continue
                raise DistillError(f"cannot prune {type(model).__name__} to {budget_ms:g} ms: after {k - 1} "
                                   f"step(s) it takes {after:.3g} ms and cannot be pruned further ({e}); "
                                   "expected a larger latency budget") from e
            tried[r] = (trial, latency_ms(trial))
            trials.append({"step": k, "round_to": r, "macs": _count(trial, example_input)[0],
                           "latency_ms": tried[r][1]})
            if r == search_round_to and tried[r][1] > budget_ms:
                break  # not the last step: keep rounding to `search_round_to`
        rounding = min(tried, key=lambda r: tried[r][1])
        current, after = tried[rounding]
    if after > budget_ms:
        raise DistillError(f"cannot prune {type(model).__name__} to {budget_ms:g} ms in {max_steps} steps: it "
                           f"stopped at {after:.3g} ms; expected a larger latency budget")
    macs_after, params_after, _ = _count(current, example_input)
    return current, PruneReport(macs_before, macs_after, params_before, params_after, macs_after / macs_before,
                                macs_after / macs_before, len({t["step"] for t in trials}), importance, before,
                                after, budget_ms, rounding, trials)


def prune_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, macs_ratio: float = 0.5,
                     importance: str = "magnitude", steps: int = 5, round_to: int = 8,
                     calibration: tuple[Tensor, Tensor] | None = None,
                     ignored_layers: Iterable[nn.Module | str] | None = None,
                     latency: bool = False, latency_budget_ms: float | None = None,
                     trust_code: bool | Iterable[str] = False) -> PruneReport:
    """Prune the model of a distill checkpoint (see `prune_model`, or `prune_to_latency` with
    `latency_budget_ms`: ONNX Runtime on the CPU at batch 1) and save it, still self-describing.
    `trust_code` as in `load_checkpoint`."""
    check_prune(macs_ratio, importance, steps, round_to)
    model, card = load_checkpoint(path, trust_code)
    if not finite_weights(model):  # every channel's importance would be NaN: nothing could be ranked
        raise DistillError(f"checkpoint {path} holds NaN or infinite weights; expected a trained model (this one "
                           "diverged or is damaged)")
    example = torch.randn(1, *card.input_shape, generator=torch.Generator().manual_seed(0))
    if latency_budget_ms is not None:
        from .latency import onnx_latency
        model, report = prune_to_latency(model, example, latency_budget_ms, onnx_latency(card.input_shape),
                                         importance=importance, calibration=calibration,
                                         ignored_layers=ignored_layers)
    else:
        report = prune_model(model, example, macs_ratio=macs_ratio, importance=importance, steps=steps,
                             round_to=round_to, calibration=calibration, ignored_layers=ignored_layers,
                             latency=latency)
    save_checkpoint(out, model, replace(card, pruned=True),
                    extra={"pruned_from": str(path), "prune": asdict(report)})
    return report
