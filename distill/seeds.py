"""Several seeds of one recipe, pooled: each model's accuracy as mean and sd, one verdict on the gain.

One seed's gain is one draw: another seed picks other labelled images, other initial weights and
another shuffle. `distill run --seeds K` runs every phase K times, and this module reduces the K
metrics.json files to the top-level one:

    {"recipe", "seeds": [...], "runs": ["seed-0", ...],
     "models": {role: {"test_accuracy": [per seed], "mean", "sd", "params", "macs"}},
     "gain": pooled_paired_gain(...) + {"per_seed": [points, ...]}, (and "gain_over_pseudo_labels")}

`sd` is the sample standard deviation over seeds (n - 1 in the denominator; 0 for one seed).
"""
from __future__ import annotations

import statistics
from typing import Any

from .gain import pooled_paired_gain

POOLED_ROLES = ("teacher", "student", "baseline", "pseudo", "pruned")
GAINS = ("gain", "gain_over_pseudo_labels")


def pool_seeds(recipe: str, per_seed: dict[int, dict[str, Any]], planned: int | None = None) -> dict[str, Any]:
    """The top-level metrics of a multi-seed run from each seed's metrics.json content; `planned`
    is how many seeds the run asks for (more than have finished while it is in progress)."""
    seeds = sorted(per_seed)
    runs = [per_seed[s] for s in seeds]
    pooled: dict[str, Any] = {"recipe": recipe, "seeds": seeds, "seeds_planned": planned or len(seeds),
                              "runs": [f"seed-{s}" for s in seeds], "models": {}}
    for role in POOLED_ROLES:
        entries = [m[role] for m in runs if role in m]
        if len(entries) != len(runs):
            continue
        accuracies = [e["test_accuracy"] for e in entries]
        pooled["models"][role] = {"test_accuracy": accuracies, "mean": statistics.fmean(accuracies),
                                  "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                                  "params": entries[0]["params"], "macs": entries[0]["macs"]}
        if len({(e["params"], e["macs"]) for e in entries}) > 1:  # e.g. a latency budget chose per seed
            pooled["models"][role]["params_per_seed"] = [e["params"] for e in entries]
    for key in GAINS:
        gains = [{"images": m["data"]["test"], **m[key]} for m in runs if key in m]
        if gains and len(gains) == len(runs):
            pooled[key] = {**pooled_paired_gain(gains), "per_seed": [g["accuracy_points"] for g in gains]}
    speedups = [m.get("bench", {}).get("speedups", {}) for m in runs]
    for name in speedups[0] if speedups else []:
        if all(name in s for s in speedups):
            pooled.setdefault("speedups", {})[name] = [s[name]["speedup"] for s in speedups]
    if runs and "data" in runs[0]:
        pooled["data"] = runs[0]["data"]
    pooled["wall_seconds"] = round(sum(m.get("wall_seconds", 0) for m in runs), 1)
    return pooled
