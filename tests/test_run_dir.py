"""A run directory belongs to one run: one process at a time holds it, only the run's own files are
reused, and a broken state file is one line naming the file and how to recover, never a traceback."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import distill.pipeline as pipeline
from helpers import cli, tiny_recipe
from distill import Schedule, Supervised, fit
from distill.cli import main
from distill.errors import DistillError
from distill.models import ModelCard, build_model, save_checkpoint
from distill.recipe import load_recipe
from distill.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = tiny_recipe(train_limit=64, test_limit=32, teacher_epochs=1, student_epochs=1)

HOLD_THE_LOCK = textwrap.dedent("""
    import sys, time
    from distill.rundir import RunDir
    with RunDir(sys.argv[1]).lock():
        print("holding", flush=True)
        time.sleep(120)
""")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run directory) of a tiny run that went to the end."""
    folder = tmp_path_factory.mktemp("finished")
    recipe = folder / "recipe.toml"
    recipe.write_text(RECIPE)
    try:
        main(["run", str(recipe), "--out", str(folder / "run"), "-q", "--device", "cpu"])
    except SystemExit as e:
        assert not e.code, f"the tiny run failed with exit code {e.code}"
    return recipe, folder / "run"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, finished) -> Path:
    """Files that look like a run's state but are not this run's (or are broken)."""
    f = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    cards = {"mlp.pt": ModelCard("mlp", 10, (1, 8, 8)),
             "wide_student.pt": ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 8}),
             "three_classes.pt": ModelCard("small_cnn", 3, (1, 8, 8), kwargs={"width": 16}),
             "pruned_student.pt": ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 4}, pruned=True)}
    for name, card in cards.items():
        save_checkpoint(f / name, card.build(), card)
    torch.save(build_model("small_cnn", 10, (1, 8, 8), width=4).state_dict(), f / "state_dict.pt")
    ckpt = torch.load(finished[1] / "student.pt", weights_only=True)
    torch.save({**ckpt, "extra": 5}, f / "extra_not_a_dict.pt")
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    fit(Supervised(build_model("mlp", 10, (1, 8, 8))), data, Schedule(epochs=1, batch_size=16),
        resume_path=f / "mlp.resume.pt", progress=False)
    whole = (f / "mlp.resume.pt").read_bytes()
    (f / "truncated.resume.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"epoch": 1, "weights": torch.zeros(3)}, f / "keys_missing.resume.pt")
    (f / "garbage").write_bytes(b"\x00\xffnot a torch file" * 40)
    (f / "list.json").write_text("[1, 2, 3]\n")
    return f


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of a run directory but its lock, as bytes: what a refused command must not touch."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def one_line_error(argv: list[str], capsys) -> str:
    code, text = cli(argv, capsys)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    return lines[0]


# ---------------------------------------------------------------- one process per run directory
def test_a_second_process_on_a_held_run_directory_is_refused_naming_the_holder(finished, tmp_path, capsys):
    recipe, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    before = files_of(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        line = one_line_error(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
        assert f"run directory {run} is in use by another distill process (pid {holder.pid} on " in line
        assert "wait for it to finish or stop it" in line and "another --out" in line
        assert files_of(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean exit: the kernel must still release the lock
        holder.wait()
    code, text = cli(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
    assert code == 0, text


def test_only_rank_0_takes_the_lock_under_ddp(finished, tmp_path, monkeypatch):
    """Under torchrun every rank runs run_recipe; the others must not find rank 0's lock and stop."""
    recipe = load_recipe(finished[0])
    monkeypatch.setattr(pipeline, "_run_phases", lambda *args: {"ran": True})
    with RunDir(tmp_path / "run").lock():  # held by "rank 0"
        with pytest.raises(DistillError, match="is in use by another distill process"):
            pipeline.run_recipe(recipe, out=tmp_path / "run")
        monkeypatch.setattr(pipeline.distributed, "is_main", lambda: False)
        assert pipeline.run_recipe(recipe, out=tmp_path / "run") == {"ran": True}


# ---------------------------------------------------------------- only a run's own files are reused
# (id, start from: "empty" or "finished" (a copy of a finished run), files to put there, --resume?, message)
NOT_THIS_RUN = [
    ("fresh run, teacher.pt already there", "empty", {"teacher.pt": "mlp.pt"}, False,
     r"holds teacher\.pt but no recipe\.toml.*nothing there is reused.*expected a new or empty --out"),
    ("fresh run, metrics.json already there", "empty", {"metrics.json": "list.json"}, False,
     r"holds metrics\.json but no recipe\.toml"),
    ("fresh run, a resume file already there", "empty", {".student.resume.pt": "mlp.resume.pt"}, False,
     r"holds \.student\.resume\.pt but no recipe\.toml"),
    ("fresh run, an ONNX file already there", "empty", {"student.onnx": "garbage"}, False,
     r"holds student\.onnx but no recipe\.toml"),
    ("--resume without recipe.toml", "empty", {"teacher.pt": "mlp.pt", "history.csv": "garbage"}, True,
     r"holds history\.csv, teacher\.pt but no recipe\.toml"),
    ("--resume, teacher.pt is an MLP", "finished", {"teacher.pt": "mlp.pt"}, True,
     r"teacher\.pt is not this run's teacher: its card says arch 'mlp' \(this recipe builds 'small_cnn'\).*"
     r"delete it to train the teacher phase again"),
    ("--resume, student.pt of another width", "finished", {"student.pt": "wide_student.pt"}, True,
     r"student\.pt is not this run's student: its card says kwargs \{'width': 8\} "
     r"\(this recipe builds \{'width': 4\}\)"),
    ("--resume, teacher.pt of other classes", "finished", {"teacher.pt": "three_classes.pt"}, True,
     r"teacher\.pt is not this run's teacher: its card says num_classes 3 \(this recipe builds 10\)"),
    ("--resume, baseline.pt is pruned", "finished", {"baseline.pt": "pruned_student.pt"}, True,
     r"baseline\.pt is not this run's baseline: its card says pruned True"),
]


@pytest.mark.parametrize("start, put, resume, message", [c[1:] for c in NOT_THIS_RUN],
                         ids=[c[0] for c in NOT_THIS_RUN])
def test_files_that_are_not_this_runs_own_are_never_reused(start, put, resume, message, finished, foreign,
                                                           tmp_path, capsys):
    recipe, source = finished
    run = tmp_path / "run"
    if start == "finished":
        shutil.copytree(source, run)
    else:
        run.mkdir()
    for name, file in put.items():
        shutil.copy(foreign / file, run / name)
    before = files_of(run)
    line = one_line_error(["run", str(recipe), "--out", str(run), "-q"] + ["--resume"] * resume, capsys)
    assert re.search(message, line), line
    assert files_of(run) == before, "nothing in the run directory changed"


# ---------------------------------------------------------------- broken state files
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (id, file of the run, replaced by (a file of `foreign`, "truncate" or "directory"), phase files removed, message)
BROKEN = [
    ("metrics.json of garbage bytes", "metrics.json", "garbage", (),
     r"metrics\.json cannot be read \(UnicodeDecodeError\).*delete it and run again with --resume"),
    ("metrics.json holding a list", "metrics.json", "list.json", (), r"metrics\.json holds list, not a JSON object"),
    ("metrics.json is a directory", "metrics.json", "directory", (), r"metrics file .*metrics\.json is a directory"),
    ("truncated teacher.pt", "teacher.pt", "truncate", (),
     r"teacher\.pt cannot be read: it is truncated.*delete it to train the teacher phase again"),
    ("student.pt of garbage bytes", "student.pt", "garbage", (),
     r"student\.pt cannot be read.*delete it to train the student phase again"),
    ("student.pt holding a plain state dict", "student.pt", "state_dict.pt", (),
     r"student\.pt is not a checkpoint written by distill run.*delete it to train the student phase again"),
    ("student.pt whose extra is not a dict", "student.pt", "extra_not_a_dict.pt", (),
     r"student\.pt is not a checkpoint written by distill run \(AttributeError"),
    ("truncated resume file", ".student.resume.pt", "truncated.resume.pt", ("student.pt",),
     r"\.student\.resume\.pt cannot be read: it is truncated.*delete it to restart the student phase"),
    ("resume file of garbage bytes", ".student.resume.pt", "garbage", ("student.pt",),
     r"\.student\.resume\.pt cannot be read.*delete it to restart the student phase"),
    ("resume file without the training state", ".student.resume.pt", "keys_missing.resume.pt", ("student.pt",),
     r"\.student\.resume\.pt is not the end-of-epoch state distill writes.*delete it to restart"),
    ("resume file of another model", ".student.resume.pt", "mlp.resume.pt", ("student.pt",),
     r"\.student\.resume\.pt holds the weights of another model \(no tensor 'stage1\.0\.weight'\).*delete it"),
    ("resume file is a directory", ".baseline.resume.pt", "directory", ("baseline.pt",),
     r"\.baseline\.resume\.pt is a directory.*delete it to restart the baseline phase"),
]


@pytest.mark.parametrize("name, broken, removed, message", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_a_broken_state_file_is_one_line_naming_it_and_how_to_recover(name, broken, removed, message, finished,
                                                                      foreign, tmp_path, capsys):
    recipe, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    for phase_file in removed:  # the phase is then in progress: its resume file is read
        (run / phase_file).unlink()
    target = run / name
    if broken == "truncate":
        truncate(target)
    elif broken == "directory":
        target.unlink(missing_ok=True)
        target.mkdir()
    else:
        shutil.copy(foreign / broken, target)
    before = files_of(run)
    line = one_line_error(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
    assert re.search(message, line), line
    assert files_of(run) == before, "the broken file is left for the user to inspect or delete"


def test_a_metrics_entry_without_its_figures_is_scored_again_from_the_checkpoint(finished, tmp_path, capsys):
    """metrics.json is rebuilt from the run's checkpoints, never trusted to hold what the summary reads."""
    recipe, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "teacher": 5, "student": {"test_accuracy": "high"}}))
    checkpoints = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    code, text = cli(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
    assert code == 0, text
    rebuilt = json.loads((run / "metrics.json").read_text())
    for role in ("teacher", "student"):
        assert rebuilt[role]["test_accuracy"] == metrics[role]["test_accuracy"]
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == checkpoints, "reused, not trained again"


def test_a_deleted_metrics_json_is_rebuilt_whole_from_the_checkpoints(tmp_path, capsys):
    """What a phase reports besides its scores (the teacher's strategy, the student's connectors,
    the pruned model's recovery and MACs ratio) travels in its checkpoint, so the rebuilt
    metrics.json, and the summary printed from it, lose nothing."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    args = ["run", str(recipe), "--out", str(run), "-q", "--set", "prune.enabled=true", "--set", "prune.epochs=1",
            "--set", "prune.macs=0.8"]
    code, first = cli(args, capsys)
    assert code == 0, first
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    code, again = cli([*args, "--resume"], capsys)
    assert code == 0, again
    after = json.loads((run / "metrics.json").read_text())
    for role, keys in {"teacher": ["strategy"], "student": ["connectors"],
                       "pruned": ["recovery", "macs_ratio", "on_target", "accuracy_after_pruning"]}.items():
        assert {k: after[role][k] for k in keys} == {k: before[role][k] for k in keys}, role
    assert "pruned student:" in again


def rewrite_checkpoint(path: Path, change) -> None:
    """Load a run checkpoint as data, let `change` edit the dict, save it back as torch would."""
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


EDITED_STATE = [
    ("recipe.toml not UTF-8", lambda run: (run / "recipe.toml").write_bytes(b"name = \"\xff\xfe\"\n"),
     r"run recipe .*recipe.toml cannot be read"),
    ("recipe.toml a directory", lambda run: ((run / "recipe.toml").unlink(), (run / "recipe.toml").mkdir()),
     r"run recipe .*recipe.toml is a directory"),
    ("history rows that are not tables", lambda run: rewrite_checkpoint(
        run / "teacher.pt", lambda c: c["extra"].update(history=[1, 2])), r"history that is not a list of epoch rows"),
    ("seconds that are not a number", lambda run: rewrite_checkpoint(
        run / "student.pt", lambda c: c["extra"].update(history=[{"seconds": "slow"}])),
     r"history that is not a list of epoch rows"),
    ("phase info holding a tensor", lambda run: rewrite_checkpoint(
        run / "student.pt", lambda c: c["extra"].update(info={"connectors": torch.zeros(2)})),
     r"phase info that is not a table of plain values"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in EDITED_STATE], ids=[c[0] for c in EDITED_STATE])
def test_state_edited_by_hand_is_one_line_on_resume(edit, message, finished, tmp_path, capsys):
    recipe, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    (run / "metrics.json").unlink()  # so the edited checkpoints are read and scored again
    edit(run)
    line = one_line_error(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
    assert re.search(message, line), line


def test_phase_info_never_overrides_a_measured_figure(finished, tmp_path, capsys):
    recipe, source = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    (run / "metrics.json").unlink()
    rewrite_checkpoint(run / "student.pt", lambda c: c["extra"].update(info={"test_accuracy": 2.0, "model": 1}))
    code, text = cli(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
    assert code == 0, text
    assert json.loads((run / "metrics.json").read_text())["student"]["test_accuracy"] <= 1
