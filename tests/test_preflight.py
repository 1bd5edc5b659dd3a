"""The preflight: set-ups that used to crash only after the teacher had trained now fail before any
training, with one line that says what to change, and set-ups that only looked broken now run."""
from __future__ import annotations

import re
import shlex

import pytest
import torch

from helpers import cli, tiny_recipe
from distill.models import ModelCard, build_model, save_checkpoint
from distill.train import NoSingletonBatches, make_loader

RECIPE = tiny_recipe(train_limit=64, test_limit=32, teacher_epochs=1, student_epochs=1)

pytestmark = pytest.mark.usefixtures("one_thread")

USER_MODELS = '''
from torch import nn


class WithUnusedLayer(nn.Module):
    """A classifier with a layer its forward never calls (an auxiliary head, a leftover)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.unused = nn.Linear(32, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def with_unused_layer(num_classes=10):
    return WithUnusedLayer(num_classes)


def bn_mlp(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, num_classes))


def two_outputs(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1))
'''

SETUPS = [
    ("grey data, RGB torchvision teacher", "--set teacher.model=resnet18 --set teacher.options={} "
     "--set distill.terms=[{loss='kd'}]",
     r"teacher failed .*3 channels.*expected data.channels"),
    ("grey data, RGB torchvision student", "--set student.model=mobilenet_v3_small --set student.options={} "
     "--set distill.terms=[{loss='kd'}]", r"student failed .*channels.*expected data.channels"),
    ("images too small for the pooling", "--set data.channels=3 --set teacher.model=vgg11 --set teacher.options={} "
     "--set distill.terms=[{loss='kd'}]",
     r"teacher failed .*too small.*expected larger images"),
    ("a hint on a layer the forward never calls", "--set student.model=preflight_models:with_unused_layer "
     "--set student.options={} --set distill.terms=[{loss='hint',student='unused',teacher='stage3'}]",
     r"student layer 'unused' produced no output.*never calls it"),
    ("nothing teaches the student", "--set distill.ce_weight=0 --set distill.terms=[]",
     r"ce_weight is 0 and there are no distillation terms.*expected ce_weight > 0"),
    ("a student with the wrong class count", "--set student.model=preflight_models:two_outputs "
     "--set student.options={} --set distill.terms=[]", r"expected the same class count|expected logits of shape"),
    ("too few training images", "--set data.train_limit=1 --set data.test_limit=10",
     r"expected at least 2"),
    ("a pruning hint on a layer the student lacks", "--set prune.enabled=true --set prune.hint_layers=['nope']",
     r"student \(prune.hint_layers\) .* has no layer 'nope'"),
    ("a student checkpoint of other classes", "--set student.checkpoint={five_classes}",
     r"student.checkpoint .* predicts 5 classes.*expected a student trained on this data"),
]


@pytest.mark.parametrize("overrides, message", [s[1:] for s in SETUPS], ids=[s[0] for s in SETUPS])
def test_a_setup_that_would_fail_after_training_fails_before_it(overrides, message, tmp_path, monkeypatch,
                                                                 capsys):
    (tmp_path / "preflight_models.py").write_text(USER_MODELS)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    five_classes = tmp_path / "five_classes.pt"
    save_checkpoint(five_classes, build_model("small_cnn", 5, (1, 8, 8), width=4),
                    ModelCard("small_cnn", 5, (1, 8, 8), kwargs={"width": 4}))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    code, text = cli(["run", str(tmp_path / "recipe.toml"), "--out", str(out), "-q",
                      *shlex.split(overrides.replace("{five_classes}", str(five_classes)), posix=False)], capsys)
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1 and text.startswith("error: "), text
    assert "Traceback" not in text
    assert re.search(message, text), text
    assert not list(out.glob("*.pt")) and not list(out.glob(".*.resume.pt")), "training started"


def test_a_last_batch_of_one_sample_joins_the_batch_before_it():
    """BatchNorm cannot normalise a single sample in training mode: 33 images in batches of 16 are
    16 + 17, not 16 + 16 + 1; every image is still seen exactly once per epoch."""
    batches = list(NoSingletonBatches(range(33), 16))
    assert [len(b) for b in batches] == [16, 17] and len(NoSingletonBatches(range(33), 16)) == 2
    assert sorted(i for b in batches for i in b) == list(range(33))
    assert [len(b) for b in NoSingletonBatches(range(34), 16)] == [16, 16, 2]
    assert [len(b) for b in NoSingletonBatches(range(1), 16)] == [1]
    loader = make_loader(torch.utils.data.TensorDataset(torch.arange(33.0)), 16, shuffle=True, seed=3)
    assert sorted(int(x) for (xs,) in loader for x in xs) == list(range(33))


def test_a_run_whose_last_batch_has_one_sample_trains(tmp_path, monkeypatch, capsys):
    """65 training images in batches of 32 with a BatchNorm1d student: it used to crash in the last
    step of the student's first epoch ("Expected more than 1 value per channel when training")."""
    (tmp_path / "preflight_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "recipe.toml").write_text(tiny_recipe(train_limit=65, test_limit=20, teacher_epochs=1,
                                                      student_epochs=1))
    code, text = cli(["run", str(tmp_path / "recipe.toml"), "--out", str(tmp_path / "run"), "-q",
                      "--set", "student.model=preflight_models:bn_mlp", "--set", "student.options={}",
                      "--set", "distill.terms=[{loss='kd'}]"], capsys)
    assert code == 0, text


def test_a_recipe_that_failed_the_preflight_can_be_fixed_and_run_into_the_same_directory(tmp_path, capsys):
    """The preflight's failure leaves no half-started run behind: the corrected recipe starts there
    as a new run (it used to be refused as "already holds a run", and with --resume as "different")."""
    (tmp_path / "recipe.toml").write_text(RECIPE)
    args = ["run", str(tmp_path / "recipe.toml"), "--out", str(tmp_path / "run"), "-q"]
    code, text = cli([*args, "--set", "distill.ce_weight=0", "--set", "distill.terms=[]"], capsys)
    assert code == 2 and "nothing would teach the student" in text, text
    code, text = cli(args, capsys)
    assert code == 0, text
    assert (tmp_path / "run" / "recipe.toml").exists() and (tmp_path / "run" / "student.pt").exists()


def test_a_given_teacher_checkpoint_is_benchmarked_and_a_given_student_exported(tmp_path, capsys):
    """Phases skipped because the recipe gives their checkpoint still take part in export and bench
    (the bench used to end, after all training, with "teacher is not among the artifacts")."""
    (tmp_path / "recipe.toml").write_text(RECIPE)
    first = tmp_path / "first"
    code, text = cli(["run", str(tmp_path / "recipe.toml"), "--out", str(first), "-q"], capsys)
    assert code == 0, text
    code, text = cli(["run", str(tmp_path / "recipe.toml"), "--out", str(tmp_path / "again"), "-q",
                      "--set", f"teacher.checkpoint={first / 'teacher.pt'}",
                      "--set", f"student.checkpoint={first / 'student.pt'}", "--set", "baseline.enabled=false",
                      "--set", "export.enabled=true", "--set", "bench.enabled=true", "--set", "bench.rounds=1"],
                     capsys)
    assert code == 0, text
    bench = (tmp_path / "again" / "bench.md").read_text()
    assert "teacher" in bench and "student.onnx" in bench
