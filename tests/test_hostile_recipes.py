"""Hostile and unlucky recipes: every one is refused before any work, as one line naming the key.

Each case goes through `distill run FILE --set ...`, the path users take, and must end with exit
code 2 and a single `error: KEY...: expected ...` line, never a traceback, and never a run folder.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import cli, tiny_recipe

from distill.data.transforms import Normalize
from distill.errors import DistillError
from distill.recipe import load_recipe


@pytest.fixture
def recipe_file(tmp_path, monkeypatch) -> Path:
    """The tiny digits recipe, in an empty working directory (so runs/ would show up in it)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_recipe(60, 30, 1, 1))
    return path


def assert_refused(argv: list[str], capsys, *names: str) -> str:
    """Exit 2 with one `error:` line that names every one of `names` and what was expected."""
    code, out = cli(argv, capsys)
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Traceback" not in out and "expected" in lines[0], out
    for name in names:
        assert name in lines[0], out
    assert not Path("runs").exists(), "nothing may be written for a refused recipe"
    return lines[0]


@pytest.mark.parametrize("overrides, key", [
    (["teacher.momentum=-0.9"], "teacher.momentum"),
    (["student.weight_decay=-1e-4"], "student.weight_decay"),
    (["teacher.warmup_epochs=-1"], "teacher.warmup_epochs"),
    (["student.milestones=[-3, 5]"], "student.milestones"),
    (["teacher.backbone_lr_scale=nan"], "teacher.backbone_lr_scale"),
    (["prune.lr=nan"], "prune.lr"),
    (["prune.lr=-0.1"], "prune.lr"),
    (["prune.batch_size=0"], "prune.batch_size"),
    (["prune.hint_weight=-1"], "prune.hint_weight"),
    (["prune.importance=magnitud"], "prune.importance"),
    (["distill.ce_weight=nan"], "distill.ce_weight"),
    (["distill.terms.0.weight=inf"], "distill.terms.0.weight"),
    (["export.atol=nan"], "export.atol"),
    (["export.calibration_images=0"], "export.calibration_images"),
    (["bench.rounds=0"], "bench.rounds"),
    (["seed=-1"], "seed"),
    (["data.jitter=-2"], "data.jitter"),
    (["data.classes=[1, 1]"], "data.classes"),
    (["data.classes=[-1, 2]"], "data.classes"),
    (["data.classes=[]"], "data.classes"),
    (["teacher.options.width=0"], "teacher.options.width"),
    (["student.options.width=-3"], "student.options.width"),
    (["student.model=mlp", "student.options={hidden = [0]}"], "student.options.hidden"),
    (["student.model=mlp", "student.options={hidden = [-1]}"], "student.options.hidden"),
    (["student.model=mlp", "student.options={dropout = 1.5}"], "student.options.dropout"),
    (["teacher.model=resnet8x4", "teacher.options={widths = [32, 0, 128, 256]}"], "teacher.options.widths"),
    (["teacher.model=resnet8", "teacher.options={widths = [16, 16]}"], "teacher.options.widths"),
    (["teacher.model=wrn_16_2", "teacher.options={widen_factor = 0}"], "teacher.options.widen_factor"),
    (["student.model=mobilenetv2", "student.options={width_mult = -0.5}"], "student.options.width_mult"),
    (["student.model=shufflenetv2", "student.options={stage_channels = [0, 2, 4, 8]}"],
     "student.options.stage_channels"),
    (["data.std=[0.0]"], "data.std"),
    (["data.std=[nan]"], "data.std"),
    (["data.std=[-0.3]"], "data.std"),
    (["data.mean=[inf]"], "data.mean"),
    (["data.mean=[0.1, 0.2]"], "data.mean"),
    (["data.channels=1", "data.std=[0.2, 0.2, 0.2]"], "data.std"),
    (["seed=9223372036854775807"], "seed"),
    (["student.epochs=4294967296"], "student.epochs"),
    (["teacher.lr=1e300"], "teacher.lr"),
    (["distill.terms.0.weight=1e39"], "distill.terms.0.weight"),
    (["teacher.options={width = 8, num_classes = 5}"], "teacher.options.num_classes"),
    (["teacher.model=resnet18", "teacher.options={input_shape = [3, 8, 8]}"], "teacher.options.input_shape"),
    (["student.options={width = 4, weights = 'DEFAULT'}"], "student.options.weights"),
    (["teacher.model=resnet18", "teacher.options={zero_init_residual = 1979-05-27}"],
     "teacher.options.zero_init_residual"),
    (["distill.terms.0.options={temperature = 07:32:00}"], "distill.terms.0.options.temperature"),
    (["data.image_size=100000"], "data.image_size"),
    (["data.jitter=5000"], "data.jitter"),
    (["data.num_workers=10000"], "data.num_workers"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_values_that_make_no_sense_are_refused(recipe_file, capsys, overrides, key):
    argv = ["run", str(recipe_file)]
    for item in overrides:
        argv += ["--set", item]
    line = assert_refused(argv, capsys, f"{key}: expected")
    assert line.startswith(f"error: {key}: expected"), line


@pytest.mark.parametrize("item, names", [
    ("name.x=1", ["name", "string"]),                     # the recipe file sets name = "tiny"
    ("seed.x=1", ["seed", "integer"]),
    ("distill.terms.0.weight.x=1", ["distill.terms.0.weight", "number"]),
    ("student.options.width.x=1", ["student.options.width", "integer"]),
    ("distill.terms.0.student.x.y=1", ["distill.terms.0.student"]),
    ("distill.terms.x.weight=1", ["distill.terms.x", "index 0..1"]),
    ("distill.terms.-1.weight=1", ["distill.terms.-1", "index 0..1"]),
    ("distill.terms.\u00b2.weight=1", ["distill.terms.\u00b2", "index 0..1"]),  # a digit, to str.isdigit
    ("distill.terms.\u0661.weight=1", ["distill.terms.\u0661", "index 0..1"]),  # Arabic-Indic one
    ("distill.terms.2.weight=1", ["distill.terms.2", "index 0..1"]),
    ("student.milestones.0=3", ["student.milestones", "empty list"]),
    ("name=\udcff", ["--set", "UTF-8"]),                  # an undecodable byte on the command line
])
def test_set_overrides_that_cannot_apply(recipe_file, capsys, item, names):
    assert_refused(["run", str(recipe_file), "--set", item], capsys, *names)


NAME = 'name = "tiny"'


ESCAPES = [  # (text of the tiny recipe, what replaces it, the key the error must name)
    (NAME, 'name = "../escaped"', "name"),
    (NAME, 'name = "../../etc"', "name"),
    (NAME, 'name = "nested/run"', "name"),
    (NAME, 'name = "/tmp/absolute"', "name"),
    (NAME, 'name = "..\\\\escaped"', "name"),
    (NAME, 'name = "C:escaped"', "name"),
    (NAME, 'name = ".."', "name"),
    (NAME, 'name = "."', "name"),
    (NAME, 'name = ""', "name"),
    (NAME, 'name = "a\\u0000b"', "name"),
    (NAME, NAME + '\nout = "runs/a\\u0000b"', "out"),
    ("[teacher]", '[teacher]\ncheckpoint = "t\\u0000.pt"', "teacher.checkpoint"),
    ("[data]", '[data]\npath = "x\\u0000y"', "data.path"),
]


@pytest.mark.parametrize("old, new, key", ESCAPES, ids=[new.split("\n")[-1] for _, new, _ in ESCAPES])
def test_run_names_that_escape_runs(tmp_path, monkeypatch, capsys, old, new, key):
    """`name` becomes runs/<name>, so it must be one plain folder name; no path may hold a NUL
    (`out` itself may point anywhere: where a run goes is the user's choice)."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(60, 30, 1, 1).replace(old, new, 1))
    assert_refused(["run", str(recipe)], capsys, f"{key}: expected")
    assert [p.name for p in tmp_path.iterdir()] == ["r.toml"]


def _latin1(path: Path) -> Path:
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    return path


def _utf16(path: Path) -> Path:
    path.write_text('name = "tiny"\n', encoding="utf-16")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _unreadable(path: Path, monkeypatch) -> Path:
    """A file reading which fails with EACCES (chmod 000 alone does not stop root)."""
    path.write_text('name = "tiny"\n')
    path.chmod(0)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return path


@pytest.mark.parametrize("make, words", [
    (_latin1, ["not UTF-8 text", "byte 11"]),
    (_utf16, ["not UTF-8 text", "UTF-16"]),
    (_folder, ["is a directory"]),
    (_unreadable, ["cannot read", "Permission denied"]),
], ids=["latin-1", "utf-16", "a-directory", "permission-denied"])
def test_recipe_file_encodings(tmp_path, monkeypatch, capsys, make, words):
    """A recipe that cannot be read as UTF-8 text says why, not "not valid TOML"."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.toml"
    path = make(path, monkeypatch) if make is _unreadable else make(path)
    line = assert_refused(["run", str(path)], capsys, str(path), *words)
    assert "not valid TOML" not in line


def test_a_byte_order_mark_is_read_as_windows_editors_write_it(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_text('name = "caf\u00e9"\n[student]\nepochs = 2\n', encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    recipe = load_recipe(path)
    assert recipe.name == "caf\u00e9" and recipe.student.epochs == 2


@pytest.mark.parametrize("mean, std", [
    ((0.5,), (0.0,)), ((0.5,), (math.nan,)), ((0.5,), (-0.2,)), ((math.inf,), (0.3,)), ((0.5,), (1e-300,)),
    ((0.5, 0.5), (0.3,)), ((), ()), (("0.5",), (0.3,)),
])
def test_normalisation_that_would_turn_images_into_nan_or_inf_is_refused(mean, std):
    """Model cards read from checkpoint files carry mean/std too, not only recipes: every
    pipeline checks them, so a zero, tiny or NaN std never divides an image."""
    with pytest.raises(DistillError, match=r"^(mean|std)=.*: expected"):
        Normalize(mean, std)
