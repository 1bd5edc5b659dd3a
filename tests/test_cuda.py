"""The paths users take on a GPU: every phase of `distill run`, export and bench, AMP and resume.

Skipped without CUDA; `benchmarks/gpu/run.sh` runs this file whenever a GPU is lent and keeps its
output. Each test names the CPU-only mistake it guards against (a model left on the CPU, a probe
on the wrong device, a scaler lost on resume).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from helpers import cli, tiny_recipe
from distill import Distiller, Schedule, Supervised, Term, fit
from distill.losses import HintLoss, KDLoss
from distill.models import build_model, safe_load

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RECIPE = tiny_recipe(train_limit=256, test_limit=64, teacher_epochs=2, student_epochs=2)  # KD + a stage3 hint


def run(tmp_path: Path, capsys, *overrides: str, device: str = "cuda", resume: bool = False) -> dict:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    args = ["run", str(path), "--out", str(tmp_path / "run"), "-q", "--device", device, *(["--resume"] * resume)]
    code, text = cli([*args, *(a for o in overrides for a in ("--set", o))], capsys)
    assert code == 0, text
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_the_quickstart_runs_on_the_gpu_and_its_teacher_learns(tmp_path, capsys):
    code, text = cli(["run", "quickstart", "--out", str(tmp_path / "run"), "-q", "--device", "cuda"], capsys)
    assert code == 0, text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda")
    assert metrics["teacher"]["test_accuracy"] > 0.9 and metrics["student"]["test_accuracy"] > 0.8
    assert "gain" in metrics and metrics["teacher_cache"]["bytes"] > 0


def test_a_hint_recipe_probes_and_trains_its_connector_on_the_gpu(tmp_path, capsys):
    """The student used to be built on the CPU while the teacher sat on the GPU: the connector
    probe then ran the teacher on a CPU tensor."""
    metrics = run(tmp_path, capsys, device="cuda:0")
    assert metrics["student"]["connectors"] == ["hint"]
    assert metrics["student"]["test_accuracy"] > 0.3


def test_the_prune_phase_prunes_on_the_cpu_and_recovers_on_the_gpu(tmp_path, capsys):
    metrics = run(tmp_path, capsys, "prune.enabled=true", "prune.epochs=1", "prune.macs=0.8",
                  "prune.hint_layers=['stage3']")
    assert metrics["pruned"]["macs"] < metrics["student"]["macs"]
    assert metrics["pruned"]["test_accuracy"] > 0.2


def test_export_and_bench_of_a_gpu_run_are_verified_against_pytorch(tmp_path, capsys):
    metrics = run(tmp_path, capsys, "export.enabled=true", "export.int8=true", "bench.enabled=true",
                  "bench.rounds=2")
    assert max(metrics["export"]["student"]["max_abs_diff"].values()) <= 1e-4
    int8_kept = metrics["export"]["student"]["int8"]["kept"]  # only if faster and accurate enough
    assert (tmp_path / "run" / "student.int8.onnx").exists() == int8_kept and (tmp_path / "run" / "bench.json").exists()
    code, text = cli(["export", str(tmp_path / "run" / "student.pt"), "-o", str(tmp_path / "again.onnx")], capsys)
    assert code == 0, text


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_an_amp_run_killed_between_phases_resumes_on_the_gpu(amp, tmp_path, capsys):
    first = run(tmp_path, capsys, f"speed.amp={amp}", "speed.channels_last=true")
    (tmp_path / "run" / "student.pt").unlink()  # as if killed after the teacher and baseline
    again = run(tmp_path, capsys, f"speed.amp={amp}", "speed.channels_last=true", resume=True)
    assert again["teacher"] == first["teacher"]
    assert abs(again["student"]["test_accuracy"] - first["student"]["test_accuracy"]) < 0.1


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_fit_resumes_an_amp_epoch_with_its_scaler_and_ends_near_an_uninterrupted_run(amp, tmp_path):
    """fp16 keeps a GradScaler whose scale grows during training; a resume that forgot it would
    restart from the default scale and take different steps."""
    from distill.settings import Speed

    def distiller() -> Distiller:
        torch.manual_seed(0)
        teacher = build_model("small_cnn", 10, (1, 8, 8), width=8)
        student = build_model("small_cnn", 10, (1, 8, 8), width=4)
        terms = [Term("kd", KDLoss(4.0)), Term("hint", HintLoss(), student="stage2", teacher="stage2")]
        return Distiller(teacher.cuda(), student, terms, (1, 8, 8))

    speed = Speed(amp=amp)
    straight = distiller()
    fit(straight, data(), Schedule(epochs=2, batch_size=16), device="cuda", speed=speed, progress=False)
    resumed = distiller()
    path = tmp_path / "resume.pt"
    fit(resumed, data(), Schedule(epochs=1, batch_size=16), device="cuda", speed=speed, resume_path=path,
        progress=False)
    if amp == "fp16":
        assert "scaler" in safe_load(path), "the fp16 GradScaler's state is not in the resume file"
    fit(resumed, data(), Schedule(epochs=2, batch_size=16), device="cuda", speed=speed, resume_path=path,
        resume=True, progress=False)
    for a, b in zip(straight.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-2), "resumed weights drifted from the straight run"


def test_supervised_training_and_evaluation_stay_on_the_requested_gpu():
    model = build_model("small_cnn", 10, (1, 8, 8), width=4)
    fit(Supervised(model), data(), Schedule(epochs=1, batch_size=16), device="cuda:0", progress=False)
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_in_memory_data_lives_on_the_gpu_and_its_views_match_the_cpus():
    """The uint8 images are copied to the GPU once, batches are augmented there, and a cached view
    (keyed draws) is the same image as on the CPU."""
    from distill.data import load_data
    from distill.data.batched import gather, sample_keys
    bundle = load_data("digits", jitter=2, train_limit=200, test_limit=20)
    k = torch.arange(64)
    images, targets = gather(bundle.train, k, "cuda")
    assert images.device.type == targets.device.type == "cuda"
    assert bundle.train.source.pixels(torch.device("cuda")).device.type == "cuda"
    keys = sample_keys(3, k, 1)
    on_gpu, _ = gather(bundle.train, k, "cuda", keys=keys)
    on_cpu, _ = gather(bundle.train, k, "cpu", keys=keys)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-6)


def test_data_over_the_gpu_memory_share_stays_on_the_host_and_still_trains(monkeypatch):
    from distill.data import load_data
    from distill.data.batched import gather
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024, 1024))  # 1 KiB free
    bundle = load_data("digits", jitter=1, train_limit=100, test_limit=20)
    assert bundle.train.source.pixels(torch.device("cuda")).device.type == "cpu"
    images, _ = gather(bundle.train, torch.arange(8), "cuda")
    assert images.device.type == "cuda"
    model = build_model("mlp", 10, bundle.input_shape, hidden=[16])
    fit(Supervised(model), bundle.train, Schedule(epochs=1, batch_size=16), device="cuda", progress=False)
