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


def test_param_groups_move_their_parameters_by_lr_times_their_lr_scale():
    """One plain SGD step (no momentum, no decay) from the same weights on the same batch: a group
    at lr_scale 0.1 moves exactly a tenth as far as at lr_scale 1; the other group is unaffected."""
    def first_step(features_scale: float) -> dict[str, torch.Tensor]:
        m = model(dropout=0.0)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        fit(Supervised(m), dataset(32), Schedule(epochs=1, batch_size=32, lr=0.1, scheduler="constant",
                                                 momentum=0.0, weight_decay=0.0),
            param_groups=[{"params": list(m.features.parameters()), "lr_scale": features_scale},
                          {"params": list(m.classifier.parameters())}], progress=False)
        return {k: v - before[k] for k, v in m.state_dict().items()}

    full, scaled = first_step(1.0), first_step(0.1)
    assert all(d.abs().sum() > 0 for d in full.values())
    for key, delta in full.items():
        torch.testing.assert_close(scaled[key], delta * (0.1 if key.startswith("features") else 1.0))


def test_evaluate_counts_matching_top_predictions_and_averages_the_loss_over_images():
    """A model that always predicts class 0, on labels 0, 0, 0, 1 in batches of 3 and 1: accuracy
    3/4 (not the mean of the batch accuracies, 1/2) and the per-image mean cross-entropy."""
    class AlwaysZero(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[2.0, 0.0]]).expand(len(images), 2)

    labels = torch.tensor([0, 0, 0, 1])
    result = evaluate(AlwaysZero(), TensorDataset(torch.zeros(4, *SHAPE), labels), batch_size=3)
    assert result["accuracy"] == 0.75
    expected_loss = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0]]).expand(4, 2), labels)
    assert result["loss"] == pytest.approx(expected_loss.item())


def test_kd_distillation_runs_end_to_end_with_val_accuracy_in_history():
    d = Distiller(model(1), model(2), [Term("kd", KDLoss())], SHAPE)
    val = dataset(32)
    history = fit(d, dataset(), Schedule(epochs=2, batch_size=32), val_data=val, progress=False)
    assert "kd" in history[-1]
    assert history[-1]["val_accuracy"] == evaluate(d.student, val)["accuracy"], "the final weights' score"


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


def test_resume_file_holds_the_fp16_loss_scale_and_a_resumed_run_continues_from_it(tmp_path, monkeypatch):
    """fp16 training scales the loss by a factor that changes as training runs; a resumed run that
    restarted from the initial factor would skip other steps than the uninterrupted one. CPU has no
    fp16 GradScaler, so an enabled CPU scaler (x2 after every step) stands in for CUDA's."""
    real_scaler, scalers = torch.amp.GradScaler, []

    def enabled_scaler(device: str, enabled: bool = True) -> torch.amp.GradScaler:
        scalers.append(real_scaler("cpu", init_scale=1.0, growth_interval=1))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", enabled_scaler)
    data, schedule = dataset(64), Schedule(epochs=3, batch_size=16, lr=0.1)  # 4 steps per epoch
    straight = model()
    fit(Supervised(straight), data, schedule, seed=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(Supervised(model()), data, schedule, seed=3, resume_path=tmp_path / "state.pt", progress=False,
            on_epoch=lambda r: _interrupt_after(r, 1))
    assert torch.load(tmp_path / "state.pt", weights_only=True)["scaler"]["scale"] == 2.0 ** 4
    resumed = model(seed=123)
    fit(Supervised(resumed), data, schedule, seed=3, resume_path=tmp_path / "state.pt", resume=True,
        progress=False)
    assert scalers[-1].state_dict() == scalers[0].state_dict() and scalers[0].get_scale() == 2.0 ** 12
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_without_skip_nonfinite_training_steps_read_nothing_back_from_the_device(monkeypatch):
    """Reading a GPU value on the host (bool(t), t.item(), float(t), t.tolist()) waits for the GPU
    to finish: once per step, it stalls every step. Without skip_nonfinite and progress bars, fit
    reads back per epoch, so an epoch of 16 steps reads as often as one of 2."""
    reads: list[str] = []
    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, _counting(getattr(torch.Tensor, name), name, reads))

    def reads_in_one_epoch(samples: int) -> int:
        reads.clear()
        fit(Supervised(model()), dataset(samples), Schedule(epochs=1, batch_size=4), progress=False)
        return len(reads)

    assert reads_in_one_epoch(8) == reads_in_one_epoch(64), reads


def _counting(method, name: str, reads: list[str]):
    def counted(self, *args, **kwargs):
        reads.append(name)
        return method(self, *args, **kwargs)
    return counted


def test_a_nonfinite_loss_mid_epoch_stops_the_run_naming_term_kind_epoch_and_step():
    class InfFromStep(nn.Module):
        calls = 0

        def forward(self, s, t):
            InfFromStep.calls += 1
            return s.sum() * 0 + (float("inf") if InfFromStep.calls >= 3 else 0.0)
    d = Distiller(model(1), model(2), [Term("wild", InfFromStep())], SHAPE)
    with pytest.raises(DistillError, match=r"'wild' became inf at epoch 1, step 3; the last good checkpoint"):
        fit(d, dataset(96), Schedule(epochs=1, batch_size=16), progress=False)


def test_a_nonfinite_loss_stops_the_run_within_a_bounded_number_of_steps():
    """The check runs every NONFINITE_CHECK_STEPS steps, not only at the end of a long epoch."""
    from distill.train import NONFINITE_CHECK_STEPS

    class NaNFromStep2(nn.Module):
        calls = 0

        def forward(self, s, t):
            NaNFromStep2.calls += 1
            return s.sum() * (float("nan") if NaNFromStep2.calls >= 2 else 0.0)
    d = Distiller(model(1), model(2), [Term("boom", NaNFromStep2())], SHAPE)
    steps = 3 * NONFINITE_CHECK_STEPS
    with pytest.raises(DistillError, match=r"'boom' became nan at epoch 1, step 2;"):
        fit(d, dataset(steps), Schedule(epochs=1, batch_size=1), progress=False)
    assert NaNFromStep2.calls <= NONFINITE_CHECK_STEPS
