"""The training loop: schedules, evaluation, atomic resume files, exact resume, non-finite losses."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distill import Distiller, Schedule, Supervised, Term, evaluate, fit
from distill.errors import DistillError
from distill.losses import KDLoss
from distill.models import build_model

SHAPE = (1, 8, 8)


def dataset(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *SHAPE, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()  # learnable
    return TensorDataset(x, y)


def model(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", 2, SHAPE, hidden=[32], dropout=dropout)


def test_fit_learns_a_learnable_task_and_records_one_history_row_per_epoch():
    m = model()
    history = fit(Supervised(m), dataset(), Schedule(epochs=8, batch_size=16, lr=0.1), progress=False)
    assert [r["epoch"] for r in history] == list(range(1, 9))
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate(m, dataset())["accuracy"] > 0.8


def test_cosine_schedule_starts_at_lr_and_ends_near_zero_and_step_decays_at_milestones():
    cos = Schedule(epochs=10, lr=0.1)
    assert cos.lr_factor(0) == 1.0 and cos.lr_factor(10) == pytest.approx(0.0)
    step = Schedule(epochs=10, scheduler="step", milestones=[5, 8], gamma=0.1)
    assert [step.lr_factor(e) for e in (4, 5, 8)] == pytest.approx([1.0, 0.1, 0.01])


def test_fit_tells_the_module_each_epoch_it_starts():
    seen = []

    class Recorder(Supervised):
        def set_epoch(self, epoch: int) -> None:
            seen.append(epoch)

    fit(Recorder(model()), dataset(), Schedule(epochs=3, batch_size=16), progress=False)
    assert seen == [0, 1, 2]


def test_warmup_rises_linearly_from_zero_then_hands_over_to_the_schedule():
    warm = Schedule(epochs=10, warmup_epochs=2)
    assert [warm.lr_factor(e) for e in (0, 0.5, 1, 2)] == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert warm.lr_factor(10) == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs: expected a positive integer"),
    ({"batch_size": -1}, "batch_size: expected a positive integer"),
    ({"lr": 0}, "lr: expected a positive number"),
    ({"optimizer": "lbfgs"}, "optimizer: expected one of"),
])
def test_bad_schedules_are_refused_with_what_was_expected(kwargs, message):
    with pytest.raises(DistillError, match=message):
        Schedule(**kwargs)


def test_resumed_training_ends_with_exactly_the_weights_of_an_uninterrupted_run(tmp_path):
    data, schedule = dataset(), Schedule(epochs=4, batch_size=16, lr=0.1)
    straight = model()
    fit(Supervised(straight), data, schedule, seed=3, progress=False)

    # a run killed after epoch 2 of 4: its resume file holds epoch 2
    first = model()
    with pytest.raises(KeyboardInterrupt):
        fit(Supervised(first), data, schedule, seed=3, resume_path=tmp_path / "state.pt", progress=False,
            on_epoch=lambda r: _interrupt_after(r, 2))
    resumed = model(seed=123)  # different init: everything must come from the resume file
    history = fit(Supervised(resumed), data, schedule, seed=3, resume_path=tmp_path / "state.pt",
                  resume=True, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def _interrupt_after(record: dict, epoch: int) -> None:
    if record["epoch"] == epoch:
        raise KeyboardInterrupt


def test_resume_file_holds_student_connectors_optimizer_rng_but_never_the_teacher(tmp_path):
    teacher = build_model("small_cnn", 2, SHAPE, width=16)
    student = build_model("small_cnn", 2, SHAPE, width=4)
    from distill.losses import HintLoss
    d = Distiller(teacher, student, [Term("hint", HintLoss(), student="stage3", teacher="stage3")], SHAPE)
    fit(d, dataset(32), Schedule(epochs=1, batch_size=16), resume_path=tmp_path / "s.pt", progress=False)
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert {"student", "connectors", "optimizer", "rng", "history", "epoch"} <= set(state)
    assert not any(k.startswith("teacher") for k in state)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


def test_nonfinite_loss_stops_with_the_term_and_epoch_named():
    class Exploding(nn.Module):
        def forward(self, s, t):
            return s.sum() * float("nan")
    d = Distiller(model(1), model(2), [Term("boom", Exploding())], SHAPE)
    with pytest.raises(DistillError, match=r"'boom' became nan at epoch 1"):
        fit(d, dataset(32), Schedule(epochs=1, batch_size=16), progress=False)


def test_nonfinite_steps_can_be_skipped_and_are_counted():
    class SometimesNaN(nn.Module):
        calls = 0

        def forward(self, s, t):
            SometimesNaN.calls += 1
            return s.sum() * (float("nan") if SometimesNaN.calls == 1 else 0.0)
    d = Distiller(model(1), model(2), [Term("odd", SometimesNaN())], SHAPE)
    history = fit(d, dataset(32), Schedule(epochs=1, batch_size=16), skip_nonfinite=True, progress=False)
    assert history[0]["skipped_steps"] == 1


def test_param_groups_scale_the_learning_rate():
    m = model()
    seen = []
    fit(Supervised(m), dataset(32), Schedule(epochs=1, batch_size=32, lr=0.1, scheduler="constant"),
        param_groups=[{"params": list(m.features.parameters()), "lr_scale": 0.1},
                      {"params": list(m.classifier.parameters())}],
        progress=False, on_epoch=lambda r: seen.append(r))
    assert seen and seen[0]["lr"] == pytest.approx(0.1)


def test_kd_distillation_runs_end_to_end_with_val_accuracy_in_history():
    d = Distiller(model(1), model(2), [Term("kd", KDLoss())], SHAPE)
    history = fit(d, dataset(), Schedule(epochs=2, batch_size=32), val_data=dataset(32), progress=False)
    assert 0 <= history[-1]["val_accuracy"] <= 1 and "kd" in history[-1]


def test_bf16_autocast_and_channels_last_train_a_conv_net_on_cpu():
    from distill import Speed
    torch.manual_seed(0)
    net = build_model("small_cnn", 2, SHAPE, width=4)
    history = fit(Supervised(net), dataset(), Schedule(epochs=3, batch_size=16, lr=0.1),
                  speed=Speed(amp="bf16", channels_last=True), progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert net.stage1[0].weight.dtype == torch.float32, "autocast keeps float32 master weights"


def test_unknown_amp_mode_is_refused():
    from distill import Speed
    with pytest.raises(DistillError, match="amp: expected bf16 or fp16"):
        Speed(amp="int4")


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_uses_nesterov_momentum_exactly_when_the_schedule_asks(nesterov):
    optimizer = Schedule(nesterov=nesterov).make_optimizer([nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["nesterov"] is nesterov


def test_the_crd_and_dkd_recipes_use_plain_momentum_as_their_reference_code_does():
    """RepDistiller and mdistiller build optim.SGD without nesterov; recipes that quote their
    numbers must train the same way."""
    from distill.recipe import load_recipe, shipped_recipes_dir
    paths = sorted(shipped_recipes_dir().glob("cifar*.toml"))
    assert paths
    for path in paths:
        recipe = load_recipe(path)
        for role, spec in (("teacher", recipe.teacher), ("student", recipe.student)):
            optimizer = spec.schedule().make_optimizer([nn.Parameter(torch.zeros(1))])
            assert optimizer.param_groups[0]["nesterov"] is False, f"{path.name} [{role}]"
