"""The teacher-student module: frozen teacher, hooks by path, connectors only where shapes differ."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distill import Distiller, Schedule, Term, fit
from distill.errors import DistillError
from distill.losses import AttentionTransfer, HintLoss, KDLoss, RKDLoss
from distill.models import build_model

SHAPE = (1, 8, 8)


def cnn(width: int) -> nn.Module:
    torch.manual_seed(width)
    return build_model("small_cnn", 10, SHAPE, width=width)


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_forward_returns_student_logits_and_one_weighted_loss_per_term_plus_ce():
    teacher, student = cnn(16), cnn(8)
    d = Distiller(teacher, student, [Term("kd", KDLoss(4.0), weight=0.5)], SHAPE)
    x, y = batch()
    logits, losses = d(x, y)
    assert logits.shape == (16, 10)
    assert set(losses) == {"ce", "kd"}
    with torch.no_grad():
        expected_kd = 0.5 * KDLoss(4.0)(student.eval()(x), teacher(x))
    d.eval()
    _, losses = d(x, y)
    torch.testing.assert_close(losses["kd"], expected_kd)


def test_losses_run_in_float32_under_bf16_autocast():
    """bf16 cannot hold T=20 soft targets (they differ in the third digit): the terms upcast first."""
    teacher, student = cnn(16).eval(), cnn(8).eval()
    d = Distiller(teacher, student, [Term("kd", KDLoss(20.0))], SHAPE).eval()
    x, y = batch()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        _, losses = d(x, y)
        s_logits, t_logits = student(x), teacher(x)
    assert s_logits.dtype == torch.bfloat16 and losses["kd"].dtype == torch.float32
    expected = KDLoss(20.0)(s_logits.float(), t_logits.float())
    torch.testing.assert_close(losses["kd"], expected)


def test_a_term_warmup_ramps_its_weight_linearly_over_the_first_epochs():
    d = Distiller(cnn(16), cnn(8), [Term("kd", KDLoss(4.0), weight=2.0, warmup_epochs=4)], SHAPE).eval()
    x, y = batch()
    with torch.no_grad():
        full = 2.0 * KDLoss(4.0)(d.student(x), d.teacher(x))
        weighted = []
        for epoch in (0, 1, 3, 10):
            d.set_epoch(epoch)
            weighted.append(d(x, y)[1]["kd"])
    torch.testing.assert_close(torch.stack(weighted), full * torch.tensor([0.25, 0.5, 1.0, 1.0]))


def test_ce_weight_zero_drops_the_cross_entropy_term():
    d = Distiller(cnn(16), cnn(8), [Term("kd", KDLoss())], SHAPE, ce_weight=0.0)
    assert set(d(*batch())[1]) == {"kd"}


def test_connector_exists_only_when_feature_shapes_differ():
    same = Distiller(cnn(8), cnn(8), [Term("hint", HintLoss(), student="stage3", teacher="stage3")], SHAPE)
    assert len(same.connectors) == 0
    differ = Distiller(cnn(16), cnn(8), [Term("hint", HintLoss(), student="stage3", teacher="stage3")], SHAPE)
    assert list(differ.connectors) == ["hint"]
    conv = differ.connectors["hint"][0]
    assert (conv.in_channels, conv.out_channels) == (32, 64)


def test_connector_resizes_space_when_maps_differ_in_size():
    # student stage2 is 4x4, teacher stage3 is 2x2: 1x1 conv + BN + pooling to 2x2
    d = Distiller(cnn(16), cnn(8), [Term("hint", HintLoss(), student="stage2", teacher="stage3")], SHAPE)
    _, losses = d(*batch())
    assert torch.isfinite(losses["hint"])
    assert isinstance(d.connectors["hint"][-1], nn.AdaptiveAvgPool2d)


def test_losses_that_accept_any_shape_get_no_connector():
    terms = [Term("at", AttentionTransfer(), student="stage2", teacher="stage3"),
             Term("rkd", RKDLoss(), student="stage3", teacher="stage3")]
    d = Distiller(cnn(16), cnn(8), terms, SHAPE)
    assert len(d.connectors) == 0
    assert all(torch.isfinite(v) for v in d(*batch())[1].values())


def test_vector_features_get_a_linear_connector():
    teacher = build_model("mlp", 10, SHAPE, hidden=[32, 24])
    student = build_model("mlp", 10, SHAPE, hidden=[16, 12])
    d = Distiller(teacher, student, [Term("hint", HintLoss(), student="features.4", teacher="features.4")], SHAPE)
    assert isinstance(d.connectors["hint"], nn.Linear)
    assert (d.connectors["hint"].in_features, d.connectors["hint"].out_features) == (12, 24)


def test_unknown_layer_path_fails_at_construction_with_nearest_valid_paths():
    with pytest.raises(DistillError, match=r"no layer 'stage4'.*stage3"):
        Distiller(cnn(16), cnn(8), [Term("hint", HintLoss(), student="stage4", teacher="stage3")], SHAPE)


def test_different_class_counts_fail_with_both_counts_named():
    teacher = build_model("small_cnn", 100, SHAPE, width=8)
    with pytest.raises(DistillError, match="100 classes but student 10"):
        Distiller(teacher, cnn(8), [Term("kd", KDLoss())], SHAPE)


def test_teacher_stays_in_eval_mode_and_has_no_gradients():
    d = Distiller(cnn(16), cnn(8), [Term("kd", KDLoss())], SHAPE)
    d.train()
    assert not d.teacher.training and d.student.training
    assert not any(p.requires_grad for p in d.teacher.parameters())
    _, losses = d(*batch())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert any(p.grad is not None for p in d.student.parameters())


def test_teacher_weights_and_bn_statistics_are_bit_identical_after_a_distillation_epoch():
    teacher, student = cnn(16), cnn(8)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = [Term("kd", KDLoss()), Term("hint", HintLoss(), student="stage3", teacher="stage3")]
    d = Distiller(teacher, student, terms, SHAPE)
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    x, y = batch(64)
    fit(d, TensorDataset(x, y), Schedule(epochs=1, batch_size=16, lr=0.1), progress=False)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())


def test_feature_taps_are_not_changed_by_a_following_inplace_relu():
    # small_cnn stage1.0 is a conv followed by BN and an in-place ReLU; the tap must keep raw values
    student = cnn(8).eval()
    d = Distiller(cnn(16), student, [Term("hint", HintLoss(), student="stage1.1", teacher="stage1.1")], SHAPE)
    x, _ = batch()
    d.eval()
    d(x, torch.zeros(16, dtype=torch.long))
    captured = d._student_taps.outputs["stage1.1"]
    assert (captured < 0).any(), "a BN output before ReLU has negative values"


def test_fit_trains_the_connectors_with_the_student_and_they_are_not_part_of_it():
    student = cnn(8)
    d = Distiller(cnn(16), student, [Term("hint", HintLoss(), student="stage3", teacher="stage3")], SHAPE)
    before = {k: v.clone() for k, v in d.connectors.named_parameters()}
    x, y = batch(32)
    fit(d, TensorDataset(x, y), Schedule(epochs=1, batch_size=16, lr=0.1), progress=False)
    unchanged = [k for k, v in d.connectors.named_parameters() if torch.equal(before[k], v)]
    assert before and not unchanged, f"connector parameters fit did not update: {unchanged}"
    assert not any(k.startswith("connectors") for k in student.state_dict())
