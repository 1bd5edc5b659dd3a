"""Specification of CRDLoss (Tian et al. 2020) against RepDistiller's crd/ code, and its training path."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import cli, tiny_recipe
from distill import Distiller, Schedule, Term, fit
from distill.distiller import SAMPLE_INDEX, IndexedDataset
from distill.errors import DistillError
from distill.losses import LOSSES, CRDLoss, build_loss, crd
from distill.models import build_model

SHAPE = (1, 8, 8)


def repdistiller_crd(f_s, f_t, idx, contrast_idx, embed_s, embed_t, memory_v1, memory_v2, T, momentum, n_data):
    """A transcription of RepDistiller's CRDLoss + ContrastMemory + ContrastLoss (crd/criterion.py,
    crd/memory.py) for given negatives; returns (loss, updated memory_v1, updated memory_v2, Z_v1, Z_v2)."""
    eps = 1e-7

    def embed(linear, x):
        x = linear(x.view(x.shape[0], -1))
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))

    v1, v2 = embed(embed_s, f_s), embed(embed_t, f_t)
    batch, K1, size = v1.size(0), contrast_idx.size(1), v1.size(1)
    weight_v1 = torch.index_select(memory_v1, 0, contrast_idx.view(-1)).detach().view(batch, K1, size)
    out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch, size, 1)), T))
    weight_v2 = torch.index_select(memory_v2, 0, contrast_idx.view(-1)).detach().view(batch, K1, size)
    out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch, size, 1)), T))
    Z_v1, Z_v2 = (out_v1.mean() * n_data).item(), (out_v2.mean() * n_data).item()
    out_v1, out_v2 = torch.div(out_v1, Z_v1), torch.div(out_v2, Z_v2)
    memory_v1, memory_v2 = memory_v1.clone(), memory_v2.clone()
    with torch.no_grad():
        for memory, v in ((memory_v1, v1), (memory_v2, v2)):
            pos = torch.index_select(memory, 0, idx.view(-1)).mul(momentum).add(torch.mul(v, 1 - momentum))
            memory.index_copy_(0, idx, pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))

    def contrast_loss(x):
        bsz, m = x.shape[0], x.size(1) - 1
        Pn = 1 / float(n_data)
        P_pos = x.select(1, 0)
        log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log()
        P_neg = x.narrow(1, 1, m)
        log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log()
        return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz

    loss = contrast_loss(out_v1) + contrast_loss(out_v2)
    return loss.squeeze(), memory_v1, memory_v2, Z_v1, Z_v2


def bound_crd(n_data=20, feature_dim=6, negatives=5, s_dim=7, t_dim=9, **kw) -> CRDLoss:
    torch.manual_seed(0)
    loss = CRDLoss(feature_dim=feature_dim, negatives=negatives, num_samples=n_data, **kw)
    loss.bind(torch.Size([s_dim]), torch.Size([t_dim]))
    return loss.double()


@pytest.fixture(params=["gathered rows", "whole-bank matmul"])
def scoring(request, monkeypatch):
    """CRDLoss scores against the bank by gathering rows or by one matmul, by size: run both."""
    monkeypatch.setattr(crd, "whole_bank_is_cheaper", lambda *_: request.param == "whole-bank matmul")
    return request.param


def test_crd_matches_repdistillers_loss_memory_update_and_normalisers(scoring):
    loss = bound_crd(temperature=0.1, momentum=0.5)
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
    idx = torch.tensor([3, 0, 17, 9])
    contrast = torch.randint(0, 20, (4, 6), generator=g)
    contrast[:, 0] = idx
    expected, m1, m2, z1, z2 = repdistiller_crd(f_s, f_t, idx, contrast, loss.embed_s, loss.embed_t,
                                                loss.memory_s, loss.memory_t, 0.1, 0.5, 20)
    ours = loss(f_s, f_t, idx, contrast)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(loss.memory_s, m1)
    torch.testing.assert_close(loss.memory_t, m2)
    assert loss.normalisers.tolist() == pytest.approx([z1, z2], rel=1e-12)


def test_crd_nce_term_matches_a_hand_computation_of_the_papers_equation():
    """One sample, one negative: -[log(h+ / (h+ + m/N)) + log((m/N) / (h- + m/N))] per side."""
    loss = bound_crd(n_data=4, negatives=1)
    h = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    expected = -(math.log(2.0 / (2.0 + 0.25 + 1e-7)) + math.log(0.25 / (0.5 + 0.25 + 1e-7)))
    assert loss._nce(h).item() == pytest.approx(expected, rel=1e-12)


def test_both_scoring_routes_give_the_same_loss_gradients_and_state(monkeypatch):
    g = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(8, 7, generator=g, dtype=torch.float64), torch.randn(8, 9, generator=g, dtype=torch.float64)
    idx = torch.arange(8) * 7
    contrast = torch.randint(0, 64, (8, 12), generator=g)
    contrast[:, 0] = idx
    results = []
    for whole_bank in (False, True):
        monkeypatch.setattr(crd, "whole_bank_is_cheaper", lambda *_: whole_bank)
        loss = bound_crd(n_data=64)
        student = f_s.clone().requires_grad_()
        value = loss(student, f_t, idx, contrast)
        value.backward()
        results.append([value.detach(), student.grad, *(p.grad for p in loss.parameters()), *loss.buffers()])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_the_whole_bank_matmul_is_chosen_for_many_negatives_and_large_batches_only():
    assert crd.whole_bank_is_cheaper(256, 4097, 60000, 128)  # the MNIST row: B x (K + 1) = 17 x the bank
    assert not crd.whole_bank_is_cheaper(8, 4097, 60000, 128)  # few anchors: the bank's copy dominates
    assert not crd.whole_bank_is_cheaper(256, 257, 60000, 128)  # few negatives: the gather is small


def test_crd_draws_negatives_itself_and_only_the_student_side_and_heads_get_gradients():
    loss = bound_crd(negatives=50).float()
    f_s, f_t = torch.randn(4, 7, requires_grad=True), torch.randn(4, 9, requires_grad=True)
    value = loss(f_s, f_t, torch.tensor([1, 2, 3, 4]))
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert f_s.grad.abs().sum() > 0 and f_t.grad is None
    assert loss.embed_s.weight.grad.abs().sum() > 0 and loss.embed_t.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("option, value", [("negatives", 10 ** 9), ("negatives", 2 ** 16 + 1),
                                           ("feature_dim", 2 ** 31 - 1), ("feature_dim", 2 ** 12 + 1)])
def test_crd_refuses_counts_so_large_that_one_step_would_fill_the_memory(option, value, tmp_path, capsys):
    """10**9 negatives would draw a batch x 10**9 index tensor (gigabytes) in the preflight: refused
    with the recipe, before any data is loaded; the paper's 16384 negatives and 128 dimensions fit."""
    with pytest.raises(DistillError, match=f"CRDLoss: {option} must be a whole number from 1 to "):
        build_loss("crd", **{option: value})
    assert build_loss("crd", negatives=16384, feature_dim=128).negatives == 16384
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(32, 16, 1, 1))
    code, text = cli(["run", str(recipe), "--out", str(tmp_path / "run"), "--set", "distill.terms.0.loss=crd",
                      "--set", f"distill.terms.0.options={{ {option} = {value} }}"], capsys)
    assert code == 2 and text.startswith("error: distill.terms.0: CRDLoss") and len(text.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_crd_refuses_bad_options_and_use_before_setup():
    with pytest.raises(DistillError, match="CRDLoss: negatives must be a whole number >= 1"):
        build_loss("crd", negatives=0)
    with pytest.raises(DistillError, match="CRDLoss: momentum must be in"):
        CRDLoss(momentum=1.0)
    with pytest.raises(DistillError, match="CRDLoss: not set up"):
        CRDLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]))
    assert LOSSES["crd"] is CRDLoss and CRDLoss.needs_indices


def cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, SHAPE, width=width)


def crd_distiller(n: int) -> Distiller:
    teacher, student = cnn(8, 0).eval(), cnn(4, 1)  # seeded: the banks and heads below are drawn after
    term = Term("crd", CRDLoss(feature_dim=8, negatives=16, num_samples=n), student="stage3", teacher="stage3")
    return Distiller(teacher, student, [term], SHAPE)


def test_the_distiller_sizes_crds_heads_trains_them_and_needs_the_indices():
    d = crd_distiller(32)
    crd = d.stateful_terms["crd"]
    assert crd.embed_s.in_features == 16 * 2 * 2 and crd.embed_t.in_features == 32 * 2 * 2
    trainable = {id(p) for p in d.trainable_parameters()}
    assert {id(p) for p in crd.parameters()} <= trainable
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    with pytest.raises(DistillError, match="term 'crd' needs each sample's index"):
        d(x, y)
    _, losses = d(x, y, {SAMPLE_INDEX: torch.tensor([0, 5, 6, 31])})
    assert torch.isfinite(losses["crd"])


def test_crd_memory_bank_and_heads_are_part_of_the_resume_state(tmp_path):
    """Two epochs in one go and one + one resumed end with the same banks, heads and student."""
    g = torch.Generator().manual_seed(0)
    data = IndexedDataset(torch.utils.data.TensorDataset(torch.randn(32, *SHAPE, generator=g),
                                                         torch.randint(0, 10, (32,), generator=g)))
    straight = crd_distiller(32)
    fit(straight, data, Schedule(epochs=2, batch_size=8), progress=False)
    resumed, path = crd_distiller(32), tmp_path / "resume.pt"

    def killed(record):  # the process dies once epoch 1 is saved
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(resumed, data, Schedule(epochs=2, batch_size=8), resume_path=path, on_epoch=killed, progress=False)
    again = crd_distiller(32)
    fit(again, data, Schedule(epochs=2, batch_size=8), resume_path=path, resume=True, progress=False)
    a, b = straight.stateful_terms["crd"], again.stateful_terms["crd"]
    fresh = crd_distiller(32).stateful_terms["crd"]
    assert not torch.equal(a.memory_s, fresh.memory_s) and not torch.equal(a.embed_s.weight, fresh.embed_s.weight)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], msg=name)
    for p, q in zip(straight.student.parameters(), again.student.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("cache", [False, True])
def test_a_crd_term_trains_from_a_recipe_with_indices_from_the_data_or_the_cache(tmp_path, cache):
    from distill.pipeline import run_recipe
    from distill.recipe import recipe_from_dict
    recipe = recipe_from_dict({
        "name": "crd", "seed": 0, "device": "cpu", "out": str(tmp_path / "run"),
        "data": {"name": "digits", "augment": False, "train_limit": 64, "test_limit": 32},
        "teacher": {"model": "small_cnn", "options": {"width": 8}, "epochs": 1, "batch_size": 16},
        "student": {"model": "small_cnn", "options": {"width": 4}, "epochs": 2, "batch_size": 16},
        "baseline": {"enabled": False},
        "distill": {"cache": cache, "terms": [{"loss": "crd", "student": "stage3", "teacher": "stage3",
                                               "options": {"feature_dim": 16, "negatives": 32}}]},
    })
    metrics = run_recipe(recipe, progress=False)
    assert metrics["student"]["epochs"] == 2
    assert ("teacher_cache" in metrics) == cache
