"""Specification of DISTLoss (Huang et al. 2022) against a hand computation and the authors' code."""
from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.losses import LOSSES, DISTLoss, build_loss


def softmax(values: list[float], T: float) -> list[float]:
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    na = math.sqrt(sum((x - ma) ** 2 for x in a))
    nb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (na * nb + 1e-8)


def authors_dist(z_s: torch.Tensor, z_t: torch.Tensor, beta: float, gamma: float, tau: float) -> torch.Tensor:
    """A transcription of DIST from hunto/image_classification_sota (lib/models/losses/dist_kd.py),
    with the temperature and T^2 of the CIFAR variant of the same code."""
    def cosine_similarity(a, b, eps=1e-8):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def pearson_correlation(a, b, eps=1e-8):
        return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)

    def inter_class_relation(y_s, y_t):
        return 1 - pearson_correlation(y_s, y_t).mean()

    def intra_class_relation(y_s, y_t):
        return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    return beta * tau**2 * inter_class_relation(y_s, y_t) + gamma * tau**2 * intra_class_relation(y_s, y_t)


def test_dist_is_registered_as_dist_with_the_papers_defaults():
    loss = build_loss("dist")
    assert LOSSES["dist"] is DISTLoss
    assert (loss.beta, loss.gamma, loss.temperature) == (1.0, 1.0, 1.0)
    assert not DISTLoss.needs_targets and not DISTLoss.needs_same_shape


def test_dist_matches_a_hand_computation_of_inter_and_intra_class_pearson_relations():
    s_rows = [[1.0, 2.0, 3.0], [0.0, 0.5, -1.0], [2.0, -1.0, 0.5]]
    t_rows = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.5, 2.0]]
    beta, gamma, T = 2.0, 0.5, 3.0
    p_s = [softmax(r, T) for r in s_rows]
    p_t = [softmax(r, T) for r in t_rows]
    inter = 1 - sum(pearson(a, b) for a, b in zip(p_s, p_t)) / 3
    columns = lambda p: [[row[j] for row in p] for j in range(3)]  # noqa: E731
    intra = 1 - sum(pearson(a, b) for a, b in zip(columns(p_s), columns(p_t))) / 3
    expected = T * T * (beta * inter + gamma * intra)
    loss = DISTLoss(beta=beta, gamma=gamma, temperature=T)(torch.tensor(s_rows, dtype=torch.float64),
                                                           torch.tensor(t_rows, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (0.0, 1.0, 2.0)])
def test_dist_agrees_with_the_authors_code(beta, gamma, tau):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    ours = DISTLoss(beta=beta, gamma=gamma, temperature=tau)(s, t)
    assert ours.item() == pytest.approx(authors_dist(s, t, beta, gamma, tau).item(), rel=1e-5, abs=1e-7)


def test_dist_lies_between_zero_for_a_perfect_copy_and_two_t_squared_times_the_weights():
    """1 - correlation lies in [0, 2], so the loss lies in [0, 2 T^2 (beta + gamma)]; a perfect copy
    stays ~1e-6 above 0 because of the authors' 1e-8 in the correlation's denominator."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    assert 0 < DISTLoss(temperature=2.0)(s, t).item() <= 2 * 4 * 2
    assert DISTLoss(temperature=2.0)(s, s.clone()).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("option,value", [("beta", -1.0), ("gamma", float("nan")), ("temperature", 0)])
def test_dist_refuses_bad_options_in_one_line(option, value):
    with pytest.raises(DistillError, match=f"DISTLoss: {option} must be"):
        DISTLoss(**{option: value})
