"""Teacher-output cache: exact replay, keyed invalidation, reproducible augmented views, memory maps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, tiny_recipe
from torch.utils.data import Dataset, TensorDataset

from distill import Distiller, Schedule, Term, fit
from distill.cache import CachedTeacherDataset, TeacherCache, cache_key, describe_transform, draws_random_views
from distill.data import load_data
from distill.errors import DistillError
from distill.losses import HintLoss, KDLoss
from distill.models import build_model

SHAPE = (1, 8, 8)
ROOT = Path(__file__).resolve().parents[1]


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


def test_a_cache_that_would_not_fit_on_the_disk_is_refused_before_writing(tmp_path, monkeypatch):
    """Writing a memory map past a full disk kills the process with SIGBUS and no message; the
    cache's size is known after the first batch, so it is checked against the free space first."""
    import shutil
    from collections import namedtuple
    teacher, _ = models()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    with pytest.raises(DistillError, match=r"not enough free disk space .* needs .* but only"):
        TeacherCache.build(teacher, data(), ["logits", "stage2"], tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.npy"))


# One process's view of the cache of an augmented digits run: load the data, build the teacher,
# print the key (and, with a directory argument, build or reuse the cache there).
KEY_SCRIPT = """
import json, sys, torch
from distill.cache import TeacherCache, cache_key
from distill.data import load_data
from distill.models import build_model
bundle = load_data("digits", jitter=1, train_limit=40, test_limit=10)
torch.manual_seed(0)
teacher = build_model("small_cnn", 10, bundle.input_shape, width=4)
if len(sys.argv) > 1:
    cache = TeacherCache.build(teacher, bundle.train, ["logits"], sys.argv[1], progress=False)
    print(json.dumps({"key": cache.key, "reused": cache.reused}))
else:
    print(json.dumps({"key": cache_key(teacher, bundle.train, ["logits"])}))
"""


def augmented_digits():
    """The data and teacher of KEY_SCRIPT, in this process."""
    bundle = load_data("digits", jitter=1, train_limit=40, test_limit=10)
    torch.manual_seed(0)
    return bundle, build_model("small_cnn", 10, bundle.input_shape, width=4)


def in_processes(*argvs: list[str]) -> list[dict]:
    """KEY_SCRIPT's output in one fresh Python process per argv, run side by side, each with its
    own hash seed (and its own memory layout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", KEY_SCRIPT, *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "PYTHONHASHSEED": str(i + 1)})
             for i, argv in enumerate(argvs)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
    return [json.loads(out.splitlines()[-1]) for out, _ in outputs]


def test_processes_running_the_same_recipe_share_one_key_and_reuse_each_others_cache(tmp_path):
    """As --resume and DDP ranks do: the key must not depend on the process (repr() of a transform
    holds memory addresses), so the cache one process wrote is reused by the next, unchanged."""
    written, other = in_processes([str(tmp_path)], [])
    assert written["reused"] is False and written["key"] == other["key"]
    stamp = (tmp_path / "0.npy").stat().st_mtime_ns
    bundle, teacher = augmented_digits()
    assert "0x" not in describe_transform(bundle.train.transform)
    again = TeacherCache.build(teacher, bundle.train, ["logits"], tmp_path, progress=False)
    assert again.reused and again.key == written["key"] and (tmp_path / "0.npy").stat().st_mtime_ns == stamp
    with torch.no_grad():
        teacher.classifier.weight.add_(1.0)
    changed = TeacherCache.build(teacher, bundle.train, ["logits"], tmp_path, progress=False)
    assert not changed.reused and changed.key != written["key"]
    other_data = TeacherCache.build(teacher, data(40), ["logits"], tmp_path, progress=False)
    assert other_data.key != changed.key


def test_open_only_reads_a_complete_cache_with_the_same_key(tmp_path):
    """Ranks other than 0 open the cache rank 0 built; they never write, and a mismatch is an error."""
    teacher, _ = models()
    with pytest.raises(DistillError, match="holds no complete cache.*expected"):
        TeacherCache.open(tmp_path, "0" * 20)
    built = TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
    opened = TeacherCache.open(tmp_path, cache_key(teacher, data(), ["logits"]))
    assert opened.reused and opened.key == built.key
    torch.testing.assert_close(opened.row(0, 3), built.row(0, 3))
    with pytest.raises(DistillError, match=f"built for key {built.key}, this process computes 1234"):
        TeacherCache.open(tmp_path, "1234")


def _not_json(d: Path) -> None:
    (d / "meta.json").write_text("{not json")


def _wrong_types(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "views": "1", "shapes": None}))


def _a_list(d: Path) -> None:
    (d / "meta.json").write_text("[1, 2]")


def _truncated_array(d: Path) -> None:
    (d / "0.npy").write_bytes((d / "0.npy").read_bytes()[:40])


def _other_shape(d: Path) -> None:
    np.save(d / "0.npy", np.zeros((1, 5, 4), dtype=np.float16))


def _other_dtype(d: Path) -> None:
    np.save(d / "0.npy", np.zeros((1, 48, 4), dtype=np.float64))


def _missing_array(d: Path) -> None:
    (d / "0.npy").unlink()


@pytest.mark.parametrize("damage, file", [
    (_not_json, "meta.json"), (_wrong_types, "meta.json"), (_a_list, "meta.json"),
    (_truncated_array, "0.npy"), (_other_shape, "0.npy"), (_other_dtype, "0.npy"), (_missing_array, "0.npy"),
], ids=lambda v: getattr(v, "__name__", v).strip("_"))
def test_a_damaged_cache_is_rebuilt_with_a_one_line_note(tmp_path, capsys, damage, file):
    """A cache only costs time to rebuild, so a corrupt meta.json or array is rebuilt, never loaded
    into a traceback in the middle of training; opening it without building says which file."""
    teacher, _ = models()
    first = TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
    expected = first.row(0, 7)
    damage(tmp_path)
    with pytest.raises(DistillError, match=f"{file}.*expected"):
        TeacherCache.open(tmp_path, first.key)
    capsys.readouterr()
    rebuilt = TeacherCache.build(teacher, data(), ["logits"], tmp_path, progress=False)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: teacher cache") and file in notes[0], notes
    assert "rebuilding" in notes[0] and not rebuilt.reused
    torch.testing.assert_close(rebuilt.row(0, 7), expected)
    assert json.loads((tmp_path / "meta.json").read_text())["complete"] is True


def test_only_augmented_data_counts_as_drawing_random_views():
    bundle = load_data("digits", jitter=1, train_limit=20, test_limit=10)
    assert draws_random_views(bundle.train) and not draws_random_views(bundle.train_plain)


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


def test_a_run_records_its_cache_key_and_reuse_and_warns_once_about_one_frozen_view(tmp_path, capsys):
    """metrics.json says which cache a run used and whether it was reused; with augmentation and
    one view the run says once that each image keeps one frozen view."""
    recipe, out = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(tiny_recipe(60, 30, 1, 1))
    argv = ["run", str(recipe), "--out", str(out), "-q", "--set", "distill.cache=true",
            "--set", "data.augment=true", "--set", "data.jitter=1"]
    code, output = cli(argv, capsys)
    assert code == 0, output
    first = json.loads((out / "metrics.json").read_text())["teacher_cache"]
    assert first["reused"] is False and len(first["key"]) == 20
    assert output.count("warning:") == 1 and "one frozen augmented view" in output

    (out / "student.pt").unlink()  # as if killed while distilling the student
    code, output = cli([*argv, "--resume"], capsys)
    assert code == 0, output
    again = json.loads((out / "metrics.json").read_text())["teacher_cache"]
    assert again["reused"] is True and again["key"] == first["key"]


def test_an_image_edited_anywhere_in_in_memory_data_changes_the_key(tmp_path):
    """Not only the few samples the key looks at: every image and label of an array data set counts
    (RGB images, stored channels-last in an .npz, included)."""
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 10, (3, 8, 8), width=4)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x_train=rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(200) % 10, x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
             y_test=np.arange(10))
    bundle = load_data("npz", path=tmp_path / "rgb.npz")
    before = cache_key(teacher, bundle.train, ["logits"])
    bundle.train.source.images[int(bundle.train.indices[37]), 0, 3, 3] += 1
    edited = cache_key(teacher, bundle.train, ["logits"])
    bundle.train.targets[50] = (bundle.train.targets[50] + 1) % 10
    relabelled = cache_key(teacher, bundle.train, ["logits"])
    assert len({before, edited, relabelled}) == 3
