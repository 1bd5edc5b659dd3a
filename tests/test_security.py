"""Unsafe files: no file distill reads can run code. Checkpoints load with `weights_only=True`, so a
pickle crafted to run code on load is refused with a one-line error and its code never runs."""
from __future__ import annotations

import ast
import contextlib
import json
import os
import pickle
import re
import shlex
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli
from distill.data import load_data
from distill.errors import DistillError
from distill.models import ModelCard, build_model, load_checkpoint, safe_load, save_checkpoint
from distill.models import read_state_dict
from distill.recipe import load_recipe, to_toml

PACKAGE = Path(__file__).resolve().parents[1] / "distill"
RECIPE = """
seed = 0
device = "cpu"
[data]
name = "digits"
train_limit = 64
test_limit = 32
[teacher]
model = "small_cnn"
epochs = 1
[student]
model = "small_cnn"
epochs = 1
"""


pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this creates the folder `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def crafted(folder: Path, how: str) -> tuple[Path, Path]:
    """(a malicious file, the marker its code would create), saved the way `how` says."""
    marker = folder / f"code-ran-{how}"
    path = folder / f"{how}.pt"
    obj = {"format": "distill-checkpoint/1", "state_dict": {"weight": Payload(marker)}, "epoch": 1}
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))
    return path, marker


@pytest.mark.parametrize("how, message", [
    ("zip", r"refusing to load .*could run code.*GLOBAL \w+\.mkdir"),
    ("legacy", r"refusing to load .*could run code.*GLOBAL \w+\.mkdir"),
    ("pickle_protocol_2", r"refusing to load .*could run code.*GLOBAL \w+\.mkdir"),
    ("pickle_protocol_5", r"not a torch file"),  # torch's safe unpickler stops even before the payload
], ids=["zip", "legacy", "pickle_protocol_2", "pickle_protocol_5"])
def test_a_pickle_that_runs_code_is_refused_by_every_loader_and_its_code_never_runs(how, message, tmp_path):
    path, marker = crafted(tmp_path, how)
    for load in (safe_load, load_checkpoint, read_state_dict):
        with pytest.raises(DistillError, match=message):
            load(path)
    assert not marker.exists()
    with contextlib.suppress(RuntimeError):  # a raw pickle has no torch header: torch fails after unpickling
        torch.load(path, weights_only=False)  # the control: loaded unsafely, the file does run its code
    assert marker.is_dir()


@pytest.mark.parametrize("use", ["export", "teacher.checkpoint", "teacher.weights", "resume file"])
def test_the_cli_refuses_a_malicious_file_in_one_line_and_its_code_never_runs(use, tmp_path, capsys):
    path, marker = crafted(tmp_path, "zip")
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    run = ["run", str(recipe), "--out", str(out), "-q", "--device", "cpu"]
    if use == "export":
        argv = ["export", str(path), "-o", str(tmp_path / "m.onnx")]
    elif use == "resume file":  # planted where an interrupted run keeps its training state
        assert cli(run, capsys)[0] == 0
        (out / "teacher.pt").unlink()
        (out / ".teacher.resume.pt").write_bytes(path.read_bytes())
        argv = [*run, "--resume"]
    else:
        argv = [*run, "--set", f"{use}={path}"]
    code, text = cli(argv, capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1
    assert "refusing to load" in text and "expected weights saved as tensors" in text
    assert not marker.exists()


def test_an_npz_with_pickled_objects_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    images = np.empty(2, dtype=object)
    images[:] = [Payload(marker), Payload(marker)]
    np.savez(tmp_path / "evil.npz", x_train=images, y_train=np.zeros(2, np.int64),
             x_test=images, y_test=np.zeros(2, np.int64))
    with pytest.raises(DistillError, match="Object arrays cannot be loaded when allow_pickle=False.*expected"):
        load_data("npz", path=tmp_path / "evil.npz")
    assert not marker.exists()


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call `x.name(...)` in the package source."""
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append((file, node))
    return found


def _keyword(call: ast.Call, name: str):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


def test_every_torch_load_in_the_package_passes_weights_only_true_and_nothing_unpickles():
    torch_loads = [(f, c) for f, c in _calls("load") if isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"]
    assert torch_loads, "the package loads checkpoints somewhere"
    for file, call in torch_loads:
        assert _keyword(call, "weights_only") is True, f"{file}:{call.lineno} torch.load without weights_only=True"
    for file, call in _calls("load") + _calls("loads"):
        owner = getattr(call.func.value, "id", None)
        assert owner not in ("pickle", "dill", "joblib"), f"{file}:{call.lineno} unpickles"
        if owner == "np":
            assert _keyword(call, "allow_pickle") in (None, False), f"{file}:{call.lineno} np.load allows pickles"


def test_a_checkpoint_of_plain_weights_still_loads(tmp_path):
    """The refusal is about code, not about files from elsewhere: a plain state dict loads."""
    model = build_model("mlp", 10, (1, 8, 8))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    state = read_state_dict(tmp_path / "plain.pt")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- model cards that ask for code

SHAPE = (1, 8, 8)  # the digits that RECIPE and `--data digits` load
USER_MODULE = '''
import functools
import subprocess
from os import system            # re-exported: still the standard library's
from pathlib import Path

from torch import nn

(Path(__file__).parent / "imported").touch()  # module code runs on import: proof that it was imported
NOT_A_FUNCTION = 3
shell = functools.partial(subprocess.run, shell=True)


def tiny(num_classes):
    """A legitimate factory: a linear classifier of 8x8 digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


wide = functools.partial(lambda num_classes, width: tiny(num_classes), width=2)


def planting(num_classes, marker):
    """A factory that also leaves a file behind: what any code in a factory could do."""
    Path(marker).touch()
    return tiny(num_classes)
'''


class UserModule:
    """A module of the user's own (not the standard library), importable for one test."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name

    def spec(self, factory: str) -> str:
        return f"{self.name}:{factory}"

    def imported(self) -> bool:
        return (self.folder / "imported").exists()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "modules"
    folder.mkdir()
    name = f"user_models_{uuid.uuid4().hex[:8]}"  # fresh per test: an imported module is cached
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield UserModule(folder, name)
    sys.modules.pop(name, None)


def card_checkpoint(path: Path, arch: str, kwargs: dict | None = None, **card) -> Path:
    """A distill checkpoint holding a small_cnn's weights whose card asks for `arch` (with `kwargs`)."""
    state = build_model("small_cnn", 10, SHAPE).state_dict()
    card = {**ModelCard("small_cnn", 10, SHAPE).to_dict(), "arch": arch, "kwargs": kwargs or {}, **card}
    torch.save({"format": "distill-checkpoint/1", "card": card, "state_dict": state, "extra": {}}, path)
    return path


def planting_card(factory: str, marker: Path, user_module: UserModule) -> tuple[str, dict]:
    """(arch, kwargs) of a card whose factory, once called, creates `marker`."""
    if factory == "os:system":
        return "os:system", {"command": f"touch {shlex.quote(str(marker))}"}
    return user_module.spec("planting"), {"marker": str(marker)}


def run_dir_with(path: Path, recipe: Path, checkpoints: dict[str, Path]) -> Path:
    """A run directory of `recipe` (as `distill run` starts one) holding these checkpoints."""
    path.mkdir()
    (path / "recipe.toml").write_text(to_toml(load_recipe(recipe)))
    for role, checkpoint in checkpoints.items():
        (path / f"{role}.pt").write_bytes(checkpoint.read_bytes())
    return path


def argv_loading(use: str, evil: Path, tmp_path: Path, recipe: Path) -> list[str]:
    """The command line of `use` that loads the checkpoint `evil`."""
    run = ["run", str(recipe), "--out", str(tmp_path / "run"), "-q", "--device", "cpu"]
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model("small_cnn", 10, SHAPE), ModelCard("small_cnn", 10, SHAPE))
    return {
        "export": lambda: ["export", str(evil), "-o", str(tmp_path / "m.onnx")],
        "prune": lambda: ["prune", str(evil), "-o", str(tmp_path / "p.pt")],
        "prune taylor": lambda: ["prune", str(evil), "--importance", "taylor", "-o", str(tmp_path / "p.pt")],
        "probe": lambda: ["probe", str(evil), "--data", "digits"],
        "probe run directory": lambda: ["probe", str(recipe), "--run",
                                        str(run_dir_with(tmp_path / "r", recipe, {"teacher": evil}))],
        "bench": lambda: ["bench", "--teacher", str(evil), "--student", str(good)],
        "bench --data": lambda: ["bench", "--teacher", str(evil), "--student", str(good), "--data", "digits"],
        "bench run directory": lambda: ["bench", str(run_dir_with(tmp_path / "r", recipe, {"teacher": evil,
                                                                                          "student": good}))],
        "run teacher.checkpoint": lambda: [*run, "--set", f"teacher.checkpoint={evil}"],
        "run student.checkpoint": lambda: [*run, "--set", f"teacher.checkpoint={good}",
                                           "--set", f"student.checkpoint={evil}"],
        "run --resume": lambda: ["run", str(recipe), "--out", str(run_dir_with(tmp_path / "run", recipe,
                                 {"teacher": evil})), "-q", "--device", "cpu", "--resume"],
    }[use]()


LOADING_COMMANDS = ["export", "prune", "prune taylor", "probe", "probe run directory", "bench", "bench --data",
                    "bench run directory", "run teacher.checkpoint", "run student.checkpoint", "run --resume"]


@pytest.mark.parametrize("factory", ["os:system", "user module"])
@pytest.mark.parametrize("use", LOADING_COMMANDS)
def test_a_checkpoint_whose_card_names_a_factory_is_refused_by_every_command_before_any_code_runs(
        use, factory, user_module, tmp_path, capsys):
    """A received student.pt whose card says `os:system` (or any module's factory) would run that
    code while being rebuilt; without --trust-code it is refused, and nothing is even imported."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    marker = tmp_path / "code-ran"
    evil = card_checkpoint(tmp_path / "evil.pt", *planting_card(factory, marker, user_module))
    code, text = cli(argv_loading(use, evil, tmp_path, recipe), capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    arch = planting_card(factory, marker, user_module)[0]
    if use == "run --resume":  # a run's own files must describe its own models: refused even earlier
        assert "is not this run's teacher" in text, text
    else:
        assert f"asks to run code from {arch!r}" in text and "--trust-code" in text
    assert not marker.exists() and not user_module.imported()


def test_trust_code_does_not_let_a_checkpoint_call_the_standard_library(tmp_path, capsys):
    evil = card_checkpoint(tmp_path / "evil.pt", "os:system", {"command": f"touch {tmp_path / 'code-ran'}"})
    code, text = cli(["export", str(evil), "--trust-code"], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1
    assert "refusing to call 'os:system'" in text and "standard library" in text
    assert not (tmp_path / "code-ran").exists()


def test_with_trust_code_a_checkpoint_of_the_users_own_factory_loads(user_module, tmp_path, capsys):
    spec = user_module.spec("tiny")
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, build_model(spec, 10, SHAPE), ModelCard(spec, 10, SHAPE))
    code, text = cli(["export", str(path), "-o", str(tmp_path / "tiny.onnx")], capsys)
    assert code == 2 and "--trust-code" in text  # even a harmless factory: the file does not choose code
    code, text = cli(["export", str(path), "-o", str(tmp_path / "tiny.onnx"), "--trust-code"], capsys)
    assert code == 0, text
    assert (tmp_path / "tiny.onnx").is_file()
    for trust in (True, {spec}, [spec]):
        model, card = load_checkpoint(path, trust_code=trust)
        assert card.arch == spec and model(torch.zeros(1, *SHAPE)).shape == (1, 10)
    with pytest.raises(DistillError, match="asks to run code"):
        load_checkpoint(path, trust_code={"other_module:tiny"})


@pytest.mark.parametrize("how", ["the recipe names it", "trust_code = true", "--trust-code"])
def test_a_recipe_loads_a_checkpoint_of_a_factory_it_trusts(how, user_module, tmp_path, capsys):
    """The recipe's own `package.module:factory` is the user's choice, so its checkpoints load."""
    spec = user_module.spec("tiny")
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, build_model(spec, 10, SHAPE), ModelCard(spec, 10, SHAPE))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    argv = ["run", str(recipe), "--out", str(tmp_path / "run"), "-q", "--device", "cpu",
            "--set", f"teacher.checkpoint={path}", "--set", "baseline.enabled=false"]
    extra = {"the recipe names it": ["--set", f"teacher.model={spec}"],
             "trust_code = true": ["--set", "trust_code=true"], "--trust-code": ["--trust-code"]}[how]
    code, text = cli([*argv, *extra], capsys)
    assert code == 0, text
    assert "teacher" in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_a_checkpoint_given_as_teacher_weights_is_read_as_weights_and_its_card_never_built(
        user_module, tmp_path, capsys):
    """`teacher.weights` takes only the tensors of a file: a card asking for code is not even read."""
    marker = tmp_path / "code-ran"
    evil = card_checkpoint(tmp_path / "evil.pt", *planting_card("user module", marker, user_module))
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    code, text = cli(["run", str(recipe), "--out", str(tmp_path / "run"), "-q", "--device", "cpu",
                      "--set", f"teacher.weights={evil}", "--set", "baseline.enabled=false"], capsys)
    assert code == 0, text
    assert not marker.exists() and not user_module.imported()


# ----------------------------------------------------------------------------- callables that build no model

def refused_calls(tmp_path: Path, user_module: UserModule) -> dict[str, tuple[str, dict]]:
    """id -> (factory, keyword arguments) of calls that would each create the file tmp_path/code-ran."""
    marker = str(tmp_path / "code-ran")
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"open({marker!r}, 'w').close()\ndef model(): pass\n")
    return {
        "os.system": ("os:system", {"command": f"touch {shlex.quote(marker)}"}),
        "subprocess.run": ("subprocess:run", {"args": ["touch", marker]}),
        "builtins.open": ("builtins:open", {"file": marker, "mode": "w"}),
        "shutil.copyfile": ("shutil:copyfile", {"src": __file__, "dst": marker}),
        "torch.save": ("torch:save", {"obj": 1, "f": marker}),
        "torch.hub.load": ("torch.hub:load", {"repo_or_dir": str(hub), "model": "model", "source": "local"}),
        "numpy.save": ("numpy:save", {"file": marker, "arr": [1], "allow_pickle": False}),
        "re-exported os.system": (user_module.spec("system"), {"command": f"touch {shlex.quote(marker)}"}),
        "partial of subprocess.run": (user_module.spec("shell"), {"args": f"touch {shlex.quote(marker)}"}),
    }


REFUSED = ["os.system", "subprocess.run", "builtins.open", "shutil.copyfile", "torch.save", "torch.hub.load",
           "numpy.save", "re-exported os.system", "partial of subprocess.run"]


@pytest.mark.parametrize("call", REFUSED)
def test_callables_that_are_no_model_factory_are_refused_before_the_call_even_from_a_recipe(
        call, user_module, tmp_path):
    """Trusting a recipe (or --trust-code) trusts model code, not any function: the standard
    library and torch/numpy functions are refused by where they are defined, before being called."""
    factory, kwargs = refused_calls(tmp_path, user_module)[call]
    with pytest.raises(DistillError, match=rf"refusing to call {re.escape(repr(factory))} to build a model"):
        build_model(factory, 10, SHAPE, **kwargs)
    assert not (tmp_path / "code-ran").exists()


def test_a_recipe_naming_os_system_as_its_model_is_refused_in_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    marker = tmp_path / "code-ran"
    code, text = cli(["run", str(recipe), "--out", str(tmp_path / "run"), "-q", "--device", "cpu",
                      "--set", "teacher.model=os:system",
                      "--set", f"teacher.options={{command = 'touch {marker}'}}"], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1, text
    assert "refusing to call 'os:system'" in text
    assert not marker.exists()


def test_a_partial_of_the_users_own_factory_still_builds(user_module):
    """A functools.partial is judged by the function it wraps: the user's, here."""
    assert build_model(user_module.spec("wide"), 10, SHAPE)(torch.zeros(1, *SHAPE)).shape == (1, 10)


@pytest.mark.parametrize("factory, message", [
    ("NOT_A_FUNCTION", "it is int, not a function or class"),
    (":tiny", "expected 'package.module:factory'"),
    ("..relative:tiny", "expected 'package.module:factory'"),
], ids=["not callable", "no module", "relative module"])
def test_a_factory_name_that_cannot_be_called_is_one_error(factory, message, user_module):
    name = user_module.spec(factory) if factory == "NOT_A_FUNCTION" else factory
    with pytest.raises(DistillError, match=re.escape(message)):
        build_model(name, 10, SHAPE)


# ----------------------------------------------------------------------------- model cards are checked data

@pytest.mark.parametrize("card, key", [
    ({"evil": 1}, "unknown card key 'evil'"),
    ({"arch": 5}, "card.arch: expected"),
    ({"arch": ""}, "card.arch: expected"),
    ({"num_classes": "10"}, "card.num_classes: expected a positive integer"),
    ({"num_classes": 0}, "card.num_classes: expected a positive integer"),
    ({"num_classes": True}, "card.num_classes: expected a positive integer"),
    ({"input_shape": [1, 8]}, "card.input_shape: expected (C, H, W)"),
    ({"input_shape": [1, 8, -8]}, "card.input_shape: expected (C, H, W)"),
    ({"input_shape": "1,8,8"}, "card.input_shape: expected (C, H, W)"),
    ({"input_shape": [1, 100000, 100000]}, "card.input_shape: expected (C, H, W) with C 1 or 3 and sides"),
    ({"input_shape": [7, 8, 8]}, "card.input_shape: expected (C, H, W) with C 1 or 3"),
    ({"kwargs": "width=4"}, "card.kwargs: expected a table"),
    ({"kwargs": {1: 2}}, "card.kwargs: expected a table"),
    ({"kwargs": {"width": torch.ones(1)}}, "card.kwargs.width: expected a string, number"),
    ({"kwargs": {"weights": "DEFAULT"}}, "card.kwargs.weights: 'weights' is not a model option"),
    ({"mean": [0.1, 0.2]}, "card.mean: expected 1 or 1 finite numbers"),
    ({"mean": [float("nan")]}, "card.mean: expected 1 or 1 finite numbers"),
    ({"mean": "0.1"}, "card.mean: expected 1 or 1 finite numbers"),
    ({"std": [0.0]}, "card.std: expected 1 or 1 finite numbers, all positive"),
    ({"std": [True]}, "card.std: expected 1 or 1 finite numbers, all positive"),
    ({"class_names": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}, "card.class_names: expected 10 strings"),
    ({"class_names": ["one"]}, "card.class_names: expected 10 strings"),
    ({"pruned": "yes"}, "card.pruned: expected true or false"),
    ({"card": None}, "card: expected a table"),
    ({"arch": None}, "card.arch is missing"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else None)
def test_a_card_value_of_the_wrong_kind_is_one_error_naming_the_key(card, key, tmp_path):
    path = card_checkpoint(tmp_path / "bad.pt", "small_cnn", {})
    ckpt = torch.load(path, weights_only=True)
    if "card" in card:
        ckpt["card"] = card["card"]
    else:
        ckpt["card"].update(card)
        ckpt["card"] = {k: v for k, v in ckpt["card"].items() if v is not None}
    torch.save(ckpt, path)
    with pytest.raises(DistillError, match=re.escape(f"checkpoint {path}: {key}")):
        load_checkpoint(path)


def test_the_cli_refuses_an_unknown_card_key_in_one_line(tmp_path, capsys):
    path = card_checkpoint(tmp_path / "odd.pt", "small_cnn", {}, extra_code="os:system")
    code, text = cli(["export", str(path)], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1
    assert "unknown card key 'extra_code'" in text and "expected only arch, num_classes" in text
