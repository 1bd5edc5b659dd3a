"""The in-memory data path: whole batches sliced from one tensor and augmented per image in one go.

It must give the images the per-sample path gives (same distribution of shifts and flips, the
same pixels for the same draws), be reproducible from the seed, keep the teacher cache's views
exact, and leave image folders and `in_memory=False` on the DataLoader path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill import Distiller, Schedule, Term, fit
from distill.cache import CachedTeacherDataset, TeacherCache
from distill.data import ImageDataset, load_data
from distill.data.batched import Draw, IndexBatches, batchable, gather, sample_keys
from distill.data.sources import TensorSource
from distill.data.transforms import Pipeline, tensor_pipeline
from distill.data.unlabelled import RepeatedDataset
from distill.distiller import SAMPLE_INDEX, IndexedDataset
from distill.losses import KDLoss
from distill.models import build_model
from distill.settings import Speed
from distill.train import make_loader

SIDE, PAD = 9, 2


def dot_images(n: int) -> TensorSource:
    """n grey images, each black but for one white pixel in the centre: its position after a shift
    tells the shift, and a left-right flip moves the grey pixel to its right onto its left."""
    x = torch.zeros(n, 1, SIDE, SIDE, dtype=torch.uint8)
    x[:, 0, SIDE // 2, SIDE // 2] = 255
    x[:, 0, SIDE // 2, SIDE // 2 + 1] = 128  # marks left from right
    return TensorSource(x, np.zeros(n, dtype=np.int64))


def augmented(n: int, flip: bool = True) -> ImageDataset:
    pipeline = tensor_pipeline(255.0, 1, [0.0], [1.0], pad=PAD, flip=flip)
    return ImageDataset(dot_images(n), np.arange(n), np.zeros(n, dtype=np.int64), pipeline)


def shifts_and_flips(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row offset, column offset, flipped) of each dot image, read back from where its dot went."""
    flat = images[:, 0].reshape(len(images), -1)
    white = flat.argmax(1)
    rows, cols = white // SIDE, white % SIDE
    grey_col = (flat == 128 / 255).float().argmax(1) % SIDE
    flipped = (grey_col < cols).numpy()
    # RandomShift cuts at (i, j) from the padded image: the dot moves by (PAD - i, PAD - j)
    return (PAD - (rows - SIDE // 2)).numpy(), (PAD - (cols - SIDE // 2)).numpy(), flipped


def uniform_p_value(counts: np.ndarray) -> float:
    """Pearson's chi-square test of `counts` against equal frequencies: the p-value."""
    expected = counts.sum() / len(counts)
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((len(counts) - 1) / 2), torch.tensor(statistic / 2)))


def per_sample_batch(data: ImageDataset, n: int) -> torch.Tensor:
    return torch.stack([data[i][0] for i in range(n)])


