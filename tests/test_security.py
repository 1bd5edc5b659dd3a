"""Unsafe files: no file distill reads can run code. Checkpoints load with `weights_only=True`, so a
pickle crafted to run code on load is refused with a one-line error and its code never runs."""
from __future__ import annotations

import ast
import contextlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli
from distill.data import load_data
from distill.errors import DistillError
from distill.models import build_model, load_checkpoint, safe_load
from distill.models import read_state_dict

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
