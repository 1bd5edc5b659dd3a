"""distill bench: interleaved timing, consistent ratios, reports, and one-line CLI errors."""
from __future__ import annotations

import json

import pytest
import torch

from distill.bench import _time, benchmark, physical_cores, run_artifacts, write_report
from distill.cli import main
from distill.errors import DistillError
from distill.export import export_onnx
from distill.models import ModelCard, load_checkpoint, save_checkpoint

FAST = dict(rounds=3, round_time=0.01, warmup=1, progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """teacher.pt and student.pt, plus student.onnx exported beside its checkpoint."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    for name, width in (("teacher", 16), ("student", 4)):
        card = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": width})
        model = card.build().eval()
        save_checkpoint(folder / f"{name}.pt", model, card)
    model, card = load_checkpoint(folder / "student.pt")
    export_onnx(model, card, folder / "student.onnx")
    return folder


@pytest.fixture(scope="module")
def result(run_dir):
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    return benchmark(run_artifacts(run_dir), batch_sizes=(1, 8), data=(x, y), **FAST)


def test_run_directory_lists_checkpoints_and_times_the_onnx_file_beside_one(run_dir, result):
    assert list(run_artifacts(run_dir)) == ["teacher", "student"]
    assert result.artifacts["student"]["onnx_file"] == str(run_dir / "student.onnx")
    assert result.artifacts["teacher"]["onnx_file"] is None  # exported to a temporary file for ORT


def test_every_model_is_timed_in_both_runtimes_at_every_batch_size(result):
    assert {(r["artifact"], r["runtime"]) for r in result.rows} == {
        (a, rt) for a in ("teacher", "student") for rt in ("eager", "ort")}
    for r in result.rows:
        assert set(r["batches"]) == {"1", "8"}
        stats = r["batches"]["1"]
        assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] and stats["calls"] >= 3


def test_ratios_are_consistent_with_the_measurements(result):
    lat = lambda a, rt: result.row(a, rt)["batches"]["1"]["p50_ms"]
    best = min(("eager", "ort"), key=lambda rt: lat("teacher", rt))
    assert result.teacher == "teacher" and result.teacher_runtime == best
    assert result.row("teacher", best)["speedup_vs_teacher"] == pytest.approx(1.0)
    t_acc = result.row("teacher", best)["accuracy"]
    for r in result.rows:
        assert r["speedup_vs_teacher"] == pytest.approx(lat("teacher", best) / lat(r["artifact"], r["runtime"]))
        assert r["accuracy_delta_vs_teacher"] == pytest.approx(r["accuracy"] - t_acc)
    t, s = result.artifacts["teacher"], result.artifacts["student"]
    assert result.row("student", "ort")["macs_ratio_vs_teacher"] == pytest.approx(t["macs"] / s["macs"])
    assert t["macs"] > s["macs"] > 0 and t["params"] > s["params"]
    assert s["ort_vs_eager"] == pytest.approx(lat("student", "eager") / lat("student", "ort"))


def test_onnx_accuracy_is_measured_and_matches_the_checkpoint(result):
    for name in ("teacher", "student"):
        assert result.row(name, "ort")["accuracy"] == result.row(name, "eager")["accuracy"]


def test_report_files_hold_the_expected_keys(result, tmp_path):
    paths = write_report(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert {"teacher", "teacher_runtime", "machine", "settings", "artifacts", "rows"} <= set(data)
    assert data["settings"]["interleaved"] is True and data["machine"]["threads"] == physical_cores()
    assert {"artifact", "runtime", "batches", "accuracy", "speedup_vs_teacher", "accuracy_delta_vs_teacher",
            "macs_ratio_vs_teacher"} <= set(data["rows"][0])
    assert "speedup" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_timing_rounds_interleave_models_in_rotating_order():
    calls: list[str] = []
    runners = {(name, "eager"): (lambda x, name=name: calls.append(name)) for name in "abc"}

    class Art:
        card = ModelCard("small_cnn", 10, (1, 2, 2))
    times = _time(runners, {n: Art for n in "abc"}, [1], rounds=3, round_time=0.0, warmup=0, progress=False)
    assert calls == list("abcbcacab")
    assert all(len(t) == 3 for t in times.values())


def test_an_onnx_file_beside_a_checkpoint_that_no_longer_matches_is_refused(run_dir, tmp_path):
    (tmp_path / "student.onnx").write_bytes((run_dir / "student.onnx").read_bytes())
    card = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 4})
    save_checkpoint(tmp_path / "student.pt", card.build(), card)  # retrained: new weights
    with pytest.raises(DistillError, match="is stale"):
        benchmark({"student": tmp_path / "student.pt"}, runtimes=("ort",), **FAST)


def test_cli_bench_on_a_run_directory_writes_the_report(run_dir, tmp_path, capsys):
    main(["bench", str(run_dir), "--runtime", "eager", "--rounds", "2", "--round-time", "0.01",
          "--throughput-batch", "0", "--out", str(tmp_path), "-q"])
    out = capsys.readouterr().out
    assert "speedup" in out and "student (eager)" in out
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md", "bench.png"}


def test_cli_bench_on_a_file_that_is_not_onnx_exits_2_with_one_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "fake.onnx"
    bad.write_text("definitely not onnx")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--teacher", str(run_dir / "teacher.pt"), "--student", str(bad), "-q"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "is not an ONNX model" in err and "expected a file written by distill export" in err
