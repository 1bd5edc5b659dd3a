"""Teacher-output cache: exact replay, keyed invalidation, reproducible augmented views, memory maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from distill import Distiller, Schedule, Term, fit
from distill.cache import CachedTeacherDataset, TeacherCache
from distill.errors import DistillError
from distill.losses import HintLoss, KDLoss
from distill.models import build_model

SHAPE = (1, 8, 8)


def data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, *SHAPE, generator=g), torch.randint(0, 4, (n,), generator=g))


class Noisy(Dataset):
    """A dataset with random augmentation drawn from torch's global generator."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.5 * torch.randn_like(x), y


def models():
    torch.manual_seed(0)
    return (build_model("small_cnn", 4, SHAPE, width=8).eval(), build_model("small_cnn", 4, SHAPE, width=4))


TERMS = lambda: [Term("kd", KDLoss()), Term("hint", HintLoss(), student="stage3", teacher="stage3")]  # noqa: E731


def test_float32_cached_distillation_is_bit_identical_to_running_the_teacher(tmp_path):
    schedule = Schedule(epochs=2, batch_size=8, lr=0.05)
    teacher, student = models()
    fit(Distiller(teacher, student, TERMS(), SHAPE), data(), schedule, progress=False)

    teacher2, cached_student = models()
    cache = TeacherCache.build(teacher2, data(), ["logits", "stage3"], tmp_path, dtype="float32", progress=False)
    fit(Distiller(teacher2, cached_student, TERMS(), SHAPE), CachedTeacherDataset(data(), cache), schedule,
        progress=False)
    for (k, a), b in zip(student.state_dict().items(), cached_student.state_dict().values()):
        assert torch.equal(a, b), k


def test_cache_rows_are_the_teachers_outputs_and_float16_stays_close(tmp_path):
    teacher, _ = models()
    cache = TeacherCache.build(teacher, data(), ["logits", "stage2"], tmp_path, progress=False)
    x, _ = data()[5]
    with torch.no_grad():
        expected = teacher(x[None])[0]
    row = cache.row(0, 5)
    torch.testing.assert_close(row["logits"], expected, rtol=2e-3, atol=2e-3)
    assert row["stage2"].shape == (16, 4, 4)
    assert all(isinstance(a, np.memmap) for a in cache.arrays.values()), "read from disk, not memory"


def test_same_teacher_and_data_reuse_the_cache_and_a_changed_teacher_rebuilds_it(tmp_path):
    teacher, _ = models()
    first = TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
    written = (tmp_path / "0.npy").stat().st_mtime_ns
    again = TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
    assert again.meta["key"] == first.meta["key"] and (tmp_path / "0.npy").stat().st_mtime_ns == written
    with torch.no_grad():
        teacher.classifier.weight.add_(1.0)
    changed = TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
    assert changed.meta["key"] != first.meta["key"]
    other_data = TeacherCache.build(teacher, data(40), ["logits"], tmp_path, progress=False)
    assert other_data.meta["key"] != changed.meta["key"]


def test_augmented_views_are_reproducible_and_cycle_with_the_epoch(tmp_path):
    teacher, _ = models()
    noisy = Noisy(data(8))
    cache = TeacherCache.build(teacher, noisy, ["logits"], tmp_path, views=3, dtype="float32", progress=False)
    cached = CachedTeacherDataset(noisy, cache)
    seen = []
    for epoch in range(4):
        cached.set_epoch(epoch)
        image, _, outputs = cached[2]
        with torch.no_grad():
            torch.testing.assert_close(outputs["logits"], teacher(image[None])[0], rtol=1e-5, atol=1e-5)
        seen.append(image)
    assert not torch.equal(seen[0], seen[1]), "views differ"
    assert torch.equal(seen[0], seen[3]), "epoch 3 replays view 0"


def test_float16_overflow_is_refused_with_the_fix_named(tmp_path):
    teacher, _ = models()
    with torch.no_grad():
        teacher.classifier.weight.mul_(1e7)
    with pytest.raises(DistillError, match="float16 range.*float32"):
        TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
