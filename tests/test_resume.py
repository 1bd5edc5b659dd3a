"""A `distill run` killed with SIGKILL at any point, even while writing a checkpoint, resumes with
`--resume` from its last complete checkpoint and ends with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from helpers import tiny_recipe
from distill import Schedule, Supervised, fit
from distill.errors import DistillError
from distill.models import build_model, safe_load

RECIPE = tiny_recipe(train_limit=256, test_limit=64, teacher_epochs=4, student_epochs=3)

# Runs `distill` with torch.save patched to write half of the student's epoch-2 resume file
# (the one with hint connectors), then SIGKILL itself: a real kill in the middle of a checkpoint write.
KILL_WHILE_WRITING = """
import io, os, signal, sys, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == 2 and "connectors" in obj:
        data = io.BytesIO()
        real_save(obj, data, *args, **kwargs)
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from distill.cli import main
main(sys.argv[1:])
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same threads, same float sums
TIMEOUT = 300  # generous: the machine is shared


def start(recipe: Path, out: Path, *extra: str, code: str | None = None) -> subprocess.Popen:
    prefix = ["-c", code] if code else ["-m", "distill"]
    return subprocess.Popen([sys.executable, *prefix, "run", str(recipe), "--out", str(out), "--device", "cpu",
                             *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"distill run did not finish in {TIMEOUT}s:\n{output}")
    return proc.returncode, output


def kill_when(proc: subprocess.Popen, ready) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled, no fixed sleeps)."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"distill run ended (code {proc.returncode}) before it could be killed:\n"
                        f"{proc.communicate()[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("distill run never reached the point to kill it")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path)["state_dict"]


def history(run: Path) -> list[dict[str, str]]:
    """history.csv without the wall-clock column."""
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_run_killed_mid_epoch_and_mid_write_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start(recipe, straight, "-q")

    # 1. SIGKILL in the middle of the teacher phase, once its first epoch is saved
    victim = start(recipe, killed, "-q")
    kill_when(victim, lambda: (killed / ".teacher.resume.pt").exists())
    assert not (killed / "teacher.pt").exists(), "killed too late: the teacher phase had finished"

    # 2. resume; this one dies by SIGKILL half-way through writing the student's epoch-2 resume file
    code, output = finish(start(recipe, killed, "--resume", code=KILL_WHILE_WRITING))
    assert code == -signal.SIGKILL, output
    assert "teacher: resuming after epoch" in output
    assert (killed / "teacher.pt").exists() and not (killed / "student.pt").exists()
    assert safe_load(killed / ".student.resume.pt")["epoch"] == 1  # the last complete write is intact
    half_written = [f for f in killed.iterdir() if "student" in f.name and f.name.endswith(".tmp")]
    assert len(half_written) == 1
    with pytest.raises(DistillError, match="cannot be read"):
        safe_load(half_written[0])

    # 3. resume to the end: from the complete epoch-1 file, never from the half-written one
    code, output = finish(start(recipe, killed, "--resume"))
    assert code == 0, output
    assert "student: resuming after epoch 1/3" in output

    code, output = finish(reference)
    assert code == 0, output
    for role in ("teacher", "student", "baseline"):
        a, b = weights(straight / f"{role}.pt"), weights(killed / f"{role}.pt")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{role}.pt {key} differs from the uninterrupted run"
    assert history(killed) == history(straight)  # no epoch trained twice or lost, same losses
    assert not list(killed.glob(".*.resume.pt")), "finished phases leave no resume files"


def test_a_truncated_resume_file_is_refused_never_loaded(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 2, (32,)))
    schedule = Schedule(epochs=2, batch_size=16)
    state = tmp_path / "state.pt"
    fit(Supervised(build_model("mlp", 2, (1, 8, 8))), data, schedule, resume_path=state, progress=False)
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DistillError, match=r"state\.pt cannot be read: it is truncated.*expected a complete file"):
        fit(Supervised(build_model("mlp", 2, (1, 8, 8))), data, schedule, resume_path=state, resume=True,
            progress=False)


def test_a_resume_file_of_another_model_is_one_line_naming_it_and_the_way_out(tmp_path):
    """fit reads the end-of-epoch state it wrote; one written for another model (a teacher's head,
    a wider student) is refused with the file and the recovery, not a load_state_dict traceback."""
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    path = tmp_path / "state.pt"
    fit(Supervised(build_model("small_cnn", 10, (1, 8, 8), width=8)), data, Schedule(epochs=1, batch_size=16),
        resume_path=path, progress=False)
    with pytest.raises(DistillError, match=r"resume file .*state.pt does not fit .* delete it to restart"):
        fit(Supervised(build_model("small_cnn", 10, (1, 8, 8), width=4)), data, Schedule(epochs=2, batch_size=16),
            resume_path=path, resume=True, progress=False)
