"""CRD's two scoring routes timed in one run: gathering B x (K + 1) bank rows vs one matmul
against the whole bank (`distill.losses.crd.whole_bank_is_cheaper` picks between them).

    python benchmarks/crd_step.py        # writes benchmarks/crd_step/RESULTS.md and results.json

One forward and backward of `CRDLoss` (both sides, bank update included) per route, interleaved
rounds, median time per route and their ratio, at the MNIST knowledge-table row's sizes
(B = 256, K = 4096, N = 60000, features 800 -> 128 and 1200 -> 128) and at sizes around the
crossover. Both routes compute the same numbers (tests/test_losses_crd.py); only time differs.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, now  # noqa: E402

from distill.losses import crd  # noqa: E402

SIZES = [  # (batch, negatives, bank): the MNIST row, then around the crossover, then few anchors
    (256, 4096, 60000), (256, 1024, 60000), (256, 256, 60000), (64, 4096, 60000), (8, 4096, 60000)]
ROUNDS = 5


def step_seconds(loss: crd.CRDLoss, batch: int, whole_bank: bool) -> float:
    crd.whole_bank_is_cheaper = lambda *_: whole_bank
    f_s, f_t = torch.randn(batch, 800, requires_grad=True), torch.randn(batch, 1200)
    indices = torch.randint(0, loss.num_samples, (batch,))
    started = time.perf_counter()
    loss(f_s, f_t, indices).backward()
    return time.perf_counter() - started


def main() -> None:
    chosen = crd.whole_bank_is_cheaper
    rows = []
    for batch, negatives, bank in SIZES:
        torch.manual_seed(0)
        loss = crd.CRDLoss(feature_dim=128, negatives=negatives, num_samples=bank)
        loss.bind(torch.Size([800]), torch.Size([1200]))
        times: dict[str, list[float]] = {"gather": [], "matmul": []}
        for _ in range(ROUNDS + 1):  # the first round warms up and is dropped
            for route in times:
                times[route].append(step_seconds(loss, batch, route == "matmul"))
        gather, matmul = (statistics.median(t[1:]) for t in times.values())
        picks = "matmul" if chosen(batch, negatives + 1, bank, 128) else "gather"
        rows.append({"batch": batch, "negatives": negatives, "bank": bank, "gather_s": round(gather, 4),
                     "matmul_s": round(matmul, 4), "matmul_over_gather": round(matmul / gather, 3), "picks": picks})
        print(rows[-1], flush=True)
    crd.whole_bank_is_cheaper = chosen
    out = HERE / "crd_step"
    out.mkdir(exist_ok=True)
    record = {"machine": machine(), "date": now(), "command": "python benchmarks/crd_step.py", "rows": rows}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# CRD: gathered bank rows vs one whole-bank matmul", "",
             f"- command: `{record['command']}`", f"- machine: {record['machine']}", f"- date: {record['date']}",
             f"- median of {ROUNDS} interleaved rounds, one forward + backward of CRDLoss (both sides), "
             "features 800 and 1200 -> 128, fp32", "",
             "| batch | negatives K | bank N | gather (s) | matmul (s) | matmul / gather | route picked |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['batch']} | {r['negatives']} | {r['bank']} | {r['gather_s']} | {r['matmul_s']} | "
              f"{r['matmul_over_gather']} | {r['picks']} |" for r in rows]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
