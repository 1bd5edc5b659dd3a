"""Numerical faults and unfaithful exports stop loudly: a NaN/inf loss names the term and epoch and
keeps the last good checkpoint (or is skipped and counted, when asked); an ONNX file that disagrees
with PyTorch beyond tolerance fails the export with a non-zero exit."""
from __future__ import annotations

import csv
import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distill import Distiller, Schedule, Term, fit
from helpers import cli
from distill.errors import DistillError
from distill.models import ModelCard, build_model, load_checkpoint, safe_load, save_checkpoint

SHAPE = (1, 8, 8)
# The student's lr jumps from 0.05 to 5e28 after its first epoch: epoch 1 is good, epoch 2 explodes.
RECIPE = """
seed = 0
device = "cpu"
[data]
name = "digits"
augment = false
train_limit = 128
test_limit = 32
[teacher]
model = "small_cnn"
options = { width = 8 }
epochs = 1
batch_size = 32
[student]
model = "small_cnn"
options = { width = 4 }
epochs = 2
batch_size = 32
scheduler = "step"
milestones = [1]
gamma = 1e30
[[distill.terms]]
loss = "kd"
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_an_exploding_run_stops_naming_term_and_epoch_and_keeps_the_last_good_checkpoints(tmp_path, capsys):
    (tmp_path / "r.toml").write_text(RECIPE)
    out = tmp_path / "run"
    code, text = cli(["run", str(tmp_path / "r.toml"), "--out", str(out), "-q"], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert re.search(r"error: student: loss term '(ce|kd)' became (nan|inf|-inf) at epoch 2, step \d+; "
                     r"the last good checkpoint is kept\. Expected finite losses", text), text
    teacher, _ = load_checkpoint(out / "teacher.pt")  # the finished phase is intact
    assert finite(teacher.state_dict())
    assert not (out / "student.pt").exists()
    resume = safe_load(out / ".student.resume.pt")  # the student's last good epoch, not the exploded one
    assert resume["epoch"] == 1 and finite(resume["student"])


def test_skip_nonfinite_skips_the_bad_steps_and_counts_them_in_the_history(tmp_path, capsys):
    (tmp_path / "r.toml").write_text(RECIPE)
    out = tmp_path / "run"
    code, text = cli(["run", str(tmp_path / "r.toml"), "--out", str(out), "-q", "--set", "skip_nonfinite=true",
                      "--set", "baseline.enabled=false"], capsys)
    assert code == 0, text
    with open(out / "history.csv") as f:
        student = [r for r in csv.DictReader(f) if r["phase"] == "student"]
    assert int(student[0]["skipped_steps"]) == 0 < int(student[1]["skipped_steps"])


class NaNAfter(nn.Module):
    """A loss term that turns NaN from its `n`-th call on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (student - teacher).pow(2).mean() * (float("nan") if self.calls >= self.n else 1.0)


def distiller(term: nn.Module) -> Distiller:
    torch.manual_seed(0)
    teacher, student = build_model("mlp", 2, SHAPE, hidden=[16]), build_model("mlp", 2, SHAPE, hidden=[8])
    return Distiller(teacher, student, [Term("drift", term)], SHAPE)


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(32, *SHAPE, generator=g), torch.randint(0, 2, (32,), generator=g))


def test_fit_stops_at_the_first_nonfinite_term_and_the_resume_file_keeps_the_last_good_epoch(tmp_path):
    d = distiller(NaNAfter(3))  # two steps per epoch: the first step of epoch 2 is NaN
    after_epoch_1 = {}
    with pytest.raises(DistillError, match=r"'drift' became nan at epoch 2, step 1"):
        fit(d, data(), Schedule(epochs=3, batch_size=16), resume_path=tmp_path / "s.pt", progress=False,
            on_epoch=lambda r: after_epoch_1.update({k: v.clone() for k, v in d.student.state_dict().items()}))
    state = safe_load(tmp_path / "s.pt")
    assert state["epoch"] == 1 and [r["epoch"] for r in state["history"]] == [1]
    assert all(torch.equal(state["student"][k], v) for k, v in after_epoch_1.items())


def test_skipped_steps_change_no_weight_and_are_counted_per_epoch():
    """NaN from the third step on, two steps per epoch: epoch 1 trains, epochs 2 and 3 skip every
    step, so the weights after each of them are exactly those after epoch 1."""
    d = distiller(NaNAfter(3))
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    after_epoch = []
    history = fit(d, data(), Schedule(epochs=3, batch_size=16), skip_nonfinite=True, progress=False,
                  on_epoch=lambda r: after_epoch.append({k: v.clone() for k, v in d.student.state_dict().items()}))
    assert [r["skipped_steps"] for r in history] == [0, 2, 2]
    assert any(not torch.equal(before[k], v) for k, v in after_epoch[0].items()), "epoch 1 trained"
    for later in after_epoch[1:]:
        assert all(torch.equal(after_epoch[0][k], v) for k, v in later.items())


def test_an_export_that_disagrees_with_pytorch_exits_non_zero_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import distill.export as ex
    torch.manual_seed(0)
    card = ModelCard("mlp", 10, SHAPE, kwargs={"hidden": [16]})
    save_checkpoint(tmp_path / "m.pt", card.build(), card)
    other = card.build().eval()  # the exporter writes a faithful file of the wrong weights
    real_export = ex._export
    monkeypatch.setattr(ex, "_export", lambda model, x, path, opset: real_export(other, x, path, opset))
    code, text = cli(["export", str(tmp_path / "m.pt"), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1
    assert re.search(r"differs from PyTorch by [\d.e+-]+ .*expected at most 0\.0001", text), text
    assert not (tmp_path / "m.onnx").exists()
