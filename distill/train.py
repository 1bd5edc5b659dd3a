"""Training loop for plain training and distillation: fit, evaluate, checkpoint, resume.

`fit` trains any module whose forward is `(images, targets) -> (logits, {term: loss})`: a
`Distiller`, or a plain classifier wrapped in `Supervised`. At the end of every epoch it writes one
atomic resume file with the trainable weights, optimizer, scheduler, RNG and history; the shuffle
order of epoch e depends only on (seed, e). So a run killed at any point resumes from its last
complete epoch, and on CPU in deterministic mode ends with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from . import distributed
from .data.batched import IndexBatches, NoSingletonBatches, batchable
from .errors import DistillError
from .files import atomic_save
from .losses.labels import IGNORE_LABEL, labelled_cross_entropy
from .models import safe_load
from .settings import Schedule, Speed


class Supervised(nn.Module):
    """Wraps a classifier so it trains like a Distiller without a teacher: loss = cross-entropy
    (over the labelled samples: a label of -1 marks an unlabelled image, which is skipped)."""

    labels_across_ranks = False  # set by fit under DDP: the labelled count is all-reduced each step

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.student = model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student(images)
        return logits, {"ce": labelled_cross_entropy(logits, targets, self.training and self.labels_across_ranks)}


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0, device: torch.device | str | None = None,
                in_memory: bool = True) -> IndexBatches | DataLoader:
    """An epoch's batches, in an order that depends only on (seed, epoch), so resumed runs see the same
    batches. An in-memory dataset (`batchable`) is sliced by index and augmented on `device`, unless
    `in_memory` is False; any other goes through a DataLoader (workers, pinned memory for CUDA). Both
    paths give the same batches in the same order."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    device = None if device is None else torch.device(device)
    return _batches(dataset, NoSingletonBatches(sampler, batch_size), num_workers, device, in_memory,
                    worker_seed=seed * 100_003 + epoch)


def _batches(dataset: Dataset, batch_sampler: NoSingletonBatches, num_workers: int, device: torch.device | None,
             in_memory: bool, worker_seed: int | None = None) -> IndexBatches | DataLoader:
    """`batch_sampler`'s batches of `dataset`: by index when it is in memory (and `in_memory`), else
    from a DataLoader."""
    if in_memory and batchable(dataset):
        return IndexBatches(dataset, batch_sampler, device or torch.device("cpu"))
    # the workers' seeds come from a generator of their own: drawn from the sampler's, they would
    # shift its order away from the in-memory path's
    workers = None if worker_seed is None else torch.Generator().manual_seed(worker_seed)
    return DataLoader(dataset, batch_sampler=batch_sampler, generator=workers, num_workers=num_workers,
                      persistent_workers=False, pin_memory=device is not None and device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu",
             batch_size: int = 256, keep_predictions: bool = False) -> dict[str, Any]:
    """Accuracy (fraction 0..1) and mean cross-entropy of a classifier on a dataset; with
    `keep_predictions`, also its top class and the label per image ("predictions", "labels": int64
    tensors in dataset order), from the same pass, for per-class figures without a second one."""
    correct, total, loss = 0, 0, 0.0
    predicted, labels = [], []
    for logits, targets in _outputs(model, data, device, batch_size):
        loss += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.argmax(1)
        correct += (top == targets).sum().item()
        total += targets.numel()
        if keep_predictions:
            predicted.append(top.cpu())
            labels.append(targets.cpu())
    result: dict[str, Any] = {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1)}
    if keep_predictions:
        empty = torch.zeros(0, dtype=torch.int64)
        result["predictions"] = torch.cat(predicted).long() if predicted else empty
        result["labels"] = torch.cat(labels).long() if labels else empty
    return result


@torch.no_grad()
def correct_predictions(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str = "cpu",
                        batch_size: int = 256) -> Tensor:
    """Per image, in dataset order, whether the model's top class is the label: a bool tensor [N].

    Two models' masks on the same images allow a paired comparison (`distill.gain.paired_gain`).
    """
    masks = [(logits.argmax(1) == targets).cpu() for logits, targets in _outputs(model, data, device, batch_size)]
    return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)


