"""Did distillation help? The student-vs-baseline gain and its band of test-set noise."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distill import evaluate
from distill.gain import distillation_gain, paired_gain
from distill.train import correct_predictions


def masks(both: int, student_only: int, baseline_only: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image correctness of a student and a baseline with these four counts."""
    student = torch.tensor([True] * both + [True] * student_only + [False] * baseline_only + [False] * neither)
    baseline = torch.tensor([True] * both + [False] * student_only + [True] * baseline_only + [False] * neither)
    return student, baseline


def test_the_paired_gain_is_the_accuracy_difference_and_its_band_comes_from_the_disagreements_alone():
    student, baseline = masks(both=900, student_only=30, baseline_only=10, neither=60)
    g = paired_gain(student, baseline)
    assert g["accuracy_points"] == pytest.approx(2.0)  # (30 - 10) / 1000
    assert g["noise_band_points"] == pytest.approx(100 * 1.96 * 40 ** 0.5 / 1000, abs=1e-3)  # McNemar
    assert (g["student_only_right"], g["baseline_only_right"]) == (30, 10)
    assert g["significant"] and not g["negative_transfer"]
    # the same accuracies (93% vs 91%) compared as if measured on different images: within noise
    assert not distillation_gain(0.93, 0.91, 1000)["significant"]


def test_models_that_answer_alike_gain_nothing_and_a_worse_student_is_negative_transfer():
    same = paired_gain(*masks(both=950, student_only=0, baseline_only=0, neither=50))
    assert same["accuracy_points"] == 0 and same["noise_band_points"] == 0 and not same["significant"]
    assert not same["negative_transfer"]
    worse = paired_gain(*reversed(masks(both=900, student_only=30, baseline_only=10, neither=60)))
    assert worse["accuracy_points"] == pytest.approx(-2.0) and worse["significant"] and worse["negative_transfer"]


def test_two_equally_good_models_cross_the_band_about_one_time_in_twenty():
    g = torch.Generator().manual_seed(0)
    trials, n = 2000, 1000
    shared = torch.rand(trials, n, generator=g) < 0.8  # the images both find easy
    student = shared | (torch.rand(trials, n, generator=g) < 0.5)
    baseline = shared | (torch.rand(trials, n, generator=g) < 0.5)
    false_alarms = sum(paired_gain(s, b)["significant"] for s, b in zip(student, baseline))
    assert 0.03 < false_alarms / trials < 0.07


def test_correct_predictions_are_per_image_in_dataset_order_and_agree_with_evaluate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))
    model.train()
    x = torch.randn(50, 4)
    labels = model[0](x).argmax(1)
    labels[::5] = 1 - labels[::5]  # every fifth label is the class the model does not pick
    mask = correct_predictions(model, TensorDataset(x, labels), batch_size=16)
    assert mask.dtype == torch.bool and mask.tolist() == [i % 5 != 0 for i in range(50)]
    assert mask.float().mean().item() == pytest.approx(evaluate(model, TensorDataset(x, labels))["accuracy"])
    assert model.training, "the model's mode is restored"
