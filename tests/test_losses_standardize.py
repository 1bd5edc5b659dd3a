"""Specification of logit standardisation (Sun et al. 2024) in KDLoss and DKDLoss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import DKDLoss, KDLoss, build_loss
from distill.losses.response import standardize_logits
from distill.recipe import recipe_from_dict


def authors_normalize(logit: torch.Tensor) -> torch.Tensor:
    """`normalize` of sunshangquan/logit-standardization-KD (mdistiller/distillers/KD.py)."""
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def authors_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """`kd_loss(..., logit_stand=True)` of the same repository."""
    log_pred_student = F.log_softmax(authors_normalize(s) / temperature, dim=1)
    pred_teacher = F.softmax(authors_normalize(t) / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def authors_dkd(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, alpha: float, beta: float,
                temperature: float) -> torch.Tensor:
    """`dkd_loss(..., logit_stand=True)` of the same repository (mdistiller/distillers/DKD.py)."""
    s, t = authors_normalize(s), authors_normalize(t)
    gt = torch.zeros_like(s).scatter_(1, target.unsqueeze(1), 1).bool()
    p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    cat = lambda p: torch.cat([(p * gt).sum(1, keepdims=True), (p * ~gt).sum(1, keepdims=True)], dim=1)  # noqa: E731
    tckd = F.kl_div(torch.log(cat(p_s)), cat(p_t), reduction="sum") * temperature**2 / target.shape[0]
    p_t2 = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def test_standardize_logits_z_scores_each_row_with_the_unbiased_std_plus_1e_minus_7():
    row = [1.0, 2.0, 6.0]
    mean = sum(row) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / 2)  # N - 1, as torch's default std
    expected = [(v - mean) / (std + 1e-7) for v in row]
    out = standardize_logits(torch.tensor([row, [0.0, 0.0, 3.0]], dtype=torch.float64))
    assert out[0].tolist() == pytest.approx(expected, rel=1e-12)
    assert out.mean(1).abs().max().item() < 1e-12


def test_standardised_kd_matches_the_authors_kd_loss():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g) * 2, torch.randn(8, 10, generator=g) * 7 + 3
    ours = KDLoss(temperature=2.0, standardize=True)(s, t)
    assert ours.item() == pytest.approx(authors_kd(s, t, 2.0).item(), rel=1e-5)
    assert ours.item() != pytest.approx(KDLoss(temperature=2.0)(s, t).item(), rel=1e-2)


def test_standardised_dkd_matches_the_authors_dkd_loss():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 10, generator=g) * 2, torch.randn(8, 10, generator=g) * 5
    target = torch.randint(0, 10, (8,), generator=g)
    ours = DKDLoss(alpha=1.0, beta=8.0, temperature=4.0, standardize=True)(s, t, target)
    theirs = authors_dkd(s, t, target, 1.0, 8.0, 4.0)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)


def test_standardised_kd_is_zero_when_the_student_is_a_shifted_and_scaled_teacher():
    """The point of the method: only the logits' relations count, not their range."""
    g = torch.Generator().manual_seed(2)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    s = 0.25 * t - 3.0
    assert KDLoss(standardize=True)(s, t).item() == pytest.approx(0.0, abs=1e-10)
    assert KDLoss()(s, t).item() > 0.01
    target = torch.tensor([0, 1, 2, 3])
    assert DKDLoss(standardize=True)(s, t, target).item() == pytest.approx(0.0, abs=1e-10)


def test_standardize_is_off_by_default_and_must_be_a_boolean():
    assert not KDLoss().standardize and not DKDLoss().standardize
    with pytest.raises(DistillError, match="KDLoss: standardize must be true or false, got 1"):
        build_loss("kd", standardize=1)
    with pytest.raises(DistillError, match="terms.0.*standardize must be true or false"):
        recipe_from_dict({"distill": {"terms": [{"loss": "dkd", "options": {"standardize": "yes"}}]}})


def test_recipe_option_standardize_true_reaches_the_loss():
    recipe = recipe_from_dict({"data": {"name": "digits"},
        "teacher": {"model": "mlp"}, "student": {"model": "mlp"},
        "distill": {"terms": [{"loss": "kd", "options": {"standardize": True, "temperature": 2.0}},
                              {"loss": "dkd", "options": {"standardize": True}}]},
    })
    built = [build_loss(t.loss, **t.options) for t in recipe.distill.terms]
    assert [b.standardize for b in built] == [True, True]
