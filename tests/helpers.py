"""Helpers shared by the test files: the CLI run in-process, a tiny recipe, a tiny image folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from distill.cli import main


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stdout + stderr). Any other exception fails the test."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def counted_over(accuracy: float, n: int) -> bool:
    """Whether `accuracy` is k/n for a whole number k of `n` images: what a real count over the
    test set gives (an average of batch accuracies, a constant or a loss would not)."""
    return 0 <= accuracy <= 1 and abs(accuracy * n - round(accuracy * n)) < 1e-6


def tiny_recipe(train_limit: int, test_limit: int, teacher_epochs: int, student_epochs: int) -> str:
    """A digits recipe small enough to run in seconds: CNN width 16 -> 4, KD + a stage3 hint."""
    return f"""
name = "tiny"
seed = 0
device = "cpu"
[data]
name = "digits"
augment = false
train_limit = {train_limit}
test_limit = {test_limit}
[teacher]
model = "small_cnn"
options = {{ width = 16 }}
epochs = {teacher_epochs}
batch_size = 32
[student]
model = "small_cnn"
options = {{ width = 4 }}
epochs = {student_epochs}
batch_size = 32
[[distill.terms]]
loss = "kd"
options = {{ temperature = 4.0 }}
[[distill.terms]]
loss = "hint"
weight = 0.5
student = "stage3"
teacher = "stage3"
"""


def image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """train/ and val/ folders of random PNGs whose class shows as one saturated colour channel."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                pixels[..., c] = 255  # a learnable colour cue
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
