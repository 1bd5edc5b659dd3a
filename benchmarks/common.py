"""Shared helpers of the benchmark drivers: run `distill run` as a subprocess and keep its record.

Every run goes to a work directory (checkpoints, teacher cache: not committed); its metrics.json,
history.csv and resolved recipe.toml are copied into the benchmark's results/ folder together with
the exact command and its wall time, so RESULTS.md can be regenerated from recorded files alone.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def machine() -> str:
    """CPU model (lscpu), core count and PyTorch threads."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown CPU")
    import torch
    return (f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} PyTorch threads; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def distill_run(recipe: str, out: Path, overrides: list[str], results: Path, log: Path) -> dict:
    """`distill run RECIPE --out OUT --set ...` in the repository root (`out` relative to it),
    unless results/ already holds its record.

    Returns the record: command, wall seconds, start date, load average and metrics.json.
    """
    record_file = results / "record.json"
    if record_file.exists():
        print(f"= {results.name}: already recorded, skipped", flush=True)
        return json.loads(record_file.read_text())
    cmd = ["distill", "run", recipe, "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    resume = (REPO / out / "recipe.toml").exists()
    print("$", shlex.join(cmd), flush=True)
    started, date, load = time.perf_counter(), now(), os.getloadavg()[0]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        done = subprocess.run([sys.executable, "-m", "distill", *cmd[1:]] + (["--resume"] if resume else []),
                              cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{results.name}: distill run failed with exit code {done.returncode}; see {log}")
    results.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "history.csv", "recipe.toml"):
        shutil.copy(REPO / out / name, results / name)
    record = {"command": shlex.join(cmd), "date": date, "wall_seconds": round(time.perf_counter() - started, 1),
              "load_average_before": round(load, 2), "metrics": json.loads((REPO / out / "metrics.json").read_text())}
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"= {results.name}: {record['wall_seconds']:.0f} s", flush=True)
    return record
