"""A two-teacher ensemble run from a recipe, and its one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill import Schedule, Supervised, fit
from distill.data import load_data
from distill.errors import DistillError
from distill.models import ModelCard, build_model, save_checkpoint
from distill.pipeline import run_recipe
from distill.recipe import load_recipe, recipe_from_dict
from distill.summary import summary_table
from helpers import cli

LIMITS = {"train_limit": 300, "test_limit": 100}


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two digits teachers from a quick training: a distill checkpoint (width 16) and a plain
    state dict of the recipe's teacher.model (width 8)."""
    folder = tmp_path_factory.mktemp("members")
    data = load_data("digits", augment=False, **LIMITS)
    paths = []
    for i, width in enumerate((16, 8)):
        torch.manual_seed(i)
        model = build_model("small_cnn", 10, data.input_shape, width=width)
        fit(Supervised(model), data.train, Schedule(epochs=3, batch_size=32, lr=0.05), seed=i, progress=False)
        path = folder / f"member{i}.pt"
        if i == 0:
            save_checkpoint(path, model, ModelCard("small_cnn", 10, tuple(data.input_shape), kwargs={"width": width}))
        else:
            torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def recipe_text(members, out, extra_term: str = "", teacher_extra: str = "") -> str:
    listed = ", ".join(f'"{p.as_posix()}"' for p in members)
    return f"""
name = "ensemble"
seed = 0
device = "cpu"
out = "{out.as_posix()}"
[data]
name = "digits"
augment = false
train_limit = {LIMITS['train_limit']}
test_limit = {LIMITS['test_limit']}
[teacher]
model = "small_cnn"
options = {{ width = 8 }}
ensemble = [{listed}]
{teacher_extra}
[student]
model = "small_cnn"
options = {{ width = 4 }}
epochs = 1
batch_size = 32
[baseline]
enabled = false
[distill]
cache = true
cache_dtype = "float32"
[[distill.terms]]
loss = "kd"
[[distill.terms]]
loss = "hint"
student = "stage3"
teacher = "stage3"
teacher_member = 1
{extra_term}
"""


@pytest.fixture(scope="module")
def run(members, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    recipe = folder / "ensemble.toml"
    recipe.write_text(recipe_text(members, folder / "run") + "[bench]\nenabled = true\nrounds = 2\n")
    metrics = run_recipe(load_recipe(recipe), progress=False)
    return folder / "run", metrics


def test_a_two_teacher_ensemble_teaches_a_student_without_training_a_teacher(run, members):
    folder, metrics = run
    assert (folder / "student.pt").is_file()
    assert not (folder / "teacher.pt").exists()  # the members are used as they are
    teacher = metrics["teacher"]
    assert teacher["source"] == "ensemble" and teacher["average"] == "probabilities" and teacher["epochs"] == 0
    assert [m["source"] for m in teacher["members"]] == [str(p) for p in members]
    assert all(0.5 < m["test_accuracy"] <= 1 for m in teacher["members"])  # 3 epochs learn digits
    assert 0.5 < teacher["test_accuracy"] <= 1


def test_a_run_with_an_ensemble_teacher_benches_its_student_as_the_reference(run):
    bench = json.loads((run[0] / "bench.json").read_text())
    assert bench["teacher"] == "student" and "student" in bench["artifacts"]


def test_the_summary_lists_each_members_accuracy_and_the_ensembles(run):
    table = summary_table(run[1])
    for m in run[1]["teacher"]["members"]:
        assert f"{m['test_accuracy']:.4f}" in table and m["source"] in table
    assert "teacher = ensemble of 2" in table


def test_the_cache_stores_every_members_logits_and_the_named_members_features(run):
    folder, metrics = run
    meta = json.loads((folder / "teacher_cache" / "meta.json").read_text())
    assert meta["paths"] == ["logits", "members.1.stage3"]
    logits = np.load(folder / "teacher_cache" / "0.npy")
    assert logits.shape == (1, LIMITS["train_limit"], 2, 10)
    assert meta["shapes"][1][2] == 32  # member 1 (width 8): stage3 has 4 * 8 channels


def test_a_missing_member_is_one_line(members, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text([members[0], tmp_path / "nope.pt"], tmp_path / "run"))
    code, out = cli(["run", str(recipe)], capsys)
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert "teacher.ensemble.1:" in out and "nope.pt" in out


def test_a_member_with_another_class_count_is_one_line(members, tmp_path, capsys):
    torch.manual_seed(0)
    seven = tmp_path / "seven.pt"
    save_checkpoint(seven, build_model("small_cnn", 7, (1, 8, 8), width=4),
                    ModelCard("small_cnn", 7, (1, 8, 8), kwargs={"width": 4}))
    for other in (seven, _plain_state_dict_with_classes(tmp_path, 7)):
        recipe = tmp_path / "r.toml"
        recipe.write_text(recipe_text([members[0], other], tmp_path / "run"))
        code, out = cli(["run", str(recipe)], capsys)
        assert code == 2 and len(out.strip().splitlines()) == 1, out
        assert "teacher.ensemble.1:" in out and "7" in out


@pytest.mark.parametrize("how", ["the same path", "a symbolic link", "a hard link"])
def test_a_member_listed_twice_is_one_line_before_any_training(how, members, tmp_path, capsys):
    """The same file twice would be averaged with itself: a silent reweighting, not an ensemble."""
    again = {"the same path": members[0], "a symbolic link": tmp_path / "link.pt",
             "a hard link": tmp_path / "hard.pt"}[how]
    if how == "a symbolic link":
        again.symlink_to(members[0])
    elif how == "a hard link":
        again.hardlink_to(members[0])
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text([members[0], members[1], again], tmp_path / "run"))
    code, out = cli(["run", str(recipe)], capsys)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert f"teacher.ensemble.2: {again} is the same file as teacher.ensemble.0" in out and "expected" in out
    assert not (tmp_path / "run" / "teacher.pt").exists() and not (tmp_path / "run" / "recipe.toml").exists()


def _plain_state_dict_with_classes(folder, classes):
    path = folder / "plain7.pt"
    torch.save(build_model("small_cnn", classes, (1, 8, 8), width=8).state_dict(), path)
    return path


def test_teacher_member_out_of_range_or_without_an_ensemble_is_one_line(members, tmp_path):
    text = recipe_text(members, tmp_path / "run").replace("teacher_member = 1", "teacher_member = 2")
    with pytest.raises(DistillError, match=r"distill.terms.1.teacher_member: expected a member index from "
                                           r"0 to 1 \(teacher.ensemble has 2\), got 2"):
        recipe_from_dict(_toml(text))
    with pytest.raises(DistillError, match="teacher_member: set, but teacher.ensemble is not"):
        recipe_from_dict({"distill": {"terms": [{"loss": "kd", "teacher_member": 0}]}})
    with pytest.raises(DistillError, match="teacher.ensemble_average: average must be one of"):
        recipe_from_dict({"teacher": {"ensemble": ["a.pt"], "ensemble_average": "votes"}})


def _toml(text):
    import tomllib
    return tomllib.loads(text)


def test_ensemble_keys_round_trip_through_the_resolved_recipe_and_students_have_none():
    from distill.recipe import to_toml
    recipe = recipe_from_dict({"teacher": {"ensemble": ['a "b".pt', "c\\d\n.pt"], "ensemble_average": "logits"},
                               "distill": {"terms": [{"loss": "kd", "teacher_member": 1}]}})
    assert recipe_from_dict(_toml(to_toml(recipe))) == recipe
    with pytest.raises(DistillError, match="student.ensemble"):
        recipe_from_dict({"student": {"ensemble": ["a.pt"]}})