@pytest.mark.parametrize("path", ["per sample", "batched", "keyed views"])
def test_shifts_are_uniform_over_every_offset_and_half_the_images_flip(path):
    n = 4000
    data = augmented(n)
    torch.manual_seed(0)
    if path == "per sample":
        images = per_sample_batch(data, n)
    elif path == "batched":
        images, _ = gather(data, torch.arange(n))
    else:
        images, _ = gather(data, torch.arange(n), keys=sample_keys(7, torch.arange(n), view=3))
    i, j, flipped = shifts_and_flips(images)
    assert set(i) == set(j) == set(range(2 * PAD + 1))
    for offsets in (i, j, i * (2 * PAD + 1) + j):  # each axis uniform, and the two independent
        counts = np.bincount(offsets)
        assert uniform_p_value(counts) > 1e-3, counts
    assert abs(flipped.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    both = np.bincount(flipped * (2 * PAD + 1) + i)  # flips independent of the shift
    assert uniform_p_value(both) > 1e-3, both


def test_a_batch_is_exactly_the_images_the_per_sample_path_makes_from_the_same_draws():
    """With the draws fixed, the batched shift and flip are the per-sample crop of the padded image."""
    n = 64
    source = TensorSource(torch.randint(0, 256, (n, 3, SIDE, SIDE), dtype=torch.uint8), np.zeros(n, dtype=np.int64))
    pipeline = tensor_pipeline(255.0, 3, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4], pad=PAD, flip=True)
    data = ImageDataset(source, np.arange(n), np.zeros(n, dtype=np.int64), pipeline)
    keys = sample_keys(0, torch.arange(n), 0)
    images, _ = gather(data, torch.arange(n), keys=keys)
    offsets = Draw(n, torch.device("cpu"), keys).integers(2 * PAD + 1, 2)
    flips = Draw(n, torch.device("cpu"), keys)
    flips.integers(2 * PAD + 1, 2)
    flips = flips.integers(2)[:, 0]
    plain = tensor_pipeline(255.0, 3, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4])
    for k in range(n):
        padded = torch.nn.functional.pad(source.images[k].float() / 255, (PAD,) * 4)
        i, j = offsets[k].tolist()
        expected = padded[:, i:i + SIDE, j:j + SIDE]
        expected = plain.steps[-1](expected.flip(-1) if flips[k] else expected)
        assert torch.equal(images[k], expected), k


def test_unaugmented_batches_equal_the_per_sample_items_and_resizing_and_channels_apply_per_image():
    bundle = load_data("digits", train_limit=50, test_limit=20, channels=3, image_size=12)
    images, targets = gather(bundle.train_plain, torch.tensor([4, 0, 17]))
    for row, k in enumerate((4, 0, 17)):
        torch.testing.assert_close(images[row], bundle.train_plain[k][0], rtol=0, atol=1e-6)
        assert targets[row] == bundle.train_plain[k][1]
    assert images.shape == (3, 3, 12, 12)


def test_a_view_is_the_same_image_in_any_batch_and_different_views_differ():
    data = augmented(32)
    alone, _ = gather(data, torch.tensor([5]), keys=sample_keys(1, torch.tensor([5]), 2))
    among, _ = gather(data, torch.tensor([9, 5, 0]), keys=sample_keys(1, torch.tensor([9, 5, 0]), 2))
    assert torch.equal(alone[0], among[1])
    views = [gather(data, torch.arange(32), keys=sample_keys(1, torch.arange(32), v))[0] for v in range(2)]
    assert not torch.equal(views[0], views[1])


def test_training_augmentation_is_reproducible_from_the_seed_and_fresh_in_every_epoch():
    data = load_data("digits", jitter=2, train_limit=200, test_limit=20).train

    def images(seed: int, epochs: int = 1) -> list[torch.Tensor]:
        """The augmented images, in data order (no shuffling), of `epochs` epochs after seeding."""
        torch.manual_seed(seed)
        return [torch.cat([x for x, _ in make_loader(data, 64, shuffle=False)]) for _ in range(epochs)]

    assert torch.equal(images(0)[0], images(0)[0])
    assert not torch.equal(images(0)[0], images(1)[0]), "the seed decides the shifts"
    first, second = images(0, epochs=2)
    assert (first != second).flatten(1).any(1).float().mean() > 0.5, "each epoch draws new shifts"


def test_the_views_of_a_sample_are_drawn_independently_of_each_other():
    """Any two views' shifts agree as often as chance says (1 in 2p+1), whichever axes are compared."""
    n = 5000
    data = augmented(n, flip=False)
    shifts = [shifts_and_flips(gather(data, torch.arange(n), keys=sample_keys(0, torch.arange(n), v))[0])[:2]
              for v in range(4)]
    chance, sd = 1 / (2 * PAD + 1), np.sqrt(0.2 * 0.8 / n)
    for v in range(4):
        for w in range(v + 1, 4):
            for a in (0, 1):
                for b in (0, 1):
                    agree = (shifts[v][a] == shifts[w][b]).mean()
                    assert abs(agree - chance) < 5 * sd, (v, w, a, b, agree)