def _outputs(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str,
             batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(logits, labels) batch by batch with the model in eval mode; its mode is restored afterwards."""
    device = torch.device(device)
    loader = data if isinstance(data, DataLoader) else make_loader(data, batch_size, shuffle=False, device=device)
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            targets = targets.to(device)
            yield model(images.to(device)), targets
    finally:
        model.train(was_training)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        states = list(state["cuda"])[:torch.cuda.device_count()]  # resumed with fewer GPUs visible
        for index, gpu_state in enumerate(states):
            torch.cuda.set_rng_state(gpu_state, index)


def _trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The module's own `trainable_parameters()`, else every parameter that requires grad."""
    if hasattr(module, "trainable_parameters"):
        return list(module.trainable_parameters())
    return [p for p in module.parameters() if p.requires_grad]


def _trainable(module: nn.Module) -> dict[str, nn.Module]:
    """The parts of a training module that a resume file must hold (never the frozen teacher)."""
    parts = {"student": module.student}
    if getattr(module, "connectors", None) is not None and len(module.connectors):
        parts["connectors"] = module.connectors
    if getattr(module, "stateful_terms", None) is not None and len(module.stateful_terms):
        parts["terms"] = module.stateful_terms  # CRD: embedding heads and memory banks
    return parts


def fit(module: nn.Module, train_data: Dataset, schedule: Schedule, *,
        val_data: Dataset | None = None, device: torch.device | str = "cpu", seed: int = 0,
        resume_path: str | Path | None = None, resume: bool = False,
        param_groups: list[dict[str, Any]] | None = None, num_workers: int = 0,
        speed: Speed | None = None, skip_nonfinite: bool = False, desc: str = "train",
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True) -> list[dict[str, Any]]:
    """Train `module` for `schedule.epochs` epochs; returns the per-epoch history.

    Args:
        module: forward `(images, targets) -> (logits, {term: loss})` with a `.student` attribute: a
            `Distiller`, or a classifier wrapped in `Supervised`; its `trainable_parameters()`, when
            it has one, says what the optimizer updates.
            Batches of three items `(images, targets, teacher_outputs)` (from a TeacherCache) pass
            the third as `teacher_outputs=`.
        param_groups: optimizer groups, each with an optional "lr_scale" (e.g. a smaller rate for a
            pretrained backbone); default: every parameter that requires grad, at `schedule.lr`.
        resume_path: where the end-of-epoch state is written; with `resume=True` training continues
            from it when it exists.
        speed: mixed precision, channels_last, torch.compile, loader workers.
        skip_nonfinite: skip (and count) steps whose loss is NaN/inf instead of stopping the run.
            Skipping is decided step by step, so this mode reads the loss on the host every step
            (a GPU sync); without it a NaN/inf is found at most `NONFINITE_CHECK_STEPS` steps late.

    Under torchrun (see distill.distributed) the module is wrapped in DistributedDataParallel,
    each process sees its shard of every epoch, and only rank 0 writes the resume file and prints.
    """
    speed = speed or Speed(num_workers=num_workers)
    distributed.init_from_env(device)
    device = distributed.device_for_rank(torch.device(device))
    progress = progress and distributed.is_main()
    module.to(device)
    if speed.channels_last:
        module.to(memory_format=torch.channels_last)
    optimizer = schedule.make_optimizer(_scaled_groups(module, schedule, param_groups))
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp == "fp16" and device.type == "cuda")
    history: list[dict[str, Any]] = []
    resume_path = Path(resume_path) if resume_path else None
    if resume and resume_path and resume_path.exists():
        history = _load_resume_state(resume_path, module, optimizer, scaler)
        if progress and len(history) < schedule.epochs:
            tqdm.write(f"{desc}: resuming after epoch {len(history)}/{schedule.epochs} from {resume_path}")
    else:
        torch.manual_seed(seed)
        random.seed(seed)
    step_module = _step_module(module, train_data, schedule, device, speed)

    for epoch in range(len(history), schedule.epochs):
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        if hasattr(module, "set_epoch"):  # e.g. a Distiller's term warm-up
            module.set_epoch(epoch)
        record = _train_epoch(step_module, train_data, schedule, optimizer, epoch, device=device, seed=seed,
                              speed=speed, scaler=scaler, skip_nonfinite=skip_nonfinite, desc=desc,
                              progress=progress)
        for part in _trainable(module).values():
            distributed.sync_buffers(part)
        if val_data is not None:
            record["val_accuracy"] = evaluate(module.student, val_data, device)["accuracy"]
        history.append(record)
        if resume_path and distributed.is_main():
            _save_resume_state(resume_path, module, optimizer, scaler, history)
        distributed.barrier()
        if on_epoch:
            on_epoch(record)
        if progress:
            tqdm.write(_format_record(desc, record, schedule.epochs))
    module.eval()
    return history


