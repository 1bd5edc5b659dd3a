"""The Distiller's forward hooks live exactly as long as the distillation: the models a user hands
in come back as they were, with no hook cloning activations on every forward pass."""
from __future__ import annotations

import copy

import pytest
from torch import nn

from helpers import cli, tiny_recipe
from distill import Distiller, Term, distiller as distiller_module
from distill.errors import DistillError
from distill.losses import HintLoss, KDLoss
from distill.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def pair() -> tuple[nn.Module, nn.Module]:
    return build_model("small_cnn", 10, (1, 8, 8), width=8), build_model("small_cnn", 10, (1, 8, 8), width=4)


def terms() -> list[Term]:
    return [Term("kd", KDLoss(4.0)), Term("hint", HintLoss(), student="stage2", teacher="stage2")]


def test_a_closed_distiller_leaves_no_hook_and_no_captured_batch():
    teacher, student = pair()
    with Distiller(teacher, student, terms(), (1, 8, 8)) as d:
        assert hooks(teacher) and hooks(student)  # while distilling, the hooks read the features
        taps = (d._teacher_taps, d._student_taps)
    assert hooks(teacher) == 0 and hooks(student) == 0
    assert all(not t.outputs for t in taps), "the last batch's activations are still held"
    assert hooks(copy.deepcopy(student)) == 0
    d.close()  # closing twice is harmless


def test_a_distiller_that_fails_to_build_leaves_no_hook():
    teacher, student = pair()
    bad = [Term("kd", KDLoss(4.0)), Term("hint", HintLoss(), student="stage2", teacher="no_such_layer")]
    with pytest.raises(DistillError):
        Distiller(teacher, student, bad, (1, 8, 8))
    assert hooks(teacher) == 0 and hooks(student) == 0
    bad_student_path = [Term("hint", HintLoss(), student="no_such_layer", teacher="stage2")]
    with pytest.raises(DistillError, match="no layer 'no_such_layer'"):  # the teacher's path was fine
        Distiller(teacher, student, bad_student_path, (1, 8, 8))
    assert hooks(teacher) == 0 and hooks(student) == 0
    three_classes = build_model("small_cnn", 3, (1, 8, 8), width=4)
    with pytest.raises(DistillError, match="same class count"):  # found after the hooks were placed
        Distiller(teacher, three_classes, terms(), (1, 8, 8))
    assert hooks(teacher) == 0 and hooks(three_classes) == 0


def test_a_run_leaves_no_hook_on_any_model_it_distilled(tmp_path, monkeypatch, capsys):
    """Every Distiller of `distill run` (preflight, student, pruned-student recovery) is closed."""
    made: list[nn.Module] = []
    real_init = distiller_module.Distiller.__init__

    def spy(self, teacher, student, *args, **kwargs):
        made.extend([teacher, student])
        real_init(self, teacher, student, *args, **kwargs)

    monkeypatch.setattr(distiller_module.Distiller, "__init__", spy)
    (tmp_path / "recipe.toml").write_text(tiny_recipe(train_limit=64, test_limit=20, teacher_epochs=1,
                                                      student_epochs=1))
    code, text = cli(["run", str(tmp_path / "recipe.toml"), "--out", str(tmp_path / "run"), "-q",
                      "--set", "prune.enabled=true", "--set", "prune.epochs=1", "--set", "prune.macs=0.8",
                      "--set", "prune.hint_layers=['stage3']"], capsys)
    assert code == 0, text
    assert len(made) >= 6  # preflight, student and pruned recovery each made one
    assert [hooks(m) for m in made] == [0] * len(made)


def test_the_distiller_puts_the_student_and_connectors_on_the_teachers_device():
    """On a GPU the teacher arrives on CUDA and the student was built on the CPU: the connector
    probe then ran the teacher on a CPU tensor. The meta device stands in for the GPU here."""
    teacher, student = pair()
    with Distiller(teacher.to("meta"), student, terms(), (1, 8, 8)) as d:
        assert {p.device.type for p in d.student.parameters()} == {"meta"}
        assert {p.device.type for p in d.connectors.parameters()} == {"meta"}