def test_the_in_memory_loader_gives_the_dataloaders_batches_in_the_same_order():
    data = load_data("digits", train_limit=130, test_limit=20).train_plain
    fast = make_loader(data, 32, shuffle=True, seed=3, epoch=2)
    slow = make_loader(data, 32, shuffle=True, seed=3, epoch=2, in_memory=False)
    assert isinstance(fast, IndexBatches) and isinstance(slow, DataLoader) and len(fast) == len(slow)
    for (a, y_a), (b, y_b) in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert torch.equal(y_a, y_b)


def test_wrappers_pass_whole_batches_through():
    data = load_data("digits", train_limit=40, test_limit=20).train_plain
    repeated = RepeatedDataset(data, 100)
    images, targets = gather(repeated, torch.tensor([95, 3]))
    assert torch.equal(images[0], gather(data, torch.tensor([95 % 40]))[0][0])
    images, targets, extra = gather(IndexedDataset(data), torch.tensor([7, 2]))
    assert extra[SAMPLE_INDEX].tolist() == [7, 2] and targets.tolist() == [data[7][1], data[2][1]]
    assert batchable(TensorDataset(torch.zeros(3, 2), torch.zeros(3)))


def test_image_folders_and_user_transforms_stay_on_the_dataloader_path(tmp_path):
    from helpers import image_folder
    folder = image_folder(tmp_path / "images")
    bundle = load_data("imagefolder", path=folder, image_size=16)
    assert not bundle.train.batchable
    assert isinstance(make_loader(bundle.train, 4, shuffle=True), DataLoader)
    custom = ImageDataset(dot_images(4), np.arange(4), np.zeros(4, dtype=np.int64), lambda x: x.float())
    assert not custom.batchable and isinstance(make_loader(custom, 2, shuffle=False), DataLoader)
    assert isinstance(augmented(4).transform, Pipeline) and augmented(4).batchable


def test_cached_views_are_exactly_the_images_the_student_trains_on(tmp_path):
    """Through fit's in-memory batches, every image's cached logits are the teacher's on that image."""
    bundle = load_data("digits", jitter=2, train_limit=96, test_limit=20)
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 10, bundle.input_shape, width=8).eval()
    cache = TeacherCache.build(teacher, bundle.train, ["logits"], tmp_path, views=2, seed=5, dtype="float32",
                               progress=False)
    cached = CachedTeacherDataset(bundle.train, cache)
    for epoch in (0, 1, 2):
        cached.set_epoch(epoch)
        for images, _, outputs in make_loader(cached, 32, shuffle=True, seed=0, epoch=epoch):
            with torch.no_grad():
                torch.testing.assert_close(outputs["logits"], teacher(images), rtol=1e-5, atol=1e-5)
    first, second = (gather(cached, torch.arange(8)) for _ in range(2))
    assert torch.equal(first[0], second[0]), "a view is replayed, not redrawn"


def test_fit_on_the_in_memory_path_learns_and_resumes_to_the_same_weights(tmp_path):
    bundle = load_data("digits", jitter=1, train_limit=300, test_limit=50)

    def train(epochs: int, resume: bool = False) -> torch.nn.Module:
        torch.manual_seed(0)
        teacher = build_model("small_cnn", 10, bundle.input_shape, width=8).eval()
        student = build_model("mlp", 10, bundle.input_shape, hidden=[32])
        d = Distiller(teacher, student, [Term("kd", KDLoss())], bundle.input_shape)
        schedule = Schedule(epochs=epochs, batch_size=32, lr=0.05, scheduler="constant")  # epoch 1 of 1 = of 3
        fit(d, bundle.train, schedule, seed=0, progress=False, resume_path=tmp_path / "resume.pt", resume=resume,
            speed=Speed(in_memory=True))
        return student

    whole = train(3)
    (tmp_path / "resume.pt").unlink()
    train(1)
    resumed = train(3, resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
