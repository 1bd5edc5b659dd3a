"""`distill run` end to end: every shipped recipe runs a tiny step; run directory; summary; errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import cli, counted_over, image_folder
from distill.models import load_checkpoint
from distill.models.stats import count_params

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
TINY = ["teacher.epochs=1", "student.epochs=1", "teacher.batch_size=16", "student.batch_size=16",
        "export.enabled=false", "bench.enabled=false"]


def distill(*args: str, expect: int = 0, capsys=None) -> str:
    """Run the CLI in-process, check its exit code; returns stdout + stderr."""
    code, text = cli(list(args), capsys)
    assert code == expect, text
    return text


def tiny_overrides(recipe: Path, tmp_path: Path) -> list[str]:
    text = recipe.read_text()
    data = os.environ.get("DISTILL_DATA", "")
    sets = list(TINY) + ["export.enabled=false", "bench.enabled=false"]
    if 'name = "imagefolder"' in text:
        sets += [f"data.path={image_folder(tmp_path / 'images')}", "data.image_size=32",
                 "data.num_workers=0", "teacher.weights=''", "student.weights=''",
                 "teacher.strategy=scratch", "teacher.lr=0.0001", "student.lr=0.0001"]
        # (random-init ImageNet nets on 12 images diverge at the pretrained-rate lr of the recipe)
    elif 'name = "mnist"' in text or 'name = "cifar10"' in text:
        name = "mnist" if 'name = "mnist"' in text else "cifar10"
        if not (Path(data) / f"{name}.npz").exists():
            pytest.skip(f"{name}.npz not in DISTILL_DATA")
        sets += ["data.train_limit=64", "data.test_limit=32"]
        if "labelled_per_class" in text:  # 64 images leave 6 or 7 per class
            sets += ["data.labelled_per_class=2"]
    elif 'name = "cifar100"' in text:  # not shipped in shared/data: fake images of the same size
        sets += ["data.name=fake", "data.image_size=32", "data.num_classes=100",
                 "data.train_limit=32", "data.test_limit=16"]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_runs_one_tiny_step(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    text = distill("run", str(recipe), "--out", str(out), "-q", "--device", "cpu",
                   *tiny_overrides(recipe, tmp_path), capsys=capsys)
    assert "teacher" in text and "baseline" in text
    for name in ("recipe.toml", "teacher.pt", "student.pt", "baseline.pt", "history.csv", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for role in ("teacher", "student", "baseline"):
        assert counted_over(metrics[role]["test_accuracy"], metrics["data"]["test"]), metrics[role]
        assert metrics[role]["params"] == count_params(load_checkpoint(out / f"{role}.pt")[0])


def test_quickstart_run_directory_summary_and_resume(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["run", "quickstart", "--out", str(out), "-q", *sum((["--set", s] for s in TINY), [])]
    text = distill(*args, capsys=capsys)
    assert "distillation gain over the baseline" in text or "negative transfer" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gain"]["accuracy_points"] == pytest.approx(
        100 * (metrics["student"]["test_accuracy"] - metrics["baseline"]["test_accuracy"]), abs=1e-3)
    gain, n = metrics["gain"], metrics["data"]["test"]  # paired: both models scored on the same images
    assert gain["student_only_right"] - gain["baseline_only_right"] == round(
        n * (metrics["student"]["test_accuracy"] - metrics["baseline"]["test_accuracy"]))
    assert metrics["student"]["params"] < metrics["teacher"]["params"] / 10
    checkpoint = torch.load(out / "student.pt", weights_only=True)
    assert checkpoint["card"]["arch"] == "mlp"
    # the same directory again needs --resume; with it, the finished phases are reused
    assert "already holds a run" in distill(*args, expect=2, capsys=capsys)
    before = (out / "teacher.pt").stat().st_mtime_ns
    distill(*args, "--resume", capsys=capsys)
    assert (out / "teacher.pt").stat().st_mtime_ns == before
    # killed after student.pt was written but before metrics.json: resume records it, then goes on
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["student"], metrics["gain"]
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "baseline.pt").unlink()
    distill(*args, "--resume", capsys=capsys)
    assert {"student", "baseline", "gain"} <= set(json.loads((out / "metrics.json").read_text()))
    # resuming with another recipe is refused
    assert "different recipe" in distill(*args, "--resume", "--set", "seed=1", expect=2, capsys=capsys)


def test_a_run_started_before_a_new_recipe_key_existed_still_resumes(tmp_path, capsys):
    """A run directory whose recipe.toml lacks a key added later (with its default) is the same recipe."""
    out = tmp_path / "r"
    args = ["run", "quickstart", "--out", str(out), "-q", *[arg for s in TINY for arg in ("--set", s)]]
    distill(*args, capsys=capsys)
    stored = out / "recipe.toml"
    older = "\n".join(line for line in stored.read_text().splitlines() if line != "augment = true")
    assert older != stored.read_text()
    stored.write_text(older)
    distill(*args, "--resume", capsys=capsys)
    assert "different recipe" in distill(*args, "--resume", "--set", "seed=1", expect=2, capsys=capsys)


def test_a_role_with_augment_false_trains_on_plain_images_in_the_same_run(tmp_path, monkeypatch, capsys):
    """Hinton's MNIST setting in one run: the teacher learns from jittered images, the students
    (distilled and baseline) from the same images unshifted."""
    from distill import transfer
    from distill.phases import student
    seen = {}
    real_fit = student.fit

    def spy(module, data, *args, desc="", **kwargs):
        seen[desc] = data
        return real_fit(module, data, *args, desc=desc, **kwargs)

    monkeypatch.setattr(student, "fit", spy)
    monkeypatch.setattr(transfer, "fit", spy)
    distill("run", "quickstart", "--out", str(tmp_path / "r"), "-q", "--set", "data.jitter=2",
            "--set", "data.augment=true", "--set", "student.augment=false",
            *[arg for s in TINY for arg in ("--set", s)], capsys=capsys)

    def shifts(dataset) -> bool:  # the same image read twice comes back different
        views = [dataset[0][0] for _ in range(10)]
        return any(not torch.equal(views[0], v) for v in views[1:])

    assert set(seen) == {"teacher", "student", "baseline"}
    assert shifts(seen["teacher"])
    assert not shifts(seen["student"]) and not shifts(seen["baseline"])


def test_mnist_recipe_without_the_file_says_where_to_put_it(tmp_path, capsys):
    text = distill("run", "mnist_hinton", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path),
                   expect=2, capsys=capsys)
    assert f"{tmp_path}/mnist.npz" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["run", "recipes/nope.toml"], "not found"),
    (["run", "quickstart", "--set", "student.epochz=1"], "did you mean 'epochs'"),
    (["run", "quickstart", "--set", "student.epochs=0"], "student.epochs: expected a positive integer"),
    (["run", "quickstart", "--set", "distill.terms.0.student=stage9"], "no layer 'stage9'"),
    (["run", "quickstart", "--set", "teacher.model=resnet19"], "did you mean 'resnet18'"),
    (["run", "quickstart", "--device", "tpu"], "device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["models", "--layers", "nosuchnet"], "unknown model 'nosuchnet'"),
])
def test_bad_arguments_are_one_line_errors_with_exit_code_2(args, message, tmp_path, capsys):
    text = distill(*args, "--out", str(tmp_path / "o"), expect=2, capsys=capsys) if args[0] == "run" \
        else distill(*args, expect=2, capsys=capsys)
    assert message in text and "Traceback" not in text


def test_a_real_process_prints_no_traceback_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "distill", "run", "quickstart", "--set", "nosuch=1",
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_recipes_lists_every_shipped_recipe_with_its_description(capsys):
    text = distill("recipes", capsys=capsys)
    for recipe in RECIPES:
        assert recipe.stem in text


def test_models_lists_names_and_layer_paths(capsys):
    assert "resnet8x4" in distill("models", capsys=capsys)
    text = distill("models", "--layers", "resnet18", "--input-shape", "3,64,64", capsys=capsys)
    assert "layer4" in text and "fc" in text
