"""Launched by test_distributed.py under torchrun: a few distillation steps with DDP on gloo."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

from distill import Distiller, Schedule, Term, distributed, fit
from distill.losses import HintLoss, KDLoss
from distill.models import build_model

out = Path(sys.argv[1])
distributed.init_from_env()
rank = distributed.rank()
torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
teacher = build_model("small_cnn", 4, (1, 8, 8), width=8)
student = build_model("small_cnn", 4, (1, 8, 8), width=4)
g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))
terms = [Term("kd", KDLoss()), Term("hint", HintLoss(), student="stage3", teacher="stage3")]
distiller = Distiller(teacher, student, terms, (1, 8, 8))
torch.manual_seed(100 + rank)  # different RNG per rank: only DDP can keep the weights equal
history = fit(distiller, data, Schedule(epochs=2, batch_size=8, lr=0.1), resume_path=out / f"resume-rank{rank}.pt",
              progress=False)
torch.save({"student": student.state_dict(), "connectors": distiller.connectors.state_dict(),
            "world": dist.get_world_size(), "steps_seen": history[-1]}, out / f"weights-rank{rank}.pt")
