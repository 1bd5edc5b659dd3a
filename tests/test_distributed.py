"""Two processes with gloo on CPU: DDP keeps the student identical, only rank 0 writes, parameters
without a gradient train, and a NaN on one rank is skipped or stops the run on every rank together.

One torchrun launch runs every scenario (ddp_worker.py), since starting the processes is the slow
part. A rank left waiting in a collective fails the tests instead of blocking them: each worker
ends itself after ddp_worker.SECONDS, and torchrun is killed soon after.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler
from helpers import cli, tiny_recipe

from ddp_worker import few_label_batch, few_label_model
from distill.models import safe_load

SCENARIOS = ("kd_hint", "fitnets_stage1", "nan_on_rank1_stopped", "nan_on_rank1_skipped", "in_memory_shard",
             "few_labels_gradient")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, str]:
    """The worker's output folder and its stderr (plus a note when it had to be killed)."""
    out = tmp_path_factory.mktemp("ddp")
    worker = Path(__file__).with_name("ddp_worker.py")
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                "--nproc_per_node=2", str(worker), str(out), *SCENARIOS],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun; the ranks, in sessions of their own, end themselves
        _, stderr = process.communicate()
        stderr += "\n(torchrun killed after 150 s)"
    return out, stderr[-3000:]


def result(ddp_run: tuple[Path, str], scenario: str, rank: int) -> dict:
    out, stderr = ddp_run
    path, error = out / f"{scenario}-rank{rank}.pt", out / f"{scenario}-rank{rank}.error"
    assert path.exists(), f"{scenario} did not finish on rank {rank}: " + (
        error.read_text()[:1500] if error.exists() else stderr)
    return torch.load(path, weights_only=True)


def assert_same_on_both_ranks(ranks: list[dict], part: str) -> None:
    for key, value in ranks[0][part].items():
        assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between ranks"


