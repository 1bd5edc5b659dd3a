"""Two processes with gloo on CPU: DDP keeps the student identical, only rank 0 writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch


def test_two_gloo_processes_end_with_identical_students_and_only_rank0_writes(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(worker), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"weights-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    for part in ("student", "connectors"):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between ranks"
    assert (tmp_path / "resume-rank0.pt").exists()
    assert not (tmp_path / "resume-rank1.pt").exists(), "only rank 0 writes training state"
