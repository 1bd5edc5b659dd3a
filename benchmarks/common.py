"""Shared helpers of the benchmark drivers: run `distill run` as a subprocess and keep its record,
and the few lookups and formats their reports have in common (machine line, minutes, bench tables).

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


def lscpu_fields(lscpu: str) -> dict[str, str]:
    """lscpu's output as {field: value}, so that a report can name the CPU and its flags."""
    return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lscpu.splitlines() if ":" in ln)}


def hardware(threads: int) -> str:
    """CPU model (lscpu), core count and PyTorch threads: the line every report starts its machine with."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, {threads} PyTorch threads"


def machine() -> str:
    """CPU model (lscpu), core count and PyTorch threads, with the Python and torch versions."""
    import torch
    return f"{hardware(torch.get_num_threads())}; Python {platform.python_version()}, torch {torch.__version__}"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def first_started(meta_file: Path) -> str:
    """The date a benchmark's meta.json already holds (its first run: a rerun that resumes or adds
    rows keeps it), else now."""
    return json.loads(meta_file.read_text()).get("date", now()) if meta_file.exists() else now()


def minutes(seconds: float) -> str:
    """Wall times in the reports, one format for all of them."""
    return f"{seconds / 60:.1f} min"


def bench_row(bench: dict, artifact: str, runtime: str) -> dict:
    """The row of a `distill bench` report (bench.json) that timed `artifact` in `runtime`."""
    return next(r for r in bench["rows"] if r["artifact"] == artifact and r["runtime"] == runtime)


def p50_ms(bench: dict, artifact: str, runtime: str) -> float:
    """Median latency at batch 1, the figure the reports compare models by."""
    return bench_row(bench, artifact, runtime)["batches"]["1"]["p50_ms"]


def bench_table(report: Path) -> str:
    """The table of a `distill bench` report folder's bench.md, without its title and plot, to quote in RESULTS.md."""
    return (report / "bench.md").read_text().split("\n\n", 1)[1].split("\n![")[0].strip()


def distill_run(recipe: str, out: Path, overrides: list[str], results: Path, log: Path) -> dict:
    """`distill run RECIPE --out OUT --set ...` in the repository root (`out` relative to it),
    unless results/ already holds its record. A --seeds run's seed-N/metrics.json are kept too.

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
    for name in ("metrics.json", "history.csv", "recipe.toml"):  # a --seeds run has no top-level history
        if (REPO / out / name).exists():
            shutil.copy(REPO / out / name, results / name)
    for seed_dir in sorted((REPO / out).glob("seed-*")):  # a --seeds run: each seed's own metrics too
        (results / seed_dir.name).mkdir(exist_ok=True)
        shutil.copy(seed_dir / "metrics.json", results / seed_dir.name / "metrics.json")
    record = {"command": shlex.join(cmd), "date": date, "wall_seconds": round(time.perf_counter() - started, 1),
              "load_average_before": round(load, 2), "metrics": json.loads((REPO / out / "metrics.json").read_text())}
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"= {results.name}: {record['wall_seconds']:.0f} s", flush=True)
    return record