def test_two_gloo_processes_end_with_identical_students_and_only_rank0_writes(ddp_run):
    ranks = [result(ddp_run, "kd_hint", r) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert not torch.equal(ranks[0]["initial"]["stage1.0.weight"], ranks[1]["initial"]["stage1.0.weight"])
    assert_same_on_both_ranks(ranks, "student")
    assert_same_on_both_ranks(ranks, "connectors")
    assert ranks[0]["labels_across_ranks"] and ranks[1]["labels_across_ranks"]  # fit counts labels over ranks
    for epoch in (0, 1):  # the training figures of an epoch cover both ranks' shards
        for key in ("loss", "ce", "kd", "hint", "train_accuracy"):
            assert ranks[0]["history"][epoch][key] == ranks[1]["history"][epoch][key], (epoch, key)
    out, _ = ddp_run
    assert (out / "kd_hint-resume-rank0.pt").exists()
    assert not (out / "kd_hint-resume-rank1.pt").exists(), "only rank 0 writes training state"


def test_a_student_whose_head_gets_no_gradient_trains_under_ddp(ddp_run):
    """FitNets stage 1: no cross-entropy and one hint on a middle layer, so stage3 and the head get
    no gradient; DDP must be told, or it fails waiting for their reduction."""
    ranks = [result(ddp_run, "fitnets_stage1", r) for r in (0, 1)]
    assert_same_on_both_ranks(ranks, "student")
    trained, initial = ranks[0]["student"], ranks[0]["initial"]
    assert not torch.equal(trained["stage1.0.weight"], initial["stage1.0.weight"])
    assert torch.equal(trained["classifier.weight"], initial["classifier.weight"])


def test_a_nan_on_one_rank_is_skipped_by_every_rank_together(ddp_run):
    """Rank 1's loss is NaN through epoch 2: both ranks skip those steps (a rank skipping alone
    would leave the other waiting in the gradient all-reduce) and stay identical."""
    ranks = [result(ddp_run, "nan_on_rank1_skipped", r) for r in (0, 1)]
    assert [[e["skipped_steps"] for e in r["history"]] for r in ranks] == [[0, 2], [0, 2]]
    assert_same_on_both_ranks(ranks, "student")


def test_each_rank_slices_distributed_samplers_shard_of_an_in_memory_dataset(ddp_run):
    """In-memory batches under DDP: each rank gathers exactly DistributedSampler's shard of every
    epoch (same positions, same order), and together the ranks see every image."""
    ranks = [result(ddp_run, "in_memory_shard", r) for r in (0, 1)]
    for epoch in (0, 1):
        for rank, outcome in enumerate(ranks):
            sampler = DistributedSampler(range(45), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            assert outcome["asked"][epoch] == list(sampler), (epoch, rank)
        assert set(ranks[0]["asked"][epoch]) | set(ranks[1]["asked"][epoch]) == set(range(45))
    assert_same_on_both_ranks(ranks, "student")


def test_few_labels_under_ddp_weigh_every_label_as_one_process_does(ddp_run):
    """Rank 0 holds 1 label and rank 1 holds 3: the DDP gradient of the labels' cross-entropy is the
    gradient of the mean over all 4, as in one process on the whole batch (not 1/2 for the lone label)."""
    model = few_label_model()
    _, losses = model(*few_label_batch())
    losses["ce"].backward()
    for rank in (0, 1):
        grads = result(ddp_run, "few_labels_gradient", rank)["grads"]
        for name, p in model.student.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"{name}, rank {rank}")


def test_a_nan_on_one_rank_stops_every_rank_and_keeps_the_last_good_epoch(ddp_run):
    out, stderr = ddp_run
    for rank in (0, 1):
        error = out / f"nan_on_rank1_stopped-rank{rank}.error"
        assert error.exists(), f"rank {rank} did not stop:\n{stderr}"
        assert error.read_text().startswith("DistillError: train: loss term 'drift' became nan at epoch 2, step 1;")
    resume = safe_load(out / "nan_on_rank1_stopped-resume-rank0.pt")
    assert resume["epoch"] == 1 and all(torch.isfinite(v).all() for v in resume["student"].values()
                                        if v.is_floating_point())


def distill_run(args: list[str]) -> tuple[int, str]:
    """`python -m distill ARGS` in a fresh process (a real torchrun launch): (exit code, stdout + stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, check=False,
                            timeout=300, env=env)
    return result.returncode, result.stdout + result.stderr


def test_a_bad_data_path_under_nproc_2_is_one_error_line_and_exit_2(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(64, 32, 1, 1).replace('name = "digits"', 'name = "mnist"\nroot = "/no/such/data"'))
    code, text = distill_run(["run", str(recipe), "--nproc", "2", "-q", "--out", str(tmp_path / "run")])
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    assert text.startswith("error: dataset 'mnist' not found: expected /no/such/data/mnist.npz"), text


def test_a_user_error_that_only_the_ranks_meet_is_one_error_line_and_exit_2(tmp_path):
    """A wrong layer path fails in every rank's preflight: the launch prints it once, without any
    rank's traceback or torchrun's failure report, and exits 2 as one process would."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(64, 32, 1, 1).replace('student = "stage3"', 'student = "stage9"'))
    code, text = distill_run(["run", str(recipe), "--nproc", "2", "-q", "--out", str(tmp_path / "run")])
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text and "FAILED" not in text, text
    assert text.startswith("error: student SmallCNN has no layer 'stage9'"), text


@pytest.mark.parametrize("rank", [0, 1])
def test_under_a_torchrun_started_by_hand_only_rank_0_prints_a_user_error(tmp_path, capsys, monkeypatch, rank):
    from distill.cli.run import RANK_ERRORS_ENV
    for name, value in (("LOCAL_RANK", rank), ("RANK", rank), ("WORLD_SIZE", 1)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv(RANK_ERRORS_ENV, raising=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(64, 32, 1, 1).replace('student = "stage3"', 'student = "stage9"'))
    code, text = cli(["run", str(recipe), "-q", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    if rank == 0:
        assert len(text.strip().splitlines()) == 1 and text.startswith("error: student SmallCNN has no layer")
    else:
        assert text == ""


def test_few_labels_with_a_cached_teacher_and_two_seeds_run_under_nproc_2(tmp_path):
    """The few-label path under DDP: unlabelled images in every rank's shard, the cache built by rank
    0 and opened by rank 1, the pseudo-label student, and two seeds pooled at the top level."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(128, 32, 1, 1).replace("[data]", "[data]\nlabelled_per_class = 3")
                      + "\n[distill]\ncache = true\n[baseline]\npseudo_labels = true\n")
    code, text = distill_run(["run", str(recipe), "--nproc", "2", "--seeds", "2", "-q", "--out", str(tmp_path / "run")])
    assert code == 0, text
    pooled = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert pooled["seeds"] == [0, 1] and {"student", "baseline", "pseudo"} <= set(pooled["models"])
    seed = json.loads((tmp_path / "run" / "seed-1" / "metrics.json").read_text())
    assert seed["data"]["train"] == 30 and seed["data"]["unlabelled"] == 98
