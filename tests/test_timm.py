"""Specification of timm models by name (`timm:NAME`), an optional extra: skipped without timm."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from distill.errors import DistillError
from distill.models import build_model, load_checkpoint
from distill.pipeline import run_recipe
from distill.recipe import load_recipe, recipe_from_dict

from helpers import cli

timm = pytest.importorskip("timm")

# timm's own tiny test architectures: real timm code paths (stems, blocks, heads) at 8x8 digits
STUDENT, TEACHER = "timm:test_resnet", "timm:test_efficientnet"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run: a timm teacher teaches a timm student, which is pruned, exported and benched."""
    folder = tmp_path_factory.mktemp("timm")
    recipe = folder / "timm.toml"
    recipe.write_text(f"""
name = "timm"
seed = 0
device = "cpu"
out = "{(folder / 'run').as_posix()}"
[data]
name = "digits"
augment = false
train_limit = 128
test_limit = 64
[teacher]
model = "{TEACHER}"
epochs = 1
batch_size = 32
[student]
model = "{STUDENT}"
epochs = 1
batch_size = 32
[baseline]
enabled = false
[prune]
enabled = true
macs = 0.6
steps = 1
epochs = 1
[export]
enabled = true
[bench]
enabled = true
rounds = 2
""")
    run_recipe(load_recipe(recipe), progress=False)
    return folder / "run"


def test_a_timm_student_trains_from_a_timm_teacher_and_its_checkpoint_reloads_without_trust_code(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student"]["epochs"] == 1 and 0 <= metrics["student"]["test_accuracy"] <= 1
    for role, arch in (("teacher", TEACHER), ("student", STUDENT)):
        model, card = load_checkpoint(run / f"{role}.pt")  # a timm: name is built in, not user code
        assert card.arch == arch
        assert type(model).__module__.startswith("timm.")


def test_a_timm_student_exports_to_onnx_verified_against_pytorch(run):
    export = json.loads((run / "metrics.json").read_text())["export"]["student"]
    assert (run / "student.onnx").is_file()
    assert max(export["max_abs_diff"].values()) <= 1e-4


def test_a_timm_student_prunes_and_the_pruned_checkpoint_reloads(run):
    pruned = json.loads((run / "metrics.json").read_text())["pruned"]
    model, card = load_checkpoint(run / "pruned.pt")
    assert card.arch == STUDENT and card.pruned
    student, _ = load_checkpoint(run / "student.pt")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in student.parameters())
    assert "test_accuracy" in pruned


def test_a_timm_student_is_benched_in_both_runtimes(run):
    bench = json.loads((run / "bench.json").read_text())
    assert {"student", "student.onnx", "pruned"} <= set(bench["artifacts"])
    assert any(row["artifact"] == "student" for row in bench["rows"])


def test_weights_path_loads_a_local_file_into_a_timm_model(tmp_path):
    torch.manual_seed(0)
    source = build_model(STUDENT, 10, (1, 8, 8))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    loaded = build_model(STUDENT, 10, (1, 8, 8), weights=str(tmp_path / "w.pt"))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(source.eval()(x), loaded.eval()(x))
    with pytest.raises(DistillError, match="built offline without pretrained weights"):
        build_model(STUDENT, 10, (1, 8, 8), weights="DEFAULT")


def test_options_that_download_or_read_files_through_timm_are_refused():
    with pytest.raises(DistillError, match="option 'pretrained' is not accepted"):
        build_model(STUDENT, 10, (1, 8, 8), pretrained=True)
    with pytest.raises(DistillError, match="option 'checkpoint_path' is not accepted"):
        build_model(STUDENT, 10, (1, 8, 8), checkpoint_path="x.pt")


def test_models_layers_lists_the_layer_paths_of_a_timm_model(capsys):
    code, out = cli(["models", "--layers", STUDENT, "--input-shape", "1,8,8"], capsys)
    assert code == 0
    assert "conv1" in out and "layer1" in out and "fc" in out and "logits" in out


def test_an_unknown_timm_name_is_one_line_with_a_did_you_mean(capsys, tmp_path):
    code, out = cli(["models", "--layers", "timm:resnet19"], capsys)
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert "unknown timm model 'resnet19'" in out and "did you mean" in out and "'resnet18'" in out
    with pytest.raises(DistillError, match="student.model: unknown timm model 'efficientnet_b9'"):
        recipe_from_dict({"student": {"model": "timm:efficientnet_b9"}})


def test_timm_names_without_timm_installed_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(DistillError, match=r"not installed; expected pip install 'distill\[timm\]'"):
        build_model(STUDENT, 10, (1, 8, 8))
    with pytest.raises(DistillError, match="teacher.model: .*pip install"):
        recipe_from_dict({"teacher": {"model": "timm:resnet18"}})


def test_import_distill_does_not_import_timm():
    code = "import sys, distill, distill.recipe, distill.cli; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
