"""Hostile and unlucky inputs, one table per class: outputs aimed at inputs, numbers that make no
sense, files from elsewhere (ONNX and images), unreadable files, and a full disk.

Every case ends in exit code 2 with exactly one line `error: ...` naming what was wrong and what
was expected, no traceback, and every input file byte for byte as it was.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import distill.export as export_module
from helpers import cli, image_folder, tiny_recipe
from distill.errors import DistillError
from distill.export import export_onnx
from distill.files import ensure_free_space
from distill.models import ModelCard, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FAST_BENCH = "--rounds 1 --round-time 0.01 --warmup 0 --throughput-batch 0 -q"
DIGITS = {"mean": (0.3051,), "std": (0.3761,)}


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def edit_onnx(source: Path, target: Path, card: dict | None, inputs: list | None = None,
              classes: int | None = None) -> None:
    """A copy of `source` with another metadata card (None: no distill metadata), input dims or class count."""
    proto = onnx.load(str(source))
    meta = {p.key: p.value for p in proto.metadata_props if card is not None or not p.key.startswith("distill.")}
    if card is not None:
        meta["distill.card"] = json.dumps(card)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, inputs or []):
        if value is not None:
            dim.dim_value = value
    if classes is not None:
        proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = classes
    onnx.save(proto, str(target))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Every input of the tables, made once; the tests check none of them ever changes."""
    f = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    card = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 4}, **DIGITS)
    model = card.build().eval()
    save_checkpoint(f / "s.pt", model, card)
    teacher = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 8}, **DIGITS)
    save_checkpoint(f / "t.pt", teacher.build(), teacher)
    diverged = card.build()
    with torch.no_grad():
        diverged.stage1[0].weight[0, 0, 0, 0] = float("nan")  # one weight: what a diverged run leaves
    save_checkpoint(f / "nan.pt", diverged, card)
    five = ModelCard("small_cnn", 5, (1, 8, 8), kwargs={"width": 4}, **DIGITS)
    save_checkpoint(f / "five.pt", five.build(), five)
    os.symlink("s.pt", f / "link.onnx")
    os.link(f / "s.pt", f / "hard.onnx")
    shutil.copy(f / "s.pt", f / "m.int8.onnx")  # a checkpoint named like the int8 output of `-o m.onnx`
    shutil.copy(f / "s.pt", f / "bench.json")  # a checkpoint named like a bench report
    shutil.copy(f / "s.pt", f / "locked.pt")
    x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 10
    np.savez(f / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    shutil.copy(f / "d.npz", f / "locked.npz")
    (f / "a_dir").mkdir()
    _onnx_files(f, model, card)
    _image_folders(f)
    return f


def _onnx_files(f: Path, model: torch.nn.Module, card: ModelCard) -> None:
    """One real export, and copies of it edited as files from elsewhere look."""
    export_onnx(model, card, f / "s.onnx")
    shutil.copy(f / "s.onnx", f / "locked.onnx")
    d = card.to_dict()
    edit_onnx(f / "s.onnx", f / "five_classes.onnx", {**d, "num_classes": 5}, classes=5)
    edit_onnx(f / "s.onnx", f / "foreign_five_classes.onnx", None, classes=5)
    edit_onnx(f / "s.onnx", f / "wider_input.onnx", {**d, "input_shape": [1, 16, 16]}, inputs=[None, 1, 16, 16])
    edit_onnx(f / "s.onnx", f / "fixed_batch.onnx", d, inputs=[1])
    edit_onnx(f / "s.onnx", f / "lying_card.onnx", {**d, "input_shape": [3, 32, 32]})
    edit_onnx(f / "s.onnx", f / "not_a_card.onnx", {"arch": "small_cnn", "layers": 3})
    proto = onnx.load(str(f / "s.onnx"))
    onnx.save_model(proto, str(f / "ext_missing.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext_missing.onnx.data", size_threshold=0)
    (f / "ext_missing.onnx.data").unlink()
    (f / "outside").mkdir()
    proto = onnx.load(str(f / "s.onnx"))  # the save above moved this copy's tensors out
    onnx.save_model(proto, str(f / "outside" / "ext_outside.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    shutil.move(f / "outside" / "weights.data", f / "weights.data")
    escaping = onnx.load(str(f / "outside" / "ext_outside.onnx"), load_external_data=False)
    for tensor in escaping.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.data"
    onnx.save(escaping, str(f / "outside" / "ext_outside.onnx"))


def _image_folders(f: Path) -> None:
    """Tiny image folders, each with one bad file in val/ (the split `--data` checks on)."""
    bad = {"bomb": png_header(100_000, 100_000), "bomb_warning": png_header(10_000, 10_000),
           "truncated": None, "not_an_image": b"GIF89a but not really", "empty_file": b""}
    for name, content in bad.items():
        root = image_folder(f / name, classes=2, per_class=2, size=16)
        victim = root / "val" / "class0" / "0.png"
        victim.write_bytes(content if content is not None else victim.read_bytes()[:70])
    pipe = image_folder(f / "pipe", classes=2, per_class=2, size=16) / "val" / "class0" / "0.png"
    pipe.unlink()
    os.mkfifo(pipe)  # named like an image; opening it would wait forever for a writer
    workers = image_folder(f / "bad_train", classes=2, per_class=4, size=16)
    victim = workers / "train" / "class1" / "2.png"
    victim.write_bytes(victim.read_bytes()[:70])
    images = ModelCard("small_cnn", 2, (3, 16, 16), kwargs={"width": 4})
    save_checkpoint(f / "images.pt", images.build(), images)
    recipe = tiny_recipe(train_limit=8, test_limit=4, teacher_epochs=1, student_epochs=1)
    (f / "workers.toml").write_text(recipe.replace('name = "digits"', f'name = "imagefolder"\npath = "{workers}"\n'
                                                   'image_size = 16\nnum_workers = 2'))


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file under `folder` (symlinks by target), to prove inputs were left alone."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            try:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:  # a file of the unreadable table
                out[str(p)] = f"unreadable, {p.stat().st_size} bytes, modified {p.stat().st_mtime_ns}"
    return out


def refused(command: str, files: Path, out: Path, capsys) -> str:
    """Run `command` and check the contract of the whole file: exit 2, one line, inputs unchanged."""
    before = snapshot(files)
    code, text = cli(shlex.split(command.format(F=files, O=out)), capsys)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text and "expected" in text, text
    assert snapshot(files) == before, "an input file changed"
    return lines[0]


# ---------------------------------------------------------------- outputs that would destroy inputs
OUTPUT_IS_INPUT = [
    ("export onto its checkpoint", "export {F}/s.pt -o {F}/s.pt", r"--output .*s\.pt is the input file"),
    ("export onto a symlink to the checkpoint", "export {F}/s.pt -o {F}/link.onnx", r"is the input file .*s\.pt"),
    ("export onto a hard link of the checkpoint", "export {F}/s.pt -o {F}/hard.onnx", r"is the input file"),
    ("export through ../ onto the checkpoint", "export {F}/s.pt -o {F}/a_dir/../s.pt", r"is the input file"),
    ("export's int8 output onto the checkpoint", "export {F}/m.int8.onnx -o {F}/m.onnx --int8",
     r"int8 output .*m\.int8\.onnx is the input file"),
    ("export onto its --data file", "export {F}/s.pt --data {F}/d.npz -o {F}/d.npz", r"is the input file .*d\.npz"),
    ("prune onto its checkpoint", "prune {F}/s.pt -o {F}/s.pt", r"--output .*s\.pt is the input file"),
    ("prune onto a hard link of its checkpoint", "prune {F}/s.pt -o {F}/hard.onnx", r"is the input file"),
    ("bench report onto a compared model",
     f"bench --teacher {{F}}/t.pt --student {{F}}/bench.json -o {{F}} {FAST_BENCH}",
     r"bench report .*bench\.json is the input file"),
    ("bench --out is a file", f"bench --teacher {{F}}/t.pt --student {{F}}/s.pt -o {{F}}/s.pt {FAST_BENCH}",
     r"is a file"),
    ("a run whose data file is named like its metrics",
     "run {O}/recipe.toml --out {O}/run -q --set data.name=npz --set data.path={O}/run/metrics.json",
     r"run file .*run/metrics\.json is the input file"),
    ("a run whose teacher.checkpoint is its student.pt",
     "run {O}/recipe.toml --out {O}/run -q --set teacher.checkpoint={O}/run/student.pt",
     r"run file .*run/student\.pt is the input file"),
]


@pytest.mark.parametrize("command, message", [c[1:] for c in OUTPUT_IS_INPUT], ids=[c[0] for c in OUTPUT_IS_INPUT])
def test_an_output_that_is_an_input_file_is_refused_and_the_input_kept(command, message, files, tmp_path, capsys):
    (tmp_path / "recipe.toml").write_text(tiny_recipe(train_limit=32, test_limit=16, teacher_epochs=1,
                                                      student_epochs=1))
    (tmp_path / "run").mkdir()  # a run directory holding the recipe's inputs under the names of its outputs
    shutil.copy(files / "d.npz", tmp_path / "run" / "metrics.json")
    shutil.copy(files / "t.pt", tmp_path / "run" / "student.pt")
    inputs = [tmp_path / "run" / "metrics.json", tmp_path / "run" / "student.pt"]
    before = [p.read_bytes() for p in inputs]
    assert re.search(message, refused(command, files, tmp_path, capsys))
    assert [p.read_bytes() for p in inputs] == before

# ---------------------------------------------------------------- numbers that make no sense
NONSENSE = [
    ("export --atol 0", "export {F}/s.pt -o {O}/m.onnx --atol 0", "--atol"),
    ("export --atol nan", "export {F}/s.pt -o {O}/m.onnx --atol nan", "--atol"),
    ("export --atol -1", "export {F}/s.pt -o {O}/m.onnx --atol -1", "--atol"),
    ("export --calibration 0", "export {F}/s.pt -o {O}/m.onnx --int8 --calibration 0", "--calibration"),
    ("export --max-samples -5", "export {F}/s.pt -o {O}/m.onnx --int8 --max-samples -5", "--max-samples"),
    ("export --opset 99", "export {F}/s.pt -o {O}/m.onnx --opset 99", "opset 99"),
    ("export --opset 16", "export {F}/s.pt -o {O}/m.onnx --opset 16", "opset 16"),
    ("bench --threads 0", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --threads 0", "--threads"),
    ("bench --threads -2", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --threads -2", "--threads"),
    ("bench --rounds 0", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --rounds 0", "--rounds"),
    ("bench --round-time 0", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --round-time 0", "--round-time"),
    ("bench --round-time inf", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --round-time inf", "--round-time"),
    ("bench --warmup -1", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --warmup -1", "--warmup"),
    ("bench --throughput-batch -4", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --throughput-batch -4",
     "--throughput-batch"),
    ("bench --throughput-batch 100000", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --throughput-batch 100000",
     "--throughput-batch"),
    ("bench --max-samples 0", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --max-samples 0", "--max-samples"),
    ("bench --atol nan", "bench --teacher {F}/t.pt --student {F}/s.pt -o {O} --atol nan", "--atol"),
    ("prune --batch 0", "prune {F}/s.pt -o {O}/p.pt --batch 0", "--batch"),
    ("prune --batch 10**9", "prune {F}/s.pt -o {O}/p.pt --importance taylor --batch 1000000000",
     r"--batch.*1000000000 is not in the range 1<=x<=4096"),  # one batch of random images: 256 GB
    ("prune --steps 0", "prune {F}/s.pt -o {O}/p.pt --steps 0", "steps"),
    ("prune --round-to -8", "prune {F}/s.pt -o {O}/p.pt --round-to -8", "round.to"),
    ("prune --macs nan", "prune {F}/s.pt -o {O}/p.pt --macs nan", r"macs: expected the fraction .* got nan"),
    ("prune --macs 1", "prune {F}/s.pt -o {O}/p.pt --macs 1", r"macs: expected the fraction .* got 1"),
]


@pytest.mark.parametrize("command, names", [c[1:] for c in NONSENSE], ids=[c[0] for c in NONSENSE])
def test_a_number_that_makes_no_sense_is_refused_before_any_work(command, names, files, tmp_path, capsys):
    assert re.search(names, refused(command, files, tmp_path, capsys))
    assert not list(tmp_path.iterdir()), "nothing is written"


# ---------------------------------------------------------------- models and images from elsewhere
BENCH_STUDENT = f"bench --teacher {{F}}/t.pt -o {{O}} {FAST_BENCH} --runtime ort --student "
ELSEWHERE = [
    ("ONNX without its external data file", BENCH_STUDENT + "{F}/ext_missing.onnx",
     r"needs its external data file ext_missing\.onnx\.data, which is missing"),
    ("ONNX whose external data lies outside its folder", BENCH_STUDENT + "{F}/outside/ext_outside.onnx",
     r"refers to external data '\.\./weights\.data' outside its folder"),
    ("ONNX taking other inputs than --data", BENCH_STUDENT + "{F}/wider_input.onnx --data digits",
     r"takes inputs of shape \(1, 16, 16\) but the test data gives \(1, 8, 8\)"),
    ("5-class ONNX scored on 10-class data", BENCH_STUDENT + "{F}/five_classes.onnx --data digits",
     r"predicts 5 classes but the test data has 10"),
    ("5-class foreign ONNX scored on 10-class data", BENCH_STUDENT + "{F}/foreign_five_classes.onnx --data digits",
     r"predicts 5 classes but the test data has 10"),
    ("5-class checkpoint scored on 10-class data", BENCH_STUDENT + "{F}/five.pt --data digits",
     r"five\.pt\) predicts 5 classes"),
    ("ONNX with a fixed batch size, timed at another", BENCH_STUDENT + "{F}/fixed_batch.onnx --throughput-batch 8",
     r"fixed_batch\.onnx has a fixed batch size of 1 but this benchmark runs batches of 1, 8"),
    ("ONNX with a fixed batch size, scored on data", BENCH_STUDENT + "{F}/fixed_batch.onnx --data digits",
     r"fixed batch size of 1 but this benchmark runs batches of 1, 64 \(accuracy\)"),
    ("ONNX metadata that lies about the input", BENCH_STUDENT + "{F}/lying_card.onnx",
     r"takes inputs \(1, 8, 8\) .* metadata says \(3, 32, 32\)"),
    ("ONNX metadata card that is no card", BENCH_STUDENT + "{F}/not_a_card.onnx",
     r"'distill\.card' .* not a model card"),
    ("decompression bomb PNG", "export {F}/images.pt --data {F}/bomb -o {O}/m.onnx",
     r"image .*bomb/val/class0/0\.png is too large to decode"),
    ("PNG just over PIL's pixel limit", "export {F}/images.pt --data {F}/bomb_warning -o {O}/m.onnx",
     r"image .*bomb_warning/val/class0/0\.png is too large to decode"),
    ("truncated PNG", "export {F}/images.pt --data {F}/truncated -o {O}/m.onnx", r"cannot read image .*0\.png"),
    ("not an image", "export {F}/images.pt --data {F}/not_an_image -o {O}/m.onnx", r"cannot read image .*0\.png"),
    ("empty image file", "export {F}/images.pt --data {F}/empty_file -o {O}/m.onnx", r"cannot read image .*0\.png"),
    ("a pipe named like an image", "export {F}/images.pt --data {F}/pipe -o {O}/m.onnx",
     r"pipe/val/class0/0\.png is not a regular file"),
    ("truncated PNG read in a DataLoader worker", "run {F}/workers.toml --out {O}/run -q",
     r"^error: cannot read image .*bad_train/train/class1/2\.png \(image file is truncated\)"),
]


@pytest.mark.parametrize("command, message", [c[1:] for c in ELSEWHERE], ids=[c[0] for c in ELSEWHERE])
def test_a_model_or_image_from_elsewhere_that_cannot_work_is_refused_in_one_line(command, message, files,
                                                                                  tmp_path, capsys):
    assert re.search(message, refused(command, files, tmp_path, capsys))


# ---------------------------------------------------------------- a model that diverged
NAN_WEIGHTS = r"checkpoint .*nan\.pt holds NaN or infinite weights; expected a trained model"
DIVERGED = [
    ("export", "export {F}/nan.pt -o {O}/m.onnx",  # not "raise --atol": no tolerance matches NaN
     r"PyTorch model's own logits on the random batch are NaN or infinite, so its export cannot be verified"),
    ("prune", "prune {F}/nan.pt -o {O}/p.pt --round-to 1", NAN_WEIGHTS),  # not "every layer at its limit"
    ("bench", f"bench --teacher {{F}}/t.pt --student {{F}}/nan.pt -o {{O}} {FAST_BENCH} --runtime eager --data digits",
     NAN_WEIGHTS),  # not an accuracy of NaN logits' argmax
]


@pytest.mark.parametrize("command, message", [c[1:] for c in DIVERGED], ids=[c[0] for c in DIVERGED])
def test_a_checkpoint_with_nan_weights_is_named_as_such(command, message, files, tmp_path, capsys):
    assert re.search(message, refused(command, files, tmp_path, capsys))
    assert not list(tmp_path.iterdir()), "nothing is written"


# ---------------------------------------------------------------- unreadable is not corrupt
UNREADABLE = [
    ("checkpoint is a directory", "run {O}/recipe.toml --out {O}/run -q --set teacher.checkpoint={F}/a_dir", None,
     r"checkpoint .*a_dir is a directory"),
    ("checkpoint without read permission", "export {F}/locked.pt -o {O}/m.onnx", "locked.pt",
     r"checkpoint .*locked\.pt cannot be opened: Permission denied"),
    ("ONNX file without read permission", BENCH_STUDENT + "{F}/locked.onnx", "locked.onnx",
     r"ONNX file .*locked\.onnx cannot be opened: Permission denied"),
    ("npz without read permission", "export {F}/s.pt --data {F}/locked.npz -o {O}/m.onnx", "locked.npz",
     r"npz file .*locked\.npz cannot be opened: Permission denied"),
]


@pytest.fixture
def no_permission(monkeypatch):
    """Make a file unreadable: chmod 000, and for root (who reads anyway) refuse it in open()."""
    made = []

    def lock(path: Path) -> None:
        path.chmod(0)
        made.append(path)
        if os.geteuid() == 0:
            real_open = io.open

            def open_(file, *args, **kwargs):
                if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == path.resolve():
                    raise PermissionError(errno.EACCES, "Permission denied", str(file))
                return real_open(file, *args, **kwargs)
            monkeypatch.setattr("builtins.open", open_)
    yield lock
    for path in made:
        path.chmod(0o644)


@pytest.mark.parametrize("command, locked, message", [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_an_unreadable_file_is_named_as_such_never_called_corrupt(command, locked, message, files, tmp_path,
                                                                  no_permission, capsys):
    (tmp_path / "recipe.toml").write_text(tiny_recipe(train_limit=32, test_limit=16, teacher_epochs=1,
                                                      student_epochs=1))
    if locked:
        no_permission(files / locked)
    line = refused(command, files, tmp_path, capsys)
    assert re.search(message, line)
    assert not re.search("corrupt|truncated|does not exist", line), line


# ---------------------------------------------------------------- a full disk
def torch_save_fills_the_disk(monkeypatch) -> None:
    def save(obj, f, *args, **kwargs):
        f.write(b"\0" * 1000)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", save)


def fsync_fills_the_disk(monkeypatch) -> None:  # delayed allocation: the error comes when flushing
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)


def onnx_save_fills_the_disk(monkeypatch) -> None:
    def save(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(onnx, "save", save)


SIZE = r"\(\d+(\.\d)? (bytes|kB|MB) to write\)"
FULL_DISK = [
    ("checkpoint write", "prune {F}/t.pt -o {O}/p.pt --macs 0.5 --round-to 1", torch_save_fills_the_disk,
     r"no space left on the disk to write .*p\.pt " + SIZE),
    ("checkpoint flush", "prune {F}/t.pt -o {O}/p.pt --macs 0.5 --round-to 1", fsync_fills_the_disk,
     r"no space left on the disk to write .*p\.pt " + SIZE),
    ("ONNX write", "export {F}/s.pt -o {O}/m.onnx", onnx_save_fills_the_disk,
     r"no space left on the disk to write .*m\.onnx"),
    ("bench report", f"bench --teacher {{F}}/t.pt --student {{F}}/s.pt -o {{O}} {FAST_BENCH} --runtime eager",
     fsync_fills_the_disk, r"no space left on the disk to write .*bench\.json " + SIZE),
]


@pytest.mark.parametrize("command, fill, message", [c[1:] for c in FULL_DISK], ids=[c[0] for c in FULL_DISK])
def test_a_full_disk_is_one_line_naming_file_and_size_and_leaves_no_partial_file(command, fill, message, files,
                                                                                 tmp_path, monkeypatch, capsys):
    fill(monkeypatch)
    assert re.search(message, refused(command, files, tmp_path, capsys))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "no partial or temporary file is left"


def test_free_space_is_checked_before_a_write_that_would_crash(tmp_path):
    """A memory map on a full disk dies of SIGBUS, so the cache checks free space first (naming bytes)."""
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(DistillError, match=r"not enough free disk space for .*cache/0\.npy: it needs .* but only "
                                           r".* are free there; expected at least"):
        ensure_free_space(tmp_path / "cache" / "0.npy", free + 10**12)
    ensure_free_space(tmp_path / "cache" / "0.npy", 1)  # fits: nothing raised, nothing created
    assert not (tmp_path / "cache").exists()


def test_export_reports_the_opset_written_in_the_file_not_the_one_asked_for(files, tmp_path, monkeypatch, capsys):
    """An exporter that writes another opset than asked (as torch's does for some) is reported as is."""
    real_export = export_module._export
    monkeypatch.setattr(export_module, "_export", lambda model, x, path, opset: real_export(model, x, path, 18))
    code, text = cli(["export", str(files / "s.pt"), "-o", str(tmp_path / "m.onnx"), "--opset", "17"], capsys)
    assert code == 0, text
    assert "opset 18 (17 was asked for" in text
    written = {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}
    assert written[""] == 18


def test_sixteen_bit_grey_images_keep_their_contrast(tmp_path):
    """PIL's convert("RGB") clips 16-bit pixels to 255: a 16-bit scan would train as a white page."""
    from PIL import Image
    from distill.data.sources import FolderSource
    ramp = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    pixels = FolderSource([(str(tmp_path / "scan.png"), 0)]).image(0)
    assert tuple(pixels.shape) == (3, 8, 8) and int(pixels.min()) == 0 and 200 < int(pixels.max()) <= 255
    assert len(pixels.unique()) > 32, "the ramp is flattened"


def test_written_files_get_the_usual_permissions_not_private_ones(tmp_path):
    """Atomic writes go through mkstemp, which creates 0600 files: a shared run directory's
    checkpoints would be unreadable to the rest of the team."""
    from distill.files import atomic_write_text
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_an_empty_recipe_or_out_is_refused(tmp_path, capsys):
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    code, text = cli(["run", str(tmp_path / "empty.toml")], capsys)
    assert code == 2 and "is empty; expected at least [data]" in text
    code, text = cli(["run", "quickstart", "--out", ""], capsys)
    assert code == 2 and "--out is empty" in text
