"""Specification of distill.data: what load_data returns, how it splits, and how it fails."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill import data as distill_data
from distill.data import DATASETS, DataBundle, load_data
from distill.errors import DistillError


def stack(dataset, n=None):
    n = len(dataset) if n is None else n
    xs, ys = zip(*(dataset[i] for i in range(n)))
    return torch.stack(xs), torch.tensor(ys)


def positions(dataset) -> set[int]:
    return set(dataset.indices.tolist())


def write_keras_npz(path: Path, n_train=40, n_test=20, shape=(32, 32, 3), classes=4, seed=0,
                    **override):
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              "y_train": np.arange(n_train, dtype=np.uint8) % classes,
              "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
              "y_test": np.arange(n_test, dtype=np.uint8) % classes}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


# --- digits -------------------------------------------------------------------------------------

def test_digits_has_fixed_stratified_1347_450_split_whatever_the_seed():
    a, b = load_data("digits", seed=0), load_data("digits", seed=7)
    assert isinstance(a, DataBundle) and "digits" in DATASETS
    assert (len(a.train), len(a.test), a.val) == (1347, 450, None)
    assert a.num_classes == 10 and a.input_shape == (1, 8, 8) and a.class_names[3] == "3"
    assert torch.equal(a.test.indices, b.test.indices)
    assert torch.equal(a.train.indices, b.train.indices)
    counts = a.test.targets.bincount()
    assert counts.min() >= 43 and counts.max() <= 46  # 45 per class, up to rounding
    assert stack(a.test)[0].shape == (450, 1, 8, 8)


def test_digits_pixels_scale_from_0_16_to_0_1_then_normalise_with_training_statistics():
    from sklearn.datasets import load_digits
    b = load_data("digits")
    pixels = b.train.source.images.float() / 16
    assert b.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-4)
    assert b.std[0] == pytest.approx(pixels.std().item(), abs=1e-3)
    x, y = b.train_plain[5]
    i = int(b.train_plain.indices[5])
    raw = torch.from_numpy(b.train.source.images[i].numpy().astype(np.float32)) / 16
    assert torch.allclose(x, (raw - b.mean[0]) / b.std[0], atol=1e-6)
    assert any((load_digits().images == b.train.source.images[i, 0].numpy()).all((1, 2)))
    assert y == int(b.train.source.labels[i])


# --- named datasets from the data root ----------------------------------------------------------

def test_mnist_loads_60000_10000_with_standard_normalisation(data_root):
    b = load_data("mnist", root=data_root)
    assert (len(b.train), len(b.test), b.num_classes, b.input_shape) == (60000, 10000, 10, (1, 28, 28))
    assert (b.mean, b.std) == ((0.1307,), (0.3081,))
    train = b.train.source.images.float() / 255
    assert train.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert train.std().item() == pytest.approx(0.3081, abs=1e-4)
    with np.load(data_root / "mnist.npz") as f:
        raw, labels = f["x_test"][123], f["y_test"][123]
    x, y = b.test[123]
    assert y == labels
    assert torch.allclose(x[0], (torch.from_numpy(raw) / 255 - 0.1307) / 0.3081, atol=1e-6)


def test_mnist_is_found_through_DISTILL_DATA(data_root, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA", str(data_root))
    assert distill_data.data_root() == data_root
    assert len(load_data("mnist", test_limit=100).test) == 100


def test_data_root_prefers_argument_then_env_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "env"))
    assert distill_data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert distill_data.data_root() == tmp_path / "env"
    monkeypatch.delenv("DISTILL_DATA")
    assert distill_data.data_root() == Path.home() / ".cache" / "distill" / "data"


def test_missing_dataset_error_names_the_expected_file_and_folder(tmp_path):
    with pytest.raises(DistillError) as e:
        load_data("mnist", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "mnist.npz") in msg and str(tmp_path / "mnist") in msg
    assert "x_train" in msg and "DISTILL_DATA" in msg and "\n" not in msg


def test_named_dataset_falls_back_to_torchvision_files(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(name, a):
        header = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
        (raw / name).write_bytes(header + a.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    idx("train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    idx("train-labels-idx1-ubyte", np.arange(30) % 10)
    idx("t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28)))
    idx("t10k-labels-idx1-ubyte", np.arange(10))
    b = load_data("mnist", root=tmp_path)
    assert (len(b.train), len(b.test), b.input_shape) == (30, 10, (1, 28, 28))
    assert b.test.targets.tolist() == list(range(10))


def test_cifar10_npz_is_read_channels_last_and_augmented_only_for_training(tmp_path):
    arrays = write_keras_npz(tmp_path / "cifar10.npz", classes=10)
    b = load_data("cifar10", root=tmp_path, val_fraction=0.25)
    assert b.input_shape == (3, 32, 32) and b.class_names[0] == "airplane"
    expected = (torch.from_numpy(arrays["x_test"][3]).permute(2, 0, 1) / 255
                - torch.tensor(b.mean)[:, None, None]) / torch.tensor(b.std)[:, None, None]
    assert torch.allclose(b.test[3][0], expected, atol=1e-5)
    torch.manual_seed(0)
    for split in (b.test, b.val, b.train_plain):  # deterministic: same tensor every time
        assert torch.equal(split[0][0], split[0][0])
    first = b.train[0][0]
    assert any(not torch.equal(first, b.train[0][0]) for _ in range(10))  # random crop / flip
    assert torch.equal(b.train_plain.indices, b.train.indices)


# --- npz validation -----------------------------------------------------------------------------

def test_npz_loads_grey_or_colour_with_statistics_from_training_images(tmp_path):
    arrays = write_keras_npz(tmp_path / "d.npz", shape=(6, 5), classes=3, y_train=(np.arange(40) % 3)[:, None])
    b = load_data("npz", path=tmp_path / "d.npz")
    assert b.input_shape == (1, 6, 5) and b.num_classes == 3 and b.class_names == ["0", "1", "2"]
    assert b.mean[0] == pytest.approx(arrays["x_train"].mean() / 255, abs=1e-4)
    assert b.std[0] == pytest.approx(arrays["x_train"].std() / 255, abs=1e-4)


@pytest.mark.parametrize("override, expected", [
    ({"y_test": None, "x_test": None}, "lacks x_test, y_test"),
    ({"y_train": np.zeros(39, np.uint8)}, "40 images but y_train has 39 labels"),
    ({"x_train": np.zeros((40, 32, 32, 3), np.float32)}, "dtype float32; expected uint8"),
    ({"x_train": np.zeros((40, 32), np.uint8)}, "shape (40, 32); expected (N, H, W)"),
    ({"y_test": np.full(20, 0.5)}, "expected non-negative integer labels"),
    ({"x_test": np.zeros((20, 16, 16, 3), np.uint8)}, "expected the same shape"),
    ({"y_test": np.full(20, 10 ** 9, np.int64)}, "label 1000000000 found among 40 training images"),
    ({"y_train": np.arange(40, dtype=np.int64) * 7}, "label 273 found among 40 training images"),
    # classes the model could never learn: counted in the test accuracy, silently always wrong
    ({"y_test": np.full(20, 5, np.uint8)}, "no training image has label 4, 5 (2 of the 6 classes 0..5); expected"),
    ({"y_train": np.arange(40, dtype=np.uint8) % 4 * 2}, "no training image has label 1, 3, 5 (3 of the 7 classes"),
])
def test_malformed_npz_is_a_distill_error_saying_what_was_expected(tmp_path, override, expected):
    write_keras_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(DistillError, match="bad.npz") as e:
        load_data("npz", path=tmp_path / "bad.npz")
    assert expected in str(e.value)


def test_truncated_npz_is_a_distill_error(tmp_path):
    write_keras_npz(tmp_path / "cut.npz")
    data = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DistillError, match="truncated or corrupt"):
        load_data("npz", path=tmp_path / "cut.npz")
    with pytest.raises(DistillError, match="not found"):
        load_data("npz", path=tmp_path / "absent.npz")


def test_every_named_dataset_has_names_and_statistics_for_its_classes_and_channels():
    from distill.data.arrays import NAMED
    assert set(NAMED) == set(DATASETS) - {"digits", "npz", "imagefolder", "fake"}
    assert {n: len(v[1]) for n, v in NAMED.items()} == {
        "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
    assert all(len(v[2]) == len(v[3]) == (1 if "mnist" in n else 3) for n, v in NAMED.items())


def test_named_npz_with_too_many_labels_is_rejected(tmp_path):
    write_keras_npz(tmp_path / "mnist.npz", shape=(28, 28), classes=12)
    with pytest.raises(DistillError, match="label 11 found; expected labels 0..9"):
        load_data("mnist", root=tmp_path)


# --- image folders ------------------------------------------------------------------------------

def make_folder(root: Path, classes=("cat", "dog"), test="val", n=3) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", n), (test, 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


def test_imagefolder_loads_class_folders_with_imagenet_preprocessing(tmp_path):
    b = load_data("imagefolder", path=make_folder(tmp_path), image_size=16)
    assert (len(b.train), len(b.test), b.class_names, b.num_classes) == (6, 4, ["cat", "dog"], 2)
    assert b.input_shape == (3, 16, 16) and b.mean == (0.485, 0.456, 0.406)
    assert b.train[0][0].shape == b.test[3][0].shape == (3, 16, 16) and b.test[3][1] == 1
    assert torch.equal(b.test[0][0], b.test[0][0])
    assert torch.equal(b.train_plain[0][0], b.train_plain[0][0])
    grey = load_data("imagefolder", path=tmp_path, image_size=8, channels=1, val_fraction=0.5)
    assert grey.train[0][0].shape == (1, 8, 8) and len(grey.val) == len(grey.train) == 3


def test_imagefolder_accepts_test_instead_of_val(tmp_path):
    b = load_data("imagefolder", path=make_folder(tmp_path, test="test"), image_size=8)
    assert len(b.test) == 4


@pytest.mark.parametrize("damage, expected", [
    (lambda root: None, "no images found"),
    (lambda root: (root / "train" / "cat").mkdir(parents=True), "no images found"),
    (lambda root: make_folder(root).joinpath("val", "cat").rename(root / "val" / "cow"),
     r"only in train \['cat'\], only in val \['cow'\]"),
])
def test_broken_imagefolder_is_a_distill_error(tmp_path, damage, expected):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    damage(tmp_path)
    with pytest.raises(DistillError, match=expected):
        load_data("imagefolder", path=tmp_path)


def test_imagefolder_without_val_or_test_folder_is_an_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DistillError, match="no val/ subfolder"):
        load_data("imagefolder", path=tmp_path)
    with pytest.raises(DistillError, match="not found"):
        load_data("imagefolder", path=tmp_path / "nowhere")


# --- selection and splits -----------------------------------------------------------------------

def test_val_split_is_disjoint_stratified_and_seeded():
    b = load_data("digits", val_fraction=0.2, seed=1)
    full = load_data("digits")
    assert positions(b.train).isdisjoint(positions(b.val))
    assert positions(b.train) | positions(b.val) == positions(full.train)
    assert len(b.val) == round(0.2 * 1347)
    share = b.val.targets.bincount().float() / len(b.val)
    assert torch.allclose(share, full.train.targets.bincount().float() / 1347, atol=0.01)
    assert torch.equal(b.val.indices, load_data("digits", val_fraction=0.2, seed=1).val.indices)
    assert not torch.equal(b.val.indices, load_data("digits", val_fraction=0.2, seed=2).val.indices)
    assert torch.all(b.val.indices[1:] > b.val.indices[:-1])  # data order kept


def test_classes_keep_only_those_labels_relabelled_in_the_given_order():
    b = load_data("digits", classes=[7, 2, 9])
    assert b.num_classes == 3 and b.class_names == ["7", "2", "9"]
    source_labels = torch.from_numpy(b.train.source.labels)[b.train.indices]
    assert torch.equal(torch.tensor([7, 2, 9])[b.train.targets], source_labels)
    full = load_data("digits").train.targets.bincount()
    assert set(b.test.targets.tolist()) == {0, 1, 2} and len(b.train) == full[[7, 2, 9]].sum()


def test_per_class_keeps_n_seeded_examples_of_each_class():
    upper = [5, 6, 7, 8, 9]
    a = load_data("digits", classes=upper, per_class=4, seed=0)
    assert a.train.targets.bincount().tolist() == [4] * 5
    assert len(a.test) == len(load_data("digits", classes=upper).test)  # test untouched
    assert torch.equal(a.train.indices, load_data("digits", classes=upper, per_class=4).train.indices)
    other = load_data("digits", classes=upper, per_class=4, seed=3)
    assert not torch.equal(a.train.indices, other.train.indices)


def test_limits_take_the_first_images_of_each_class():
    b = load_data("digits", train_limit=100, test_limit=20)
    assert b.train.targets.bincount().tolist() == [10] * 10 and len(b.test) == 20
    full = load_data("digits")
    first_zeros = full.train.indices[full.train.targets == 0][:10]
    assert torch.equal(b.train.indices[b.train.targets == 0], first_zeros)


def test_channels_and_image_size_convert_what_the_model_sees():
    b = load_data("digits", channels=3, image_size=32)
    x, _ = b.test[0]
    assert b.input_shape == x.shape == (3, 32, 32) and len(b.mean) == len(b.std) == 3
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert load_data("digits", mean=0.5, std=[0.25], channels=3).mean == (0.5, 0.5, 0.5)


def test_jitter_shifts_only_training_images():
    torch.manual_seed(0)
    plain = load_data("digits")
    assert torch.equal(plain.train[0][0], plain.train_plain[0][0])  # no augmentation by default
    b = load_data("digits", jitter=2)
    draws = [b.train[0][0] for _ in range(10)]
    assert any(not torch.equal(x, b.train_plain[0][0]) for x in draws)
    assert all(torch.equal(b.train_plain[0][0], plain.train_plain[0][0]) for _ in range(3))
    off = load_data("digits", jitter=2, augment=False)
    assert torch.equal(off.train[0][0], off.train_plain[0][0])


def test_fake_data_is_deterministic_and_shaped_as_asked():
    ask = dict(image_size=16, channels=1, num_classes=3, train_limit=30, test_limit=9)
    a = load_data("fake", **ask, seed=4)
    assert a.input_shape == (1, 16, 16) and a.num_classes == 3 and len(a.train) == 30
    assert a.test.targets.bincount().tolist() == [3, 3, 3]
    assert torch.equal(a.test[5][0], load_data("fake", **ask, seed=4).test[5][0])
    assert not torch.equal(a.test[5][0], load_data("fake", **ask, seed=5).test[5][0])


@pytest.mark.parametrize("kwargs, expected", [
    ({"name": "digit"}, "did you mean 'digits'"),
    ({"val_fraction": 1.0}, r"expected a fraction in \[0, 1\)"),
    ({"classes": [3, 10]}, "expected distinct labels from 0 to 9"),
    ({"channels": 2}, "expected 1 .grey. or 3 .RGB."),
    ({"train_limit": 0}, "expected a positive integer"),
    ({"num_classes": 5}, "has 10 classes, not num_classes=5"),
    ({"std": [0.1, 0.2]}, "expected 1 or 1 numbers"),
    ({"mean": "a"}, "expected 1 or 1 numbers"),
    ({"jitter": -1}, "expected a non-negative integer"),
    ({"seed": -1}, "expected a non-negative integer"),
    ({"name": "npz"}, "needs a path"),
])
def test_bad_arguments_are_distill_errors(kwargs, expected):
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(DistillError, match=expected):
        load_data(kwargs.pop("name"), **kwargs)
