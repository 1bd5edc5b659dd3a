"""Bad input never crashes: every mistake a user can make is one line naming the problem and what
was expected, with exit code 2 and no traceback (`--debug` shows the traceback instead)."""
from __future__ import annotations

import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli, tiny_recipe
from distill.errors import DistillError
from distill.models import ModelCard, build_model, save_checkpoint
from distill.recipe import load_recipe

RECIPE = tiny_recipe(train_limit=128, test_limit=32, teacher_epochs=1, student_epochs=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Every broken input of the matrix, made once."""
    f = tmp_path_factory.mktemp("inputs")
    (f / "recipe.toml").write_text(RECIPE)
    (f / "typo_key.toml").write_text(RECIPE.replace("width = 4 }\nepochs", "width = 4 }\nepochz"))
    (f / "typo_section.toml").write_text(RECIPE.replace("[student]", "[studnet]"))
    (f / "invalid.toml").write_text(RECIPE.replace("[student]", "[student"))
    (f / "no_loss.toml").write_text(RECIPE + "[[distill.terms]]\nweight = 1.0\n")

    x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 10
    np.savez(f / "wrong_keys.npz", x=x, y=y)
    np.savez(f / "float_pixels.npz", x_train=x.astype(np.float32), y_train=y, x_test=x.astype(np.float32), y_test=y)
    np.savez(f / "good.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    good = (f / "good.npz").read_bytes()
    (f / "truncated.npz").write_bytes(good[: len(good) // 2])
    for split in ("train", "val"):
        (f / "no_images" / split / "cat").mkdir(parents=True)
        (f / "no_images" / split / "cat" / "notes.txt").write_text("not an image")
    (f / "empty_root").mkdir()

    torch.manual_seed(0)
    card = ModelCard("small_cnn", 3, (1, 8, 8), kwargs={"width": 16})
    save_checkpoint(f / "three_classes.pt", card.build(), card)
    whole = (f / "three_classes.pt").read_bytes()
    (f / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (f / "garbage.pt").write_bytes(b"not a checkpoint " * 50)
    (f / "plain_pickle.pt").write_bytes(pickle.dumps({"weight": [1.0]}, protocol=5))
    wider = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 16})
    save_checkpoint(f / "card_says_width_8.pt", wider.build(), wider)
    ckpt = torch.load(f / "card_says_width_8.pt", weights_only=True)
    ckpt["card"]["kwargs"] = {"width": 8}  # the card names another architecture than the weights
    torch.save(ckpt, f / "card_says_width_8.pt")
    torch.save(build_model("mlp", 10, (1, 8, 8)).state_dict(), f / "mlp_state_dict.pt")
    (f / "not_onnx.onnx").write_bytes(b"this is not a protobuf \x00\xff\x13")
    (f / "a_file").write_text("")
    return f


RUN = "run {F}/recipe.toml --out {O} -q --device cpu"
LONG = "x" * 300  # one name over the 255 bytes file systems allow
TOO_LONG = r"path .*x\.\.\.x+.* is too long for the file system \(\d+ characters\)"
# (id, command line: {F} = the files above, {O} = a fresh output directory, problem, what was expected)
CASES = [
    # recipes: keys, types, values
    ("unknown key, did-you-mean", "run {F}/typo_key.toml --out {O}",
     r"unknown key 'student\.epochz' \(did you mean 'epochs'", r"expected one of .*epochs"),
    ("unknown section, did-you-mean", "run {F}/typo_section.toml --out {O}",
     r"unknown key 'studnet' \(did you mean 'student'", r"expected one of"),
    ("not TOML", "run {F}/invalid.toml --out {O}", r"is not valid TOML", r"Expected '\]'"),
    ("missing recipe", "run {F}/nope.toml --out {O}", r"recipe .*nope\.toml.* not found", r"expected a \.toml path"),
    ("string for an integer", RUN + " --set student.epochs=three",
     r"student\.epochs", r"expected an integer, got a string \('three'\)"),
    ("list for a number", RUN + " --set student.lr=[1]", r"student\.lr", r"expected a number, got a list"),
    ("integer for a boolean", RUN + " --set data.augment=3", r"data\.augment", r"expected true or false"),
    ("integer for a list", RUN + " --set distill.terms=5", r"distill\.terms", r"expected a list"),
    ("zero epochs", RUN + " --set student.epochs=0", r"student\.epochs", r"expected a positive integer, got 0"),
    ("negative epochs", RUN + " --set teacher.epochs=-1", r"teacher\.epochs", r"expected a positive integer, got -1"),
    ("zero batch size", RUN + " --set student.batch_size=0", r"student\.batch_size", r"expected a positive integer"),
    ("negative batch size", RUN + " --set teacher.batch_size=-8", r"teacher\.batch_size", r"expected a positive integer"),
    ("negative learning rate", RUN + " --set student.lr=-0.1", r"student\.lr", r"expected a positive number"),
    ("zero temperature", RUN + " --set distill.terms.0.options.temperature=0",
     r"distill\.terms\.0: KDLoss: temperature", r"must be a finite number > 0, got 0"),
    ("negative temperature", RUN + " --set distill.terms.0.options.temperature=-4",
     r"KDLoss: temperature", r"must be a finite number > 0, got -4"),
    ("unknown loss option", RUN + " --set distill.terms.0.options.temprature=4",
     r"unexpected option 'temprature' \(did you mean 'temperature'", r"expected: temperature"),
    ("unknown loss", RUN + " --set distill.terms.0.loss=kdd",
     r"unknown loss 'kdd' \(did you mean 'kd'", r"expected one of kd, "),
    ("fraction out of range", RUN + " --set data.val_fraction=1.5", r"data\.val_fraction", r"expected a fraction in \[0, 1\)"),
    ("unknown device in the recipe", RUN + " --set device=tpu", r"device", r"expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    # --set
    ("--set unknown field", RUN + " --set student.epochz=1",
     r"student\.epochz is not a recipe field \(did you mean 'epochs'", r"expected one of model, "),
    ("--set unknown section", RUN + " --set nosuch.field=1", r"nosuch is not a recipe field", r"expected one of name, "),
    ("--set list index out of range", RUN + " --set distill.terms.7.weight=1",
     r"distill\.terms\.7 is not an item of a 2-item list", r"expected an index 0\.\.1"),
    ("--set without a value", RUN + " --set student.epochs", r"--set 'student\.epochs'", r"expected KEY=VALUE"),
    # models and layers
    ("unknown model", RUN + " --set teacher.model=resnet19",
     r"unknown model 'resnet19' \(did you mean 'resnet18'", r"expected a name from `distill models`"),
    ("unknown layer path", RUN + " --set distill.terms.1.student=stage9",
     r"no layer 'stage9'", r"nearest valid paths: stage3, "),
    ("different class counts", RUN + " --set teacher.checkpoint={F}/three_classes.pt",
     r"teacher.checkpoint .*three_classes.pt .* predicts 3 classes", r"expected a teacher trained on this data"),
    # data
    ("unknown dataset", RUN + " --set data.name=mnsit", r"unknown dataset 'mnsit' \(did you mean 'mnist'", r"expected one of digits, "),
    ("missing npz path", RUN + " --set data.name=npz --set data.path={F}/missing.npz",
     r"npz file .*missing\.npz not found", r"expected a file in Keras layout"),
    ("missing dataset file", RUN + " --set data.name=mnist --data-root {F}/empty_root",
     r"dataset 'mnist' not found", r"expected .*empty_root/mnist\.npz"),
    ("image folder without images", RUN + " --set data.name=imagefolder --set data.path={F}/no_images",
     r"no images found", r"expected one folder per class holding image files"),
    ("missing image folder", RUN + " --set data.name=imagefolder --set data.path={F}/missing_folder",
     r"image folder .*missing_folder not found", r"expected a folder with train/ and val/"),
    ("truncated npz", RUN + " --set data.name=npz --set data.path={F}/truncated.npz",
     r"truncated or corrupt", r"expected an npz archive"),
    ("wrong-keyed npz", RUN + " --set data.name=npz --set data.path={F}/wrong_keys.npz",
     r"lacks x_train, y_train, x_test, y_test \(it has x, y\)", r"expected Keras layout"),
    ("float pixels in npz", RUN + " --set data.name=npz --set data.path={F}/float_pixels.npz",
     r"x_train has dtype float32", r"expected uint8 pixels"),
    # checkpoints
    ("garbage checkpoint", RUN + " --set teacher.checkpoint={F}/garbage.pt",
     r"garbage\.pt cannot be read: it is truncated, corrupt or not a torch file",
     r"expected a complete file written by torch\.save"),
    ("truncated checkpoint", RUN + " --set teacher.checkpoint={F}/truncated.pt",
     r"truncated\.pt cannot be read", r"expected a complete file"),
    ("state dict instead of a checkpoint", RUN + " --set teacher.checkpoint={F}/mlp_state_dict.pt",
     r"is not a distill checkpoint", r"expected a file written by `distill run`"),
    ("weights of another architecture", RUN + " --set teacher.weights={F}/mlp_state_dict.pt",
     r"weights .*mlp_state_dict\.pt lack 18 tensors of SmallCNN", r"expected a checkpoint of the same architecture"),
    ("card and weights disagree", "export {F}/card_says_width_8.pt -o {O}/m.onnx",
     r"does not match architecture 'small_cnn' \(size mismatch", r"expected the weights of the model its card"),
    ("export a corrupt checkpoint", "export {F}/garbage.pt -o {O}/m.onnx", r"garbage\.pt cannot be read",
     r"expected a complete file"),
    ("export a plain pickle", "export {F}/plain_pickle.pt -o {O}/m.onnx", r"plain_pickle\.pt cannot be read",
     r"expected a complete file written by torch\.save"),
    # output and ONNX files
    ("output under a file", "run {F}/recipe.toml --out {F}/a_file/run -q",
     r"cannot write to run directory .*a_file/run", r"expected a writable --out directory"),
    ("output is a file", "run {F}/recipe.toml --out {F}/a_file -q",
     r"Directory '.*a_file' is a file", r"`distill run --help` lists what is expected"),
    ("unknown --device", RUN + " --device tpu",
     r"device", r"expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    # a path longer than the file system allows, wherever it is first looked at
    ("a recipe path too long", "run {F}/" + LONG + ".toml", TOO_LONG, r"expected a shorter path"),
    ("an --out too long", "run {F}/recipe.toml -q --out {F}/" + LONG, TOO_LONG, r"expected a shorter path"),
    ("a checkpoint path too long", "export {F}/" + LONG + ".pt", TOO_LONG, r"expected a shorter path"),
    ("a data root too long", RUN + " --set data.name=mnist --data-root {F}/" + LONG, TOO_LONG,
     r"expected a shorter path"),
    ("a run directory too long", "report {F}/" + LONG, TOO_LONG, r"expected a shorter path"),
    ("an ONNX file that is not ONNX", "bench --teacher {F}/three_classes.pt --student {F}/not_onnx.onnx -o {O} -q",
     r"not_onnx\.onnx is not an ONNX model", r"expected a file written by distill export"),
]


@pytest.mark.parametrize("command, problem, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_problem_and_what_was_expected(command, problem, expected, files,
                                                                         tmp_path, capsys):
    argv = shlex.split(command.format(F=files, O=tmp_path / "out"))
    code, text = cli(argv, capsys)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    assert re.search(problem, text) and re.search(expected, text), text


def test_the_matrix_covers_at_least_25_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def test_a_real_process_prints_one_line_and_debug_prints_the_traceback(files, tmp_path):
    """A pickle that is not a torch file: torch warns before refusing it, and that must not leak."""
    command = ["export", str(files / "plain_pickle.pt"), "-o", str(tmp_path / "m.onnx")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain, debug = [subprocess.Popen([sys.executable, "-m", "distill", *flags, *command], text=True, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE) for flags in ([], ["--debug"])]
    out, err = plain.communicate(timeout=300)
    assert plain.returncode == 2 and out == ""
    assert err.startswith("error: checkpoint") and len(err.strip().splitlines()) == 1, err
    _, err = debug.communicate(timeout=300)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in err and "DistillError" in err


def test_a_missing_required_key_says_what_was_expected(files, tmp_path, capsys):
    code, text = cli(["run", str(files / "no_loss.toml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "distill.terms.2.loss is required" in text
    assert "expected" in text


@pytest.mark.parametrize("field", ["prune.batch_size", "prune.lr"])
def test_prune_schedule_values_are_refused_before_any_training(field, files):
    with pytest.raises(DistillError, match=rf"{field}: expected a positive"):
        load_recipe(files / "recipe.toml", [f"{field}=0"])