def _scaled_groups(module: nn.Module, schedule: Schedule,
                   param_groups: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Optimizer groups at `schedule.lr` times their "lr_scale" (default 1)."""
    groups = param_groups or [{"params": _trainable_parameters(module)}]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = schedule.lr * g["lr_scale"]
    return groups


def _save_resume_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler, history: list[dict[str, Any]]) -> None:
    """Everything an exact resume needs after the last epoch of `history`, written atomically.

    The fp16 loss scale is part of it: a resumed run restarting from the initial scale would
    take other steps (skipped overflows) than the uninterrupted one."""
    atomic_save({"epoch": len(history), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "rng": _rng_state(), "history": history,
                 **{k: p.state_dict() for k, p in _trainable(module).items()}}, path)


def _load_resume_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler) -> list[dict[str, Any]]:
    """Restore what `_save_resume_state` wrote; returns the history so far (one row per epoch)."""
    state = safe_load(path)
    try:
        for key, part in _trainable(module).items():
            part.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # empty when saved without fp16 scaling (CPU, bf16, fp32)
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        history = state["history"]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DistillError(f"resume file {path} does not fit what is being trained ({first[:200]}); expected "
                           "the state this training wrote: delete it to restart from the first epoch") from e
    if not isinstance(history, list):
        raise DistillError(f"resume file {path} holds no list of epochs; expected the state this training "
                           "wrote: delete it to restart from the first epoch")
    return history


def _step_module(module: nn.Module, data: Dataset, schedule: Schedule, device: torch.device,
                 speed: Speed) -> nn.Module:
    """What the training steps call: the module, wrapped in DDP under torchrun, compiled when asked."""
    step_module = module
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel
        if hasattr(module, "labels_across_ranks"):  # every rank runs every step, so a collective may
            module.labels_across_ranks = True       # weigh the labels of all ranks' batches alike
        # DDP waits for a gradient of every parameter unless told some get none (a FitNets stage-1
        # student's head, with no cross-entropy); telling it always costs a graph traversal per step.
        unused = _some_parameter_gets_no_gradient(module, data, schedule, device, speed)
        step_module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=unused)
    if speed.compile:
        step_module = torch.compile(step_module)
    return step_module


def _some_parameter_gets_no_gradient(module: nn.Module, data: Dataset, schedule: Schedule,
                                     device: torch.device, speed: Speed) -> bool:
    """One training forward and backward on a first batch, undone afterwards (gradients, BN
    statistics, random state): whether a parameter that requires grad got no gradient. All ranks
    agree on the answer, as DDP needs."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    buffers = [b.clone() for b in module.buffers()]
    rng, was_training = _rng_state(), module.training
    module.train()
    first = make_loader(data, schedule.batch_size, shuffle=False, device=device, in_memory=speed.in_memory)
    images, targets, kwargs = _on_device(next(iter(first)), device, speed)
    with speed.autocast(device):
        _, losses = module(images, targets, **kwargs)
    sum(losses.values()).backward()
    unused = torch.tensor([float(any(p.grad is None for p in params))], device=device)
    for p in params:
        p.grad = None
    with torch.no_grad():
        for b, saved in zip(module.buffers(), buffers):
            b.copy_(saved)
    _set_rng_state(rng)
    module.train(was_training)
    return bool(distributed.all_reduce(unused, "max").item())


def _on_device(batch: Any, device: torch.device, speed: Speed) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """(images, targets, forward keyword arguments) of a loader batch, on the device."""
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    images = batch[0].to(device, non_blocking=True, memory_format=memory_format)
    targets = batch[1].to(device, non_blocking=True)
    kwargs = {}
    if len(batch) > 2:
        kwargs["teacher_outputs"] = {k: v.to(device, non_blocking=True) for k, v in batch[2].items()}
    return images, targets, kwargs


def _loader(data: Dataset, schedule: Schedule, epoch: int, seed: int, speed: Speed,
            device: torch.device) -> IndexBatches | DataLoader:
    """Epoch `epoch`'s batches; under DDP this rank's shard, DistributedSampler's (also in memory)."""
    if not distributed.active():
        return make_loader(data, schedule.batch_size, shuffle=True, seed=seed, epoch=epoch,
                           num_workers=speed.num_workers, device=device, in_memory=speed.in_memory)
    from torch.utils.data.distributed import DistributedSampler
    sampler = DistributedSampler(data, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return _batches(data, NoSingletonBatches(sampler, schedule.batch_size), speed.num_workers, device,
                    speed.in_memory)


NONFINITE_CHECK_STEPS = 100  # without skip_nonfinite: how often (and at every epoch end) NaN/inf is checked
_NONFINITE_KINDS = ("nan", "inf", "-inf")
_NEVER = 2 ** 62


class _NonFiniteWatch:
    """The first step at which each loss term (or their sum) became NaN/inf, kept on the device.

    `record` adds a few small kernels per step and no host sync; `check` syncs once, agrees across
    DDP ranks (every rank raises, none writes the bad epoch) and names the earliest term."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.first: Tensor | None = None  # per name: step * 3 + index in _NONFINITE_KINDS, or _NEVER

    def record(self, step: int, losses: dict[str, Tensor], total: Tensor) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in (*losses.values(), total)])
        if self.first is None:
            self.names = [*losses, "total"]
            self.first = torch.full(values.shape, _NEVER, dtype=torch.int64, device=values.device)
        kind = torch.where(values.isnan(), 0, torch.where(values > 0, 1, 2))
        key = torch.where(values.isfinite(), _NEVER, step * 3 + kind)
        torch.minimum(self.first, key, out=self.first)

    def check(self, desc: str, epoch: int) -> None:
        if self.first is None:
            return
        keys = distributed.all_reduce(self.first.clone(), "min").tolist()
        if min(keys) == _NEVER:
            return
        name = self.names[keys.index(min(keys))]  # a term before the total that it made non-finite
        step, kind = divmod(min(keys), 3)
        raise DistillError(f"{desc}: loss term {name!r} became {_NONFINITE_KINDS[kind]} at epoch {epoch + 1}, "
                           f"step {step + 1}; the last good checkpoint is kept. Expected finite losses: lower "
                           "the learning rate or this term's weight, or allow skipping with skip_nonfinite")


def _nonfinite_on_any_rank(loss: Tensor) -> bool:
    """Whether the loss is NaN/inf on this or any other DDP rank, so that all skip the step together
    (a rank skipping alone would leave the others waiting in the gradient all-reduce). Syncs."""
    flag = (~torch.isfinite(loss.detach())).float().reshape(1)
    return bool(distributed.all_reduce(flag, "max").item())


def _train_epoch(module: nn.Module, data: Dataset, schedule: Schedule, optimizer: torch.optim.Optimizer,
                 epoch: int, *, device: torch.device, seed: int, speed: Speed, scaler: torch.amp.GradScaler,
                 skip_nonfinite: bool, desc: str, progress: bool) -> dict[str, Any]:
    """One epoch. Nothing here reads a GPU value on the host per step, except: skip_nonfinite's
    per-step check, the progress bar's loss every 10 steps (only when shown), and fp16's GradScaler."""
    module.train()
    loader = _loader(data, schedule, epoch, seed, speed, device)
    sums: dict[str, Tensor] = {}
    correct, labelled = (torch.zeros((), device=device, dtype=torch.int64) for _ in range(2))
    seen, skipped = 0, 0
    watch = _NonFiniteWatch()
    started = time.perf_counter()
    bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{schedule.epochs}", leave=False,
               disable=None if progress else True, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        factor = schedule.lr_factor(epoch + step / max(len(loader), 1))
        for g in optimizer.param_groups:
            g["lr"] = schedule.lr * g["lr_scale"] * factor
        images, targets, kwargs = _on_device(batch, device, speed)
        with speed.autocast(device):
            logits, losses = module(images, targets, **kwargs)
            loss = sum(losses.values())
        if skip_nonfinite and _nonfinite_on_any_rank(loss):
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
            continue
        if not skip_nonfinite:
            watch.record(step, losses, loss)
            if (step + 1) % NONFINITE_CHECK_STEPS == 0:
                watch.check(desc, epoch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = targets.numel()  # running sums stay on the device
        seen += n
        correct += (logits.detach().argmax(1) == targets).sum()  # never equal to IGNORE_LABEL
        labelled += (targets != IGNORE_LABEL).sum()
        for k, v in (*losses.items(), ("loss", loss)):
            sums[k] = sums.get(k, 0.0) + v.detach().float() * n
        if progress and not bar.disable and step % 10 == 0:  # a bar on screen reads the loss: a sync
            bar.set_postfix(loss=f"{loss.item():.3f}")
    watch.check(desc, epoch)  # before the caller evaluates or saves this epoch's weights
    record: dict[str, Any] = {"phase": desc, "epoch": epoch + 1,
                              "lr": schedule.lr * schedule.lr_factor(epoch + 1 - 1e-9)}
    seen, correct, labelled, *totals = _summed_over_ranks([seen, correct, labelled, *sums.values()], device)
    record.update({k: total / max(seen, 1) for k, total in zip(sums, totals)})
    record["train_accuracy"] = correct / max(labelled, 1)  # on the labelled samples
    record["skipped_steps"] = skipped
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _summed_over_ranks(values: list[Tensor | int], device: torch.device) -> list[float]:
    """Each value summed over every rank, in one all-reduce (as is in one process): under DDP an
    epoch's record then covers every rank's shard, not rank 0's alone."""
    if not distributed.active():
        return [float(v) for v in values]
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    return distributed.all_reduce(packed, "sum").tolist()


def _format_record(desc: str, r: dict[str, Any], epochs: int) -> str:
    parts = [f"{desc} epoch {r['epoch']}/{epochs}", f"loss {r.get('loss', float('nan')):.4f}",
             f"train_acc {r['train_accuracy']:.4f}"]
    if "val_accuracy" in r:
        parts.append(f"val_acc {r['val_accuracy']:.4f}")
    if r.get("skipped_steps"):
        parts.append(f"skipped {r['skipped_steps']}")
    parts.append(f"{r['seconds']:.1f}s")
    return "  ".join(parts)
