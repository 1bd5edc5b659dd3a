"""Specification of teacher ensembles: `distill.models.Ensemble` and what the losses receive from it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill import Distiller, Term
from distill.errors import DistillError
from distill.losses import DISTLoss, DKDLoss, HintLoss, KDLoss, RKDLoss
from distill.models import Ensemble, build_model

SHAPE = (1, 8, 8)


def cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, SHAPE, width=width).eval()


def stacked_logits(n: int = 4, members: int = 3, classes: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, members, classes, generator=g, dtype=torch.float64) * 3


def mean_probabilities(stacked: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton et al. 2015, section 2: the average of the members' softened probabilities."""
    return sum(torch.softmax(stacked[:, m] / T, dim=1) for m in range(stacked.shape[1])) / stacked.shape[1]


def test_kd_from_an_ensemble_targets_the_average_of_the_members_probabilities_at_its_temperature():
    t = stacked_logits()
    s = torch.randn(4, 5, dtype=torch.float64)
    T = 3.0
    p = mean_probabilities(t, T)
    q = torch.softmax(s / T, dim=1)
    expected = T * T * (p * (p / q).log()).sum(1).mean()
    assert KDLoss(temperature=T)(s, t).item() == pytest.approx(expected.item(), rel=1e-10)


def test_dkd_from_an_ensemble_decouples_the_average_probabilities():
    t, s, targets, T = stacked_logits(), torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 4, 1]), 2.0
    p, q = mean_probabilities(t, T), torch.softmax(s / T, dim=1)
    gt = torch.nn.functional.one_hot(targets, 5).bool()
    binary = lambda x: torch.stack([x[gt], 1 - x[gt]], dim=1)  # noqa: E731
    rest = lambda x: x.masked_fill(gt, 0) / (1 - x[gt]).unsqueeze(1)  # noqa: E731
    kl = lambda a, b: (a * (a.clamp_min(1e-300) / b.clamp_min(1e-300)).log()).sum(1).mean()  # noqa: E731
    expected = T * T * (1.0 * kl(binary(p), binary(q)) + 8.0 * kl(rest(p), rest(q)))
    assert DKDLoss(temperature=T)(s, t, targets).item() == pytest.approx(expected.item(), rel=1e-8)


def test_dist_from_an_ensemble_correlates_with_the_average_probabilities():
    t, s, T = stacked_logits(), torch.randn(4, 5, dtype=torch.float64), 2.0
    p = mean_probabilities(t, T)
    # DIST on the average, given as logits log p (softmax of log p at T = 1 is p itself)
    expected = DISTLoss(temperature=1.0)(s / T, p.log()) * T * T
    assert DISTLoss(temperature=T)(s, t).item() == pytest.approx(expected.item(), rel=1e-8)


@pytest.mark.parametrize("loss", [KDLoss(temperature=4.0), DISTLoss(temperature=4.0), KDLoss(standardize=True)])
def test_a_one_member_ensemble_gives_the_same_loss_as_its_member(loss):
    t, s = stacked_logits(members=1), torch.randn(4, 5, dtype=torch.float64)
    assert loss(s, t).item() == pytest.approx(loss(s, t[:, 0]).item(), rel=1e-10)


def test_no_single_logit_vector_stands_for_the_average_at_every_temperature():
    """Why the aware losses get the stack: softmax(log p_1 / T) is not p_T for T != 1."""
    t = stacked_logits()
    log_p1 = mean_probabilities(t, 1.0).log()
    assert not torch.allclose(torch.softmax(log_p1 / 4.0, dim=1), mean_probabilities(t, 4.0), atol=1e-3)


def test_the_ensemble_predicts_with_the_log_of_the_mean_probability_or_optionally_the_mean_logits():
    members = [cnn(8, 0), cnn(8, 1)]
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        logits = torch.stack([m(x) for m in members], dim=1)
        by_probs = Ensemble(members)(x)
        by_logits = Ensemble(members, average="logits")(x)
    torch.testing.assert_close(by_probs.exp(), logits.softmax(-1).mean(1))
    torch.testing.assert_close(by_logits, logits.mean(1))


def test_the_ensemble_is_frozen_and_stays_in_eval_mode():
    ensemble = Ensemble([cnn(8, 0), cnn(4, 1)])
    ensemble.train()
    assert not any(m.training for m in ensemble.modules())
    assert not any(p.requires_grad for p in ensemble.parameters())


def test_members_with_different_class_counts_are_one_line():
    torch.manual_seed(0)
    other = build_model("small_cnn", 7, SHAPE, width=4)
    with pytest.raises(DistillError, match="members return outputs of shapes"):
        Ensemble([cnn(4, 0), other])(torch.randn(2, *SHAPE))
    with pytest.raises(DistillError, match="average must be one of probabilities, logits"):
        Ensemble([cnn(4, 0)], average="median")


def test_distiller_hands_the_stack_to_aware_losses_the_combined_logits_to_others_and_member_features():
    members = [cnn(8, 0), cnn(16, 1)]
    ensemble, student = Ensemble(members), cnn(4, 2)
    terms = [Term("kd", KDLoss(4.0)), Term("rkd", RKDLoss()),
             Term("hint", HintLoss(), student="stage3", teacher="members.1.stage3")]
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    with Distiller(ensemble, student, terms, SHAPE) as d:
        d.eval()
        with torch.no_grad():
            _, losses = d(x, y)
            s = student(x)
            stacked = torch.stack([m(x) for m in members], dim=1)
        assert set(d.connectors) == {"hint"}  # the student's 16 channels -> member 1's 64
        assert d.connectors["hint"][0].out_channels == 64
    torch.testing.assert_close(losses["kd"], KDLoss(4.0)(s, stacked))
    torch.testing.assert_close(losses["rkd"], RKDLoss()(s, ensemble.combine(stacked)))


def test_averaging_logits_hands_every_loss_the_mean_logits():
    members = [cnn(8, 0), cnn(8, 1)]
    ensemble, student = Ensemble(members, average="logits"), cnn(4, 2)
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    with Distiller(ensemble, student, [Term("kd", KDLoss(4.0))], SHAPE) as d:
        d.eval()
        with torch.no_grad():
            _, losses = d(x, y)
            expected = KDLoss(4.0)(student(x), torch.stack([m(x) for m in members], 1).mean(1))
    torch.testing.assert_close(losses["kd"], expected)
    assert math.isfinite(losses["ce"].item())


def test_a_logits_term_can_read_one_member_and_recipes_map_paths_to_members():
    from distill.phases.context import teacher_path
    from distill.recipe import recipe_from_dict
    members = [cnn(8, 0), cnn(8, 1)]
    student = cnn(4, 2)
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    with Distiller(Ensemble(members), student, [Term("kd", KDLoss(4.0), teacher="members.1")], SHAPE) as d:
        d.eval()
        with torch.no_grad():
            _, losses = d(x, y)
            expected = KDLoss(4.0)(student(x), members[1](x))
    torch.testing.assert_close(losses["kd"], expected)
    recipe = recipe_from_dict({"teacher": {"ensemble": ["a.pt", "b.pt"]}, "distill": {"terms": [
        {"loss": "kd"}, {"loss": "kd", "name": "one", "teacher_member": 1},
        {"loss": "hint", "student": "stage3", "teacher": "stage3"},
        {"loss": "at", "student": "stage2", "teacher": "stage2", "teacher_member": 1}]}})
    assert [teacher_path(recipe, t) for t in recipe.distill.terms] == [
        "logits", "members.1", "members.0.stage3", "members.1.stage2"]
