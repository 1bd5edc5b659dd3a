"""Few labels, many unlabelled images: the transfer set, masked cross-entropy, the pseudo-label row,
several seeds pooled into one verdict, and the errors a user can make on the way."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from helpers import cli
from distill import Distiller, Supervised
from distill.data import IGNORE_LABEL, load_data
from distill.distiller import Term
from distill.errors import DistillError
from distill.gain import paired_gain, pooled_paired_gain
from distill.losses import DKDLoss
from distill.losses.labels import PseudoLabelLoss, labelled_cross_entropy
from distill.summary import summary_table

TINY = ["teacher.epochs=1", "student.epochs=1", "teacher.batch_size=16", "student.batch_size=16",
        "export.enabled=false", "bench.enabled=false"]


def sets(*overrides: str) -> list[str]:
    return [arg for s in overrides for arg in ("--set", s)]


# ----------------------------------------------------------------------------- the transfer set

def test_labelled_per_class_keeps_n_labels_per_class_and_turns_the_rest_into_unlabelled_images():
    data = load_data("digits", augment=False, labelled_per_class=5, seed=0)
    labels = data.train.targets.numpy()
    assert np.bincount(labels).tolist() == [5] * 10
    assert len(data.transfer) == 1347 and data.unlabelled == 1347 - 50
    transfer = data.transfer.targets.numpy()
    assert (transfer == IGNORE_LABEL).sum() == 1297
    # the labelled images keep their true labels; the transfer set holds every training image once
    full = load_data("digits", augment=False)
    assert data.transfer.indices.tolist() == full.train.indices.tolist()
    kept = transfer != IGNORE_LABEL
    assert (transfer[kept] == full.train.targets.numpy()[kept]).all()
    assert sorted(data.train.indices.tolist()) == data.transfer.indices[torch.from_numpy(kept)].tolist()


def test_the_labelled_images_are_a_seeded_random_choice_not_the_first_of_each_class():
    picks = [load_data("digits", augment=False, labelled_per_class=5, seed=s).train.indices.tolist()
             for s in (0, 0, 1)]
    assert picks[0] == picks[1] and picks[0] != picks[2]
    full = load_data("digits", augment=False).train
    first_five = [i for c in range(10) for i in full.indices[full.targets == c][:5].tolist()]
    assert sorted(picks[0]) != sorted(first_five)


def test_the_plain_transfer_set_has_the_same_images_without_augmentation():
    data = load_data("digits", augment=True, jitter=1, labelled_per_class=3, seed=0)
    assert len(data.transfer_plain) == len(data.transfer)
    torch.manual_seed(0)
    assert torch.equal(data.transfer_plain[7][0], data.transfer_plain[7][0])


def test_without_unlabelled_images_the_transfer_set_is_the_training_set():
    data = load_data("digits", augment=False)
    assert data.transfer is data.train and data.transfer_plain is data.train_plain and data.unlabelled == 0


def test_an_unlabelled_npz_of_images_only_joins_the_transfer_set(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "extra.npz", x=images)
    data = load_data("digits", augment=False, unlabelled=tmp_path / "extra.npz")
    assert len(data.transfer) == 1347 + 7 and len(data.train) == 1347
    assert (data.transfer.targets[-7:] == IGNORE_LABEL).all()
    # digits' pixels run 0..16: a 0..255 image is rescaled to that scale before normalisation
    scaled = torch.from_numpy(images[3]).float().mul(16 / 255).round()
    expected = (scaled / 16 - data.mean[0]) / data.std[0]
    assert torch.allclose(data.transfer_plain[1347 + 3][0][0], expected, atol=1e-5)


def test_an_unlabelled_image_folder_of_any_nesting_joins_the_transfer_set(tmp_path):
    folder = tmp_path / "photos"
    for i, sub in enumerate(["a", "a/b", "c/d/e"]):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), "L").save(folder / sub / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    data = load_data("digits", augment=False, unlabelled=folder)
    assert data.unlabelled == 3 and data.transfer[1347 + 2][0].shape == (1, 8, 8)


@pytest.mark.parametrize("kwargs, expected", [
    ({"labelled_per_class": 200}, "labelled_per_class=200 but class"),
    ({"labelled_per_class": 0}, "labelled_per_class=0; expected a positive integer"),
    ({"unlabelled": "missing.npz"}, "not found"),
    ({"unlabelled": "empty_dir"}, "holds no image files"),
    ({"unlabelled": "big.npz"}, "are 1-channel 9x9; expected 1-channel 8x8"),
    ({"unlabelled": "rgb.npz"}, "are 3-channel 8x8; expected 1-channel 8x8"),
    ({"unlabelled": "labels.npz"}, "has no array 'x' or 'x_train'"),
    ({"unlabelled": "rgb_dir"}, "are 3-channel 8x8; expected 1-channel 8x8"),
    ({"unlabelled": "one.png"}, "is a file but not an .npz"),
    ({"unlabelled": "array.npz"}, "is a single array, not an npz archive"),
])
def test_bad_few_label_settings_are_one_line_errors(tmp_path, monkeypatch, kwargs, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "rgb_dir").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "rgb_dir" / "0.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "one.png")
    np.savez(tmp_path / "big.npz", x=np.zeros((2, 9, 9), dtype=np.uint8))
    np.savez(tmp_path / "rgb.npz", x=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "labels.npz", y=np.zeros(2, dtype=np.int64))
    with open(tmp_path / "array.npz", "wb") as f:  # a .npy under an .npz name
        np.save(f, np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(DistillError, match=expected) as e:
        load_data("digits", augment=False, **kwargs)
    assert "\n" not in str(e.value)


def test_digits_smallest_class_bounds_labelled_per_class():
    smallest = np.bincount(load_data("digits", augment=False).train.targets.numpy()).min()
    load_data("digits", augment=False, labelled_per_class=int(smallest))
    with pytest.raises(DistillError, match=f"expected at most {smallest}"):
        load_data("digits", augment=False, labelled_per_class=int(smallest) + 1)


# ----------------------------------------------------------------------------- masked cross-entropy

def test_cross_entropy_skips_unlabelled_samples_one_by_one():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    targets = torch.tensor([2, IGNORE_LABEL, 0, IGNORE_LABEL, IGNORE_LABEL, 3])
    labelled = targets != IGNORE_LABEL
    expected = F.cross_entropy(logits[labelled], targets[labelled])
    assert torch.allclose(labelled_cross_entropy(logits, targets), expected)
    none = labelled_cross_entropy(logits, torch.full((6,), IGNORE_LABEL))
    assert none.item() == 0 and torch.isfinite(none)


def test_the_distiller_and_supervised_apply_cross_entropy_to_the_labelled_samples_only():
    torch.manual_seed(0)
    teacher, student = nn.Linear(5, 3), nn.Linear(5, 3)
    x = torch.randn(8, 5)
    targets = torch.tensor([0, 1, IGNORE_LABEL, 2, IGNORE_LABEL, IGNORE_LABEL, 1, IGNORE_LABEL])
    keep = targets != IGNORE_LABEL
    with Distiller(teacher, student, [], (5,), ce_weight=0.5) as distiller:
        _, losses = distiller(x, targets)
    assert torch.allclose(losses["ce"], 0.5 * F.cross_entropy(student(x)[keep], targets[keep]))
    _, losses = Supervised(student)(x, targets)
    assert torch.allclose(losses["ce"], F.cross_entropy(student(x)[keep], targets[keep]))
    # an unlabelled sample's gradient comes from the distillation terms alone
    student.zero_grad()
    with Distiller(teacher, student, [], (5,), ce_weight=1.0) as distiller:
        _, losses = distiller(x[~keep], targets[~keep])
    losses["ce"].backward()
    assert student.weight.grad is None or not student.weight.grad.any()


def test_dkd_takes_the_teachers_class_for_an_unlabelled_sample():
    torch.manual_seed(0)
    teacher, student = nn.Linear(5, 3), nn.Linear(5, 3)
    x = torch.randn(6, 5)
    targets = torch.tensor([0, IGNORE_LABEL, 2, IGNORE_LABEL, 1, 1])
    with Distiller(teacher, student, [Term("dkd", DKDLoss())], (5,), ce_weight=0.0) as distiller:
        _, losses = distiller(x, targets)
    t = teacher(x).detach()
    filled = torch.where(targets == IGNORE_LABEL, t.argmax(1), targets)
    assert torch.allclose(losses["dkd"], DKDLoss()(student(x), t, filled))


def test_pseudo_label_loss_is_cross_entropy_with_the_teachers_top1_class():
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(PseudoLabelLoss()(s, t), F.cross_entropy(s, t.argmax(1)))


def test_train_accuracy_counts_the_labelled_samples_only(tmp_path):
    from distill import Schedule, fit
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).long()
    y[::2] = IGNORE_LABEL
    model = nn.Linear(3, 2)
    history = fit(Supervised(model), torch.utils.data.TensorDataset(x, y), Schedule(epochs=1, batch_size=40, lr=1e-12, weight_decay=0.0),
                  progress=False)
    predictions = model(x).argmax(1)
    labelled = y != IGNORE_LABEL
    assert history[0]["train_accuracy"] == pytest.approx((predictions[labelled] == y[labelled]).float().mean().item())


# ----------------------------------------------------------------------------- the pooled verdict

def masks(student_only: int, baseline_only: int, n: int = 450) -> tuple[torch.Tensor, torch.Tensor]:
    both = n - student_only - baseline_only
    s = torch.tensor([True] * both + [True] * student_only + [False] * baseline_only)
    b = torch.tensor([True] * both + [False] * student_only + [True] * baseline_only)
    return s, b


def test_the_pooled_gain_is_mcnemar_over_every_seeds_disagreements():
    gains = [paired_gain(*masks(20, 10)), paired_gain(*masks(14, 12)), paired_gain(*masks(18, 6))]
    pooled = pooled_paired_gain(gains)
    b, c, n = 52, 28, 3 * 450
    assert pooled["accuracy_points"] == pytest.approx(100 * (b - c) / n, abs=1e-3)
    assert pooled["accuracy_points"] == pytest.approx(np.mean([g["accuracy_points"] for g in gains]), abs=1e-3)
    assert pooled["noise_band_points"] == pytest.approx(100 * 1.96 * np.sqrt(b + c) / n, abs=1e-3)
    assert pooled["significant"] and "3 seeds" in pooled["test"]
    # no single seed is significant on its own: pooling is what gives the verdict its power
    assert not any(g["significant"] for g in gains[1:2])


def test_equally_good_models_over_three_seeds_cross_the_pooled_band_about_one_time_in_twenty():
    g = torch.Generator().manual_seed(0)
    trials, seeds, n = 1500, 3, 450
    hard = torch.rand(n, generator=g) < 0.15  # the same test images are hard in every seed
    false_alarms = 0
    for _ in range(trials):
        gains = []
        for _ in range(seeds):
            ok = lambda: ~hard | (torch.rand(n, generator=g) < 0.4)  # noqa: E731
            gains.append(paired_gain(ok(), ok()))
        false_alarms += pooled_paired_gain(gains)["significant"]
    assert 0.03 < false_alarms / trials < 0.07


# ----------------------------------------------------------------------------- runs

def test_a_few_label_run_trains_teacher_and_baseline_on_the_labels_and_the_students_on_every_image(
        tmp_path, monkeypatch, capsys):
    from distill import transfer
    from distill.phases import student
    seen = {}
    real_fit = student.fit

    def spy(module, data, *args, desc="", **kwargs):
        seen[desc] = [int(data[i][1]) for i in range(len(data))]
        return real_fit(module, data, *args, desc=desc, **kwargs)

    monkeypatch.setattr(student, "fit", spy)
    monkeypatch.setattr(transfer, "fit", spy)
    out = tmp_path / "r"
    code, text = cli(["run", "quickstart", "--out", str(out), "-q",
                      *sets(*TINY, "data.labelled_per_class=4", "baseline.pseudo_labels=true")], capsys)
    assert code == 0, text
    assert len(seen["teacher"]) == 40 and IGNORE_LABEL not in seen["teacher"]
    assert len(seen["student"]) == 1347 and seen["student"].count(IGNORE_LABEL) == 1307
    assert seen["pseudo"] == seen["student"]
    # the baseline: the 40 labelled images, cycled to as many samples (so steps) as the student's
    assert len(seen["baseline"]) == 1347 and IGNORE_LABEL not in seen["baseline"]
    assert sorted(set(seen["baseline"])) == list(range(10))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"] == 40 and metrics["data"]["unlabelled"] == 1307
    assert {"pseudo", "gain_over_pseudo_labels"} <= set(metrics)
    assert "soft targets over hard pseudo-labels" in (out / "report.html").read_text()
    assert "pseudo-lbl" in text and "over hard pseudo-labels" in text or "hard labels" in text


def test_seeds_run_every_phase_per_seed_and_pool_them_and_resume(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["run", "quickstart", "--out", str(out), "-q", "--seeds", "2", *sets(*TINY)]
    code, text = cli(args, capsys)
    assert code == 0, text
    assert "2 seeds (0, 1)" in text and "pooled paired (McNemar over 2 seeds)" in text
    pooled = json.loads((out / "metrics.json").read_text())
    per_seed = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert pooled["seeds"] == [0, 1] and pooled["runs"] == ["seed-0", "seed-1"]
    accuracies = [m["student"]["test_accuracy"] for m in per_seed]
    assert pooled["models"]["student"]["test_accuracy"] == accuracies
    assert pooled["models"]["student"]["mean"] == pytest.approx(np.mean(accuracies))
    assert pooled["models"]["student"]["sd"] == pytest.approx(np.std(accuracies, ddof=1))
    assert pooled["gain"]["per_seed"] == [m["gain"]["accuracy_points"] for m in per_seed]
    assert (out / "report.html").exists() and all((out / f"seed-{s}" / "report.html").exists() for s in (0, 1))
    assert pooled["gain"] == {**pooled_paired_gain([m["gain"] for m in per_seed]),
                              "per_seed": pooled["gain"]["per_seed"]}
    # interrupted during the second seed: --resume keeps the first and redoes what is missing
    first = (out / "seed-0" / "student.pt").stat().st_mtime_ns
    (out / "seed-1" / "baseline.pt").unlink()
    code, text = cli([*args, "--resume"], capsys)
    assert code == 0, text
    assert (out / "seed-0" / "student.pt").stat().st_mtime_ns == first
    assert (out / "seed-1" / "baseline.pt").exists()
    code, text = cli(args, capsys)
    assert code == 2 and "already holds a run" in text


def test_seeds_zero_is_refused_in_one_line(tmp_path, capsys):
    code, text = cli(["run", "quickstart", "--out", str(tmp_path / "r"), "--seeds", "0"], capsys)
    assert code == 2 and "--seeds" in text and len(text.strip().splitlines()) == 1
    code, text = cli(["run", "quickstart", "--out", str(tmp_path / "r"), "--set", "seeds=0"], capsys)
    assert code == 2 and "seeds: expected a positive integer" in text


def test_seeds_that_would_run_past_the_largest_seed_are_refused_in_one_line():
    from distill.recipe import find_recipe, load_recipe
    with pytest.raises(DistillError, match=r"seed \+ seeds") as e:
        load_recipe(find_recipe("quickstart"), ["seeds=2", f"seed={2 ** 31 - 1}"])
    assert "\n" not in str(e.value)


def test_the_size_line_says_the_student_is_larger_when_it_is():
    metrics = {"teacher": {"test_accuracy": 0.9, "params": 1000, "macs": 1_000_000},
               "student": {"test_accuracy": 0.8, "params": 2100, "macs": 7000}, "data": {"test": 10}}
    text = summary_table(metrics)
    assert "2.10x the teacher's parameters" in text and "smaller" not in text
    assert "142.9x fewer MACs than the teacher" in text


@pytest.mark.slow
def test_the_quickstart_shows_a_significant_gain_an_onnx_student_and_its_speed_up(tmp_path, capsys):
    """The README's first command, as a new user runs it: within its 120 s budget on 2 cores, a
    student of at least 0.90, a gain of at least 3 points beyond the paired noise band, a verified
    student.onnx and a bench of it against the teacher."""
    out = tmp_path / "quickstart"
    code, text = cli(["run", "quickstart", "--out", str(out), "-q"], capsys)
    assert code == 0, text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["wall_seconds"] < 120
    assert metrics["student"]["test_accuracy"] >= 0.90
    gain = metrics["gain"]
    assert gain["significant"] and gain["accuracy_points"] >= 3
    assert max(metrics["export"]["student"]["max_abs_diff"].values()) <= 1e-4 and (out / "student.onnx").exists()
    assert (out / "bench.json").exists() and metrics["bench"]["speedups"]["student.onnx"]["speedup"] > 1
    assert (out / "report.html").exists()
    assert "distillation gain over the baseline: +" in text and "significant" in text
    assert "student.onnx runs" in text and "fewer parameters than the teacher" in text


def test_resume_on_a_directory_without_a_run_is_refused_instead_of_starting_again(tmp_path, capsys):
    """A mistyped --out with --resume used to start a new run from nothing, silently."""
    for seeds in ("1", "2"):
        code, text = cli(["run", "quickstart", "--out", str(tmp_path / f"typo{seeds}"), "--resume", "-q",
                          "--seeds", seeds, *sets(*TINY)], capsys)
        assert code == 2 and "holds no run to continue" in text and len(text.strip().splitlines()) == 1


def test_a_pooled_summary_says_when_seeds_are_missing_or_trained_different_students():
    def seed(params: int, points: float) -> dict:
        return {"data": {"test": 100}, "student": {"test_accuracy": 0.9, "params": params, "macs": params},
                "gain": {**paired_gain(*masks(int(points) + 5, 5, n=100))},
                "bench": {"speedups": {"student.onnx": {"speedup": 5.0}}}}
    from distill.seeds import pool_seeds
    pooled = pool_seeds("r", {0: seed(100, 4), 1: seed(120, 2)}, planned=3)
    text = summary_table(pooled)
    assert "only 2 of 3 seeds have finished" in text and "--resume" in text
    assert "the student differs between seeds (parameters [100, 120])" in text
    assert "student.onnx runs 5.0x, 5.0x as fast as the teacher" in text


def test_too_few_images_of_a_kept_class_are_named_by_the_class_not_its_new_label():
    """With classes=[other, smallest], label 1 is the smallest digit: the error names that digit."""
    counts = np.bincount(load_data("digits", augment=False).train.targets.numpy())
    smallest, other = int(counts.argmin()), int(counts.argmax())
    with pytest.raises(DistillError, match=f"class '{smallest}' has only {counts[smallest]} training"):
        load_data("digits", augment=False, classes=[other, smallest], labelled_per_class=int(counts[smallest]) + 1)
