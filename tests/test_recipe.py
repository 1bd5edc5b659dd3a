"""Recipes: typed validation with key paths, did-you-mean, --set overrides, TOML round trip."""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
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
    ({"prune": {"macs": 1.5}}, r"prune.macs: expected the fraction of the original MACs to keep"),
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


# Strings that a TOML writer must escape, and text it must keep as it is.
HOSTILE_TEXT = 'a "quoted"\nline\\two\ttab\rcr \x01\x1f\x7f bell\x07 é ünï 中文 🎉 \'single\' """ end\\'
# Fields whose values are checked against a list of choices (or are a run folder), so they keep a
# valid value in the round trip below; every other string field gets HOSTILE_TEXT.
CHOICE_FIELDS = {"device", "speed.amp", "distill.cache_dtype", "prune.recovery", "prune.importance",
                 "distill.terms.0.loss", "teacher.optimizer", "teacher.scheduler", "teacher.strategy",
                 "student.optimizer", "student.scheduler", "student.strategy",
                 # provider names ONNX Runtime checks; candidates only with a budget (test_latency.py)
                 "teacher.latency_provider", "student.latency_provider",
                 "teacher.candidates.0.model", "student.candidates.0.model",
                 "teacher.ensemble_average"}
SPECIAL = {"name": HOSTILE_TEXT.replace("\\", "|"),  # one folder: any text but path separators
           "teacher.model": "my.models:" + HOSTILE_TEXT, "student.model": "my.models:" + HOSTILE_TEXT}


def _string_fields(cls: type, prefix: str = "") -> list[tuple[str, bool]]:
    """(key path, is a list of strings) of every string field of a recipe dataclass, recursively;
    list-of-dataclass fields (distill.terms) are walked through their first item."""
    found = []
    for f in dataclasses.fields(cls):
        tp, path = typing.get_type_hints(cls)[f.name], f"{prefix}{f.name}"
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        item = typing.get_args(inner[0])[0] if typing.get_origin(inner[0]) is list else None
        if dataclasses.is_dataclass(tp):
            found += _string_fields(tp, f"{path}.")
        elif item is not None and dataclasses.is_dataclass(item):
            found += _string_fields(item, f"{path}.0.")
        elif str in inner or item is str:
            found.append((path, item is str))
    return found


def test_every_string_field_round_trips_through_toml_whatever_its_text(tmp_path):
    """recipe.toml is what --resume reads back: newlines, quotes, backslashes, tabs, control
    characters and non-ASCII text in any field must come back unchanged."""
    overrides = {"distill": {"terms": [{"loss": "kd"}]},
                 "teacher": {"options": {"bare_key": 1, "key with spaces": HOSTILE_TEXT, "": [1.5, "x\ny"],
                                         'quo"te\n': {"nested key": -0.0, "é": True}}}}
    fields = _string_fields(Recipe)
    assert {"description", "data.path", "distill.terms.0.name", "prune.hint_layers"} <= {p for p, _ in fields}
    for path, is_list in fields:
        if path in CHOICE_FIELDS or path == "teacher.ensemble":  # refused beside teacher.checkpoint
            continue
        *parents, last = path.split(".")
        node = overrides
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        value = SPECIAL.get(path, HOSTILE_TEXT)
        node[last] = [value, value + "2"] if is_list else value
    recipe = recipe_from_dict(overrides)
    text = to_toml(recipe)
    assert recipe_from_dict(tomllib.loads(text)) == recipe
    (tmp_path / "recipe.toml").write_text(text, encoding="utf-8")
    assert load_recipe(tmp_path / "recipe.toml") == recipe


def test_non_finite_floats_are_written_as_toml_spells_them():
    options = {"nan": math.nan, "inf": math.inf, "minus_inf": -math.inf, "tiny": 5e-324, "big": 1e300}
    text = to_toml(recipe_from_dict({"teacher": {"model": "my.models:net", "options": options}}))
    read = tomllib.loads(text)["teacher"]["options"]
    assert math.isnan(read["nan"]) and read["inf"] == math.inf and read["minus_inf"] == -math.inf
    assert read["tiny"] == 5e-324 and read["big"] == 1e300
