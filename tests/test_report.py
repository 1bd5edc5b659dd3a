"""report.html (distill.report), `distill report`, predictions.npz and TensorBoard scalars, checked
as a person sees them: numbers read back from the page, and the page rendered by a real browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, tiny_recipe

from distill.errors import DistillError
from distill.pipeline import run_recipe
from distill.recipe import recipe_from_dict
from distill.report import (
    read_predictions,
    refresh_report,
    write_comparison,
    write_report,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny finished run (digits, 2 epochs a phase) with TensorBoard scalars on."""
    pytest.importorskip("tensorboard")
    data = tomllib.loads(tiny_recipe(train_limit=200, test_limit=100, teacher_epochs=2, student_epochs=2))
    data["log"] = {"tensorboard": True}
    out = tmp_path_factory.mktemp("report") / "run"
    run_recipe(recipe_from_dict(data), out=out, progress=False)
    return out


class Cells(HTMLParser):
    """The cells of a page that carry their exact value: (row, key) -> value, as the page says it."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], object] = {}
        self.sources: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if "data-key" in a:
            self.values[a["data-row"], a["data-key"]] = json.loads(a["data-value"])
        self.sources += [v for k, v in attrs if k in ("src", "href") and v is not None]


def cells(html: Path) -> Cells:
    parser = Cells()
    parser.feed(html.read_text(encoding="utf-8"))
    return parser


def copy_run(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("*.pt", "tb")))


# ----------------------------------------------------------------------------- the page


def test_a_finished_run_leaves_a_report_whose_summary_equals_metrics_json(run):
    metrics = json.loads((run / "metrics.json").read_text())
    page = cells(run / "report.html")
    for role in ("teacher", "student", "baseline"):
        for key in ("test_accuracy", "params", "macs", "epochs"):
            assert page.values[role, key] == metrics[role][key], (role, key)
    for key in ("accuracy_points", "noise_band_points", "significant"):
        assert page.values["gain", key] == metrics["gain"][key]
    shown = re.search(r'data-row="student" data-key="test_accuracy"[^>]*>([^<]*)<', (run / "report.html").read_text())
    assert shown.group(1) == f"{100 * metrics['student']['test_accuracy']:.2f}%"


def test_the_report_is_one_self_contained_file_with_no_script_and_no_web_address(run):
    html = (run / "report.html").read_text(encoding="utf-8")
    page = cells(run / "report.html")
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    images = [s for s in page.sources if s.startswith("data:image/svg+xml;base64,")]
    assert len(images) >= 5  # curves of 3 phases, per-class accuracy, disagreements
    assert all(s.startswith("data:") for s in page.sources)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:|//)", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html


def test_every_scored_model_leaves_its_test_predictions_which_give_its_accuracy(run):
    metrics = json.loads((run / "metrics.json").read_text())
    p = read_predictions(run)
    assert set(p.roles) == {"teacher", "student", "baseline"}
    assert len(p.labels) == metrics["data"]["test"] and p.class_names == [str(i) for i in range(10)]
    for role, predicted in p.roles.items():
        assert np.mean(predicted == p.labels) == pytest.approx(metrics[role]["test_accuracy"], abs=1e-12)


def test_the_agreement_shown_is_the_share_of_test_images_where_teacher_and_student_agree(run):
    p = read_predictions(run)
    agreement = cells(run / "report.html").values["agreement", "top1_agreement"]
    assert agreement == pytest.approx(float(np.mean(p.roles["teacher"] == p.roles["student"])))
    html = (run / "report.html").read_text()
    assert "test accuracy per class and model" in html and "confusion matrix of the disagreements" in html


def test_a_run_in_progress_gets_a_report_that_names_the_phases_still_missing(run, tmp_path):
    partial = copy_run(run, tmp_path / "partial")
    metrics = json.loads((partial / "metrics.json").read_text())
    for key in ("student", "baseline", "gain"):
        metrics.pop(key)
    (partial / "metrics.json").write_text(json.dumps(metrics))
    (partial / "predictions.npz").unlink()
    html = write_report(partial).read_text()
    assert "phases without results yet: student, baseline, gain" in html
    assert "predictions.npz is missing" in html
    assert cells(partial / "report.html").values["teacher", "test_accuracy"] == metrics["teacher"]["test_accuracy"]


def test_a_started_run_with_only_its_recipe_gets_a_report_saying_every_phase_is_missing(tmp_path):
    (tmp_path / "recipe.toml").write_text('name = "x"\n[prune]\nenabled = true\n')
    html = write_report(tmp_path).read_text()
    assert "phases without results yet: teacher, student, baseline, gain, pruned" in html


def test_text_taken_from_the_run_files_is_escaped_never_markup(run, tmp_path):
    hostile = copy_run(run, tmp_path / "hostile")
    metrics = json.loads((hostile / "metrics.json").read_text())
    metrics["recipe"] = "<script>alert(1)</script>"
    (hostile / "metrics.json").write_text(json.dumps(metrics))
    p = read_predictions(hostile)
    names = np.array(["<b>zero</b>", *p.class_names[1:]])
    np.savez(hostile / "predictions.npz", labels=p.labels, class_names=names,
             **{f"role_{r}": v for r, v in p.roles.items()})
    write_report(hostile)
    page = cells(hostile / "report.html")
    html = (hostile / "report.html").read_text()
    assert "script" not in page.tags and "b" not in page.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;zero&lt;/b&gt;" in html


def test_a_report_that_cannot_be_drawn_warns_instead_of_stopping_the_run(tmp_path, monkeypatch):
    (tmp_path / "recipe.toml").write_text('name = "x"\n')
    monkeypatch.setattr("distill.report.run_page", lambda run: 1 / 0)
    with pytest.warns(UserWarning, match="report.html of .* not refreshed .*ZeroDivisionError"):
        assert refresh_report(tmp_path) is None


def test_pruning_export_and_bench_results_get_their_sections_when_those_phases_ran(run, tmp_path):
    deployed = copy_run(run, tmp_path / "deployed")
    metrics = json.loads((deployed / "metrics.json").read_text())
    metrics["pruned"] = {**metrics["student"], "macs_ratio": 0.48, "macs_target": 0.5, "on_target": True,
                         "accuracy_after_pruning": 0.2, "recovery": "kd"}
    metrics["export"] = {"student": {"file": "student.onnx", "bytes": 23394, "max_abs_diff": {"real": 3e-7}}}
    metrics["bench"] = {"file": "bench.json", "teacher_runtime": "eager"}
    (deployed / "metrics.json").write_text(json.dumps(metrics))
    def stats(p50, throughput):
        return {"p50_ms": p50, "throughput": throughput}

    rows = [{"artifact": a, "runtime": "eager", "precision": "float32", "accuracy": metrics[a]["test_accuracy"],
             "batches": {"1": stats(p50, 1000 / p50), "32": stats(4 * p50, 8000 / p50)}, "speedup_vs_teacher": s}
            for a, p50, s in (("teacher", 0.8, 1.0), ("student", 0.1, 8.0))]
    (deployed / "bench.json").write_text(json.dumps({"settings": {"latency_batch": 1, "batch_sizes": [1, 32]},
                                                     "machine": {"cpu": "test cpu", "threads": 2}, "rows": rows}))
    html = write_report(deployed).read_text()
    assert "phases without results yet" not in html
    for heading in ("Pruning", "ONNX export", "Speed (bench)"):
        assert f"<h2>{heading}</h2>" in html
    assert "<td>48.0%</td>" in html and "<td>student.onnx</td>" in html and "<td>0.100</td>" in html
    assert "<td>8.00x</td>" in html and "accuracy vs median latency at batch 1" in html


def test_the_report_is_refreshed_after_each_phase_so_a_run_stopped_midway_has_one(tmp_path, monkeypatch):
    def stop(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr("distill.pipeline.baseline_phase", stop)
    data = tomllib.loads(tiny_recipe(train_limit=60, test_limit=30, teacher_epochs=1, student_epochs=1))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe_from_dict(data), out=tmp_path / "run", progress=False)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "phases without results yet: baseline, gain" in html
    assert {"teacher", "student"} <= {row for row, _ in cells(tmp_path / "run" / "report.html").values}


# ----------------------------------------------------------------------------- several seeds


def test_a_multi_seed_run_gets_a_pooled_summary_and_a_report_per_seed(run, tmp_path):
    top = tmp_path / "seeds"
    for seed in (0, 1):
        copy_run(run, top / f"seed-{seed}")
    accuracy = json.loads((run / "metrics.json").read_text())["student"]["test_accuracy"]
    metrics = {"recipe": "tiny", "seeds": [0, 1], "runs": ["seed-0", "seed-1"],
               "models": {"student": {"test_accuracy": [accuracy, accuracy], "mean": accuracy, "sd": 0.0,
                                      "params": 10, "macs": 20},
                          "baseline": {"test_accuracy": [0.5, 0.7], "mean": 0.6, "sd": 0.1414, "params": 10, "macs": 20}},
               "gain": {"accuracy_points": 1.5, "noise_band_points": 2.5, "significant": False,
                        "negative_transfer": False, "test": "pooled paired (McNemar over seeds)", "per_seed": [1.0, 2.0]}}
    (top / "metrics.json").write_text(json.dumps(metrics))
    (top / "seed-0" / "recipe.toml").write_text('name = "tiny"\n[prune]\nenabled = true\n')
    for seed in (0, 1):
        (top / f"seed-{seed}" / "report.html").unlink()
    page = cells(write_report(top))
    assert page.values["baseline", "mean"] == 0.6 and page.values["baseline", "sd"] == 0.1414
    assert page.values["student", "mean"] == accuracy
    assert page.values["gain", "accuracy_points"] == 1.5
    assert {"seed-0/report.html", "seed-1/report.html"} <= set(page.sources)
    assert all((top / f"seed-{seed}" / "report.html").is_file() for seed in (0, 1))
    html = (top / "report.html").read_text()  # the seeds' recipe asks for pruning and a teacher
    assert "phases without results yet: teacher, pruned" in html and "recipe.toml is missing" not in html
    compared = cells(write_comparison([top, run], tmp_path / "cmp.html"))
    assert compared.values[f"{top}/baseline", "test_accuracy"] == 0.6  # the pooled mean


# ----------------------------------------------------------------------------- distill report


def test_distill_report_regenerates_a_runs_report(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path / "again")
    (copy / "report.html").unlink()
    code, out = cli(["report", str(copy)], capsys)
    assert code == 0 and (copy / "report.html").is_file() and "report.html" in out


def test_distill_report_on_several_runs_writes_one_comparison_page(run, tmp_path, capsys, monkeypatch):
    other = copy_run(run, tmp_path / "other")
    monkeypatch.chdir(tmp_path)
    code, out = cli(["report", str(run), str(other)], capsys)
    assert code == 0, out
    page = cells(tmp_path / "comparison.html")
    student = json.loads((run / "metrics.json").read_text())["student"]["test_accuracy"]
    assert page.values[f"{run}/student", "test_accuracy"] == student
    assert page.values[f"{other}/student", "test_accuracy"] == student
    assert "runs overlaid" in (tmp_path / "comparison.html").read_text()


def test_distill_report_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path, capsys):
    code, out = cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "is not a run directory" in out and len(out.strip().splitlines()) == 1


def test_a_comparison_never_overwrites_a_file_of_its_input_runs(run, tmp_path, capsys):
    other = copy_run(run, tmp_path / "other")
    before = (other / "metrics.json").read_bytes()
    code, out = cli(["report", str(run), str(other), "--out", str(other / "metrics.json")], capsys)
    assert code == 2 and "is the input file" in out
    assert (other / "metrics.json").read_bytes() == before
    with pytest.raises(DistillError, match="is a directory"):
        write_comparison([run, other], tmp_path)


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_are_readable_by_tensorboards_own_event_reader(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = [r for r in _csv(run / "history.csv") if r["phase"] == "student"]
    events = EventAccumulator(str(run / "tb" / "student"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/ce", "loss/kd", "loss/hint", "loss/total", "accuracy/train", "lr", "images_per_second"} <= tags
    kd = [(e.step, e.value) for e in events.Scalars("loss/kd")]
    assert [s for s, _ in kd] == [1, 2]
    assert [v for _, v in kd] == pytest.approx([float(r["kd"]) for r in history], rel=1e-6)
    rate = events.Scalars("images_per_second")[0].value
    assert rate == pytest.approx(200 / float(history[0]["seconds"]), rel=1e-6)
    assert sorted(p.name for p in (run / "tb").iterdir()) == ["baseline", "student", "teacher"]


def test_a_recipe_asking_for_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import machinery: "not installed"
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(train_limit=60, test_limit=30, teacher_epochs=1, student_epochs=1)
                      + "[log]\ntensorboard = true\n")
    code, out = cli(["run", str(recipe), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "pip install 'distill[tensorboard]'" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "teacher.pt").exists()


def _csv(path: Path) -> list[dict[str, str]]:
    import csv
    return list(csv.DictReader(path.read_text().splitlines()))


# ----------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path, out: Path) -> tuple[Path, str, list[str]]:
    """Render `page` in headless Chromium: (screenshot, stderr, URLs the page itself requested).

    Name resolution is off (`MAP * ~NOTFOUND`), so nothing leaves the machine; the net log still
    records every request a page makes, which the browser's own background requests are told
    apart from by their initiator ("not an origin")."""
    shot, net = out / "shot.png", out / "net.json"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
               f"--log-net-log={net}", "--window-size=1200,2000", f"--user-data-dir={out / 'profile'}",
               f"--screenshot={shot}", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    log = json.loads(net.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    jobs = [e.get("params", {}) for e in log["events"] if e["type"] == start]
    requested = [job["url"] for job in jobs if "url" in job and job.get("initiator") != "not an origin"]
    return shot, done.stderr, requested


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_chromium_renders_the_report_with_no_network_request_and_no_console_message(run, tmp_path):
    from PIL import Image

    shot, stderr, requested = render(run / "report.html", tmp_path)
    assert requested == []
    assert "CONSOLE" not in stderr, [line for line in stderr.splitlines() if "CONSOLE" in line]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and figures, not a blank page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_browser_check_sees_a_page_that_fetches_from_the_web_or_logs_an_error(tmp_path):
    """The check above can fail: a page with a web image and a console error is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="http://example.com/x.png">'
                    '<script>console.error("boom")</script></body></html>')
    _, stderr, requested = render(page, tmp_path)
    assert requested == ["http://example.com/x.png"]
    assert "CONSOLE" in stderr and "boom" in stderr
