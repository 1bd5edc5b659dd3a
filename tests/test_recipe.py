"""Recipes: typed validation with key paths, did-you-mean, --set overrides, TOML round trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.recipe import Recipe, load_recipe, recipe_from_dict, to_toml

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_an_empty_recipe_gets_every_default():
    r = recipe_from_dict({})
    assert isinstance(r, Recipe) and r.distill.terms[0].loss == "kd" and r.baseline.enabled


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates_and_says_what_it_is_for(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.description
    assert path.read_text().startswith("#"), "a recipe opens with a comment saying what it reproduces"


def test_the_resolved_recipe_round_trips_through_toml(tmp_path):
    for path in RECIPES:
        recipe = load_recipe(path, ["student.epochs=3"])
        (tmp_path / "r.toml").write_text(to_toml(recipe))
        assert load_recipe(tmp_path / "r.toml") == recipe


@pytest.mark.parametrize("data, message", [
    ({"studnet": {}}, r"unknown key 'studnet' \(did you mean 'student'"),
    ({"student": {"epoch": 3}}, r"unknown key 'student.epoch' \(did you mean 'epochs'"),
    ({"student": {"epochs": "ten"}}, r"student.epochs: expected an integer, got a string \('ten'\)"),
    ({"student": {"epochs": 2.5}}, r"student.epochs: expected an integer"),
    ({"student": {"epochs": 0}}, r"student.epochs: expected a positive integer, got 0"),
    ({"teacher": {"batch_size": -8}}, r"teacher.batch_size: expected a positive integer"),
    ({"teacher": {"lr": 0}}, r"teacher.lr: expected a positive number"),
    ({"data": {"augment": "yes"}}, r"data.augment: expected true or false"),
    ({"data": {"val_fraction": 1.5}}, r"data.val_fraction: expected a fraction"),
    ({"teacher": {"model": "resnet19"}}, r"teacher.model: unknown model 'resnet19' \(did you mean 'resnet18'"),
    ({"teacher": {"optimizer": "adm"}}, r"teacher.optimizer: expected one of sgd, adam, adamw, got 'adm'"),
    ({"teacher": {"strategy": "finetune"}}, r"teacher.finetune_from is required"),
    ({"distill": {"terms": [{"loss": "kdd"}]}}, r"distill.terms.0.loss: unknown loss 'kdd' \(did you mean 'kd'"),
    ({"distill": {"terms": [{"weight": 1.0}]}}, r"distill.terms.0.loss is required"),
    ({"distill": {"terms": [{"loss": "kd", "options": {"temperature": 0}}]}}, r"distill.terms.0: .*temperature"),
    ({"distill": {"terms": [{"loss": "kd", "options": {"temp": 4}}]}}, r"distill.terms.0: .*unexpected option 'temp'"),
    ({"distill": {"terms": [{"loss": "kd"}, {"loss": "kd"}]}}, r"term name 'kd' is used twice"),
    ({"distill": {"terms": [{"loss": "dkd", "warmup_epochs": -1}]}}, r"distill.terms.0.warmup_epochs: expected an integer >= 0"),
    ({"distill": {"terms": {"loss": "kd"}}}, r"distill.terms: expected a list"),
    ({"prune": {"macs": 1.5}}, r"prune.macs: expected the fraction of MACs to keep"),
    ({"device": "tpu"}, r"device: expected auto, cpu, cuda"),
])
def test_bad_recipes_name_the_key_path_and_what_was_expected(data, message):
    with pytest.raises(DistillError, match=message):
        recipe_from_dict(data)


def test_set_overrides_any_field_reading_values_as_toml_or_plain_strings():
    r = recipe_from_dict({}, ["student.epochs=2", "teacher.model=resnet18", "data.classes=[0, 1]",
                              "distill.terms.0.weight=0.5", "distill.terms.0.options.temperature=8",
                              "baseline.enabled=false"])
    assert r.student.epochs == 2 and r.teacher.model == "resnet18" and r.data.classes == [0, 1]
    assert r.distill.terms[0].weight == 0.5 and r.distill.terms[0].options == {"temperature": 8}
    assert r.baseline.enabled is False


@pytest.mark.parametrize("item, message", [
    ("student.epochz=2", r"student.epochz is not a recipe field \(did you mean 'epochs'"),
    ("nosuch=1", r"nosuch is not a recipe field"),
    ("student.epochs", r"expected KEY=VALUE"),
    ("distill.terms.5.weight=1", r"expected an index 0..0"),
    ("student.epochs=-1", r"student.epochs: expected a positive integer"),
])
def test_bad_set_overrides_are_refused(item, message):
    with pytest.raises(DistillError, match=message):
        recipe_from_dict({}, [item])


def test_recipe_text_is_never_evaluated(tmp_path):
    path = tmp_path / "evil.toml"
    path.write_text('name = "__import__(\'os\').system(\'touch pwned\')"\n')
    recipe = load_recipe(path)
    assert recipe.name.startswith("__import__") and not Path("pwned").exists()


def test_missing_and_invalid_recipe_files_are_one_line_errors(tmp_path):
    with pytest.raises(DistillError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[student\nepochs = 1")
    with pytest.raises(DistillError, match="not valid TOML"):
        load_recipe(tmp_path / "bad.toml")
