"""Launched by test_distributed.py under torchrun: short DDP trainings on gloo, one per scenario.

`python ddp_worker.py OUT SCENARIO...`; each scenario writes OUT/SCENARIO-rank{R}.pt (weights,
history) or, when fit raised, OUT/SCENARIO-rank{R}.error (the error), then the next one runs.
"""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, TensorDataset

from distill import Distiller, Schedule, Term, distributed, fit
from distill.data import load_data
from distill.data.batched import gather
from distill.losses import HintLoss, KDLoss
from distill.losses.labels import IGNORE_LABEL
from distill.models import build_model
from distill.train import Supervised

SHAPE = (1, 8, 8)
SECONDS = 120  # then the process ends itself: a rank left waiting in a collective must not live on


class NaNOnRank1(nn.Module):
    """Mean squared difference of the logits; NaN on rank 1 only, while `when()` is true."""

    def __init__(self, when: Callable[[], bool]) -> None:
        super().__init__()
        self.when = when

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        bad = distributed.rank() == 1 and self.when()
        return (student - teacher).pow(2).mean() * (float("nan") if bad else 1.0)


class Recorded(Dataset):
    """An in-memory dataset that records, per epoch, the positions each of fit's batches asks for."""

    batchable = True

    def __init__(self, data: Dataset) -> None:
        self.data, self.epoch, self.asked = data, -1, {}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[index]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch(self, k: torch.Tensor, device: torch.device, keys: torch.Tensor | None = None):
        self.asked.setdefault(self.epoch, []).extend(k.tolist())
        return gather(self.data, k, device, keys)


def models(rank: int) -> tuple[nn.Module, nn.Module]:
    """The same teacher on every rank; a student initialised differently on each, so that only
    DDP (which starts every rank from rank 0's weights) can make the students end identical."""
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 4, SHAPE, width=8)
    torch.manual_seed(100 + rank)
    return teacher, build_model("small_cnn", 4, SHAPE, width=4)


def distiller(scenario: str, rank: int) -> Distiller:
    teacher, student = models(rank)
    if scenario in ("kd_hint", "in_memory_shard"):
        terms = [Term("kd", KDLoss()), Term("hint", HintLoss(), student="stage3", teacher="stage3")]
        return Distiller(teacher, student, terms, SHAPE)
    if scenario == "fitnets_stage1":  # no CE, one hint on a middle layer: stage3 and the head get no gradient
        return Distiller(teacher, student, [Term("hint", HintLoss(), student="stage2", teacher="stage2")],
                         SHAPE, ce_weight=0.0)
    nan_term = NaNOnRank1(lambda: False)
    d = Distiller(teacher, student, [Term("drift", nan_term)], SHAPE)
    nan_term.when = lambda: d.epoch == 1  # every step of epoch 2, on rank 1 only
    return d


def few_label_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """16 images, 4 of them labelled: 1 in the first half (rank 0's batch), 3 in the second (rank 1's)."""
    g = torch.Generator().manual_seed(3)
    targets = torch.full((16,), IGNORE_LABEL)
    targets[[2, 9, 12, 15]] = torch.tensor([0, 3, 1, 2])
    return torch.randn(16, *SHAPE, generator=g), targets


def few_label_model() -> Supervised:
    """Without BatchNorm, whose batch statistics would differ between half and whole batches."""
    torch.manual_seed(0)
    return Supervised(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)))


def few_labels_gradient(rank: int) -> dict[str, torch.Tensor]:
    """One DDP step of the labels' cross-entropy on this rank's half of few_label_batch: the gradient."""
    model = few_label_model()
    model.labels_across_ranks = True  # as fit sets it, and a user's own DDP loop must
    images, targets = (part[8 * rank: 8 * rank + 8] for part in few_label_batch())
    ddp = DistributedDataParallel(model)  # held until after backward: its reducer averages the gradients
    _, losses = ddp(images, targets)
    losses["ce"].backward()
    return {name: p.grad for name, p in model.student.named_parameters()}


def main() -> None:
    signal.alarm(SECONDS)
    out, scenarios = Path(sys.argv[1]), sys.argv[2:]
    distributed.init_from_env()
    rank = distributed.rank()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, *SHAPE, generator=g), torch.randint(0, 4, (32,), generator=g))
    for scenario in scenarios:  # 2 steps per epoch and rank (in_memory_shard: 3, 45 digits of 4 classes)
        if scenario == "few_labels_gradient":
            torch.save({"grads": few_labels_gradient(rank)}, out / f"{scenario}-rank{rank}.pt")
            continue
        d = distiller(scenario, rank)
        initial = {k: v.clone() for k, v in d.student.state_dict().items()}
        train = data
        if scenario == "in_memory_shard":
            train = Recorded(load_data("digits", jitter=1, classes=[0, 1, 2, 3], train_limit=45, test_limit=8).train)
        try:
            history = fit(d, train, Schedule(epochs=2, batch_size=8, lr=0.1), progress=False,
                          resume_path=out / f"{scenario}-resume-rank{rank}.pt",
                          skip_nonfinite=scenario == "nan_on_rank1_skipped")
        except Exception as e:  # noqa: BLE001 - recorded for the test to read; the next scenario runs
            (out / f"{scenario}-rank{rank}.error").write_text(f"{type(e).__name__}: {e}")
            continue
        torch.save({"student": d.student.state_dict(), "initial": initial, "connectors": d.connectors.state_dict(),
                    "world": dist.get_world_size(), "history": history, "asked": getattr(train, "asked", {}),
                    "labels_across_ranks": d.labels_across_ranks},
                   out / f"{scenario}-rank{rank}.pt")


if __name__ == "__main__":
    main()
