"""Latency budgets: the choice rule, the no-fit error, the int8 guard, budget verdicts, families."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.bench import latency_stats, time_interleaved
from distill.errors import DistillError
from distill.latency import (Candidate, Timing, check_budget, choose, compare_int8, int8_decision,
                             measure_candidates, verdict)
from distill.models.family import size_family
from distill.models.registry import build_model


def cand(name: str, macs: int, p50: float) -> Candidate:
    return Candidate(name, {}, params=macs, macs=macs, p50_ms=p50, p90_ms=p50 * 1.2)


CANDIDATES = [cand("tiny", 10, 0.5), cand("small", 100, 2.0), cand("big", 1000, 8.0), cand("huge", 5000, 30.0)]


@pytest.mark.parametrize("budget, expected", [(0.5, 0), (1.9, 0), (2.0, 1), (7.99, 1), (8.0, 2), (100, 3)])
def test_the_choice_is_the_largest_candidate_by_macs_whose_p50_fits_the_budget(budget, expected):
    assert choose(CANDIDATES, budget) == expected


def test_a_candidate_with_more_macs_that_runs_slower_than_the_budget_is_passed_over():
    odd = [cand("fast but big", 900, 1.0), cand("slow but small", 100, 5.0)]  # MACs would pick the first
    assert choose(odd, 2.0) == 0
    assert choose(odd, 0.9 + 4.5) == 0  # both fit: the more capable one


def test_equal_macs_break_the_tie_by_the_faster_candidate():
    assert choose([cand("a", 100, 3.0), cand("b", 100, 1.0)], 5.0) == 1


def test_no_candidate_fitting_names_the_fastest_candidate_and_its_latency():
    with pytest.raises(DistillError, match=r"fastest, tiny, takes 0\.5 ms"):
        choose(CANDIDATES, 0.1)


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), True, "5"])
def test_a_budget_that_is_not_a_positive_number_is_refused(budget):
    with pytest.raises(DistillError, match="expected a positive number of milliseconds"):
        check_budget(budget)


def test_int8_is_kept_when_faster_and_accurate_enough():
    keep, reason = int8_decision(2.0, 1.0, 0.95, 0.945, max_drop_points=1.0)
    assert keep and reason.startswith("int8 kept")


def test_int8_is_rejected_when_it_is_not_faster():
    keep, reason = int8_decision(1.0, 1.2, 0.95, 0.95, max_drop_points=1.0)
    assert not keep and "not faster" in reason and "accuracy" not in reason


def test_int8_is_rejected_when_it_loses_more_accuracy_than_allowed():
    keep, reason = int8_decision(2.0, 1.0, 0.95, 0.93, max_drop_points=1.0)
    assert not keep and "loses 2.00 points" in reason and "not faster" not in reason


def test_int8_comparison_uses_the_measured_timings_and_the_test_accuracy(tmp_path, monkeypatch):
    """Injected timings; accuracies from the files: the same model twice gives a drop of 0."""
    from distill.export import export_onnx
    from distill.models import ModelCard
    model = build_model("mlp", 3, (1, 4, 4), hidden=[8]).eval()
    card = ModelCard("mlp", 3, (1, 4, 4), kwargs={"hidden": [8]})
    f = export_onnx(model, card, tmp_path / "f.onnx").path
    x = torch.randn(30, 1, 4, 4)
    data = (x, model(x).argmax(1))

    def timings(float_ms, int8_ms):
        return lambda files, *a, **k: {"float": Timing(float_ms, float_ms, 0, 1, 1),
                                       "int8": Timing(int8_ms, int8_ms, 0, 1, 1)}
    kept = compare_int8(f, f, (1, 4, 4), data, max_drop_points=1.0, measure=timings(2.0, 1.0))
    assert kept["kept"] and kept["float_accuracy"] == kept["int8_accuracy"] == 1.0
    slower = compare_int8(f, f, (1, 4, 4), data, max_drop_points=1.0, measure=timings(1.0, 2.0))
    assert not slower["kept"] and "not faster" in slower["reason"]


@pytest.mark.parametrize("p50, noise, expected", [(4.0, 0.5, "met"), (6.0, 0.5, "missed"),
                                                  (4.8, 0.5, "within noise"), (5.3, 0.5, "within noise")])
def test_the_budget_verdict_is_met_or_missed_only_beyond_the_noise(p50, noise, expected):
    assert verdict(Timing(p50, p50, noise, 10, 100), 5.0) == expected


def test_interleaved_timing_gives_every_runner_its_rounds_and_states_the_noise():
    calls = {"a": 0, "b": 0}

    def runner(key):
        def run(x):
            calls[key] += 1
        return run
    timed = time_interleaved({"a": runner("a"), "b": runner("b")}, {"a": 1, "b": 1}, rounds=5,
                             round_time=0.001, warmup=2)
    assert [len(timed[k]) for k in "ab"] == [5, 5]
    stats = latency_stats(timed["a"])
    assert stats["p50_noise_ms"] >= 0 and stats["calls"] == calls["a"] - 2
    rounds = [np.array([0.001]), np.array([0.0011]), np.array([0.0009]), np.array([0.5])]  # one burst
    assert latency_stats(rounds)["p50_noise_ms"] == pytest.approx(1.4826 * 0.1)


@pytest.mark.parametrize("model", ["mlp", "small_cnn", "mobilenetv2", "shufflenetv2", "resnet20",
                                   "mobilenet_v3_small", "cifar_vgg8"])
def test_a_model_family_holds_the_model_itself_and_other_sizes_that_build(model):
    family = size_family(model, {})
    assert len(family) >= 3
    with torch.device("meta"):
        for name, options in family:
            build_model(name, 10, (3, 32, 32), **options)


def test_a_model_without_a_family_asks_for_candidates():
    with pytest.raises(DistillError, match=r"student\.candidates"):
        size_family("vit_b_16", {})


def test_a_candidate_that_cannot_be_built_is_named():
    with pytest.raises(DistillError, match=r"candidate 1 \(mlp .*hidden.*cannot"):
        measure_candidates([("mlp", {"hidden": [4]}), ("mlp", {"hidden": [0]})], 3, (1, 4, 4), rounds=1,
                           round_time=0.001)


def test_an_unknown_provider_lists_the_available_ones():
    with pytest.raises(DistillError, match="not available in this ONNX Runtime; expected one of .*CPUExecutionProvider"):
        measure_candidates([("mlp", {"hidden": [4]})], 3, (1, 4, 4), provider="NoSuchProvider")


def test_measured_candidates_carry_their_cost_and_latency():
    found = measure_candidates([("mlp", {"hidden": [4]}), ("mlp", {"hidden": [64]})], 3, (1, 4, 4), rounds=2,
                               round_time=0.01)
    assert [c.macs for c in found] == [16 * 4 + 4 * 3, 16 * 64 + 64 * 3]
    assert all(c.p50_ms > 0 and c.p90_ms >= c.p50_ms for c in found)


# ----------------------------------------------------------------------------- a whole run

BUDGET_RECIPE = {
    "name": "budget", "seed": 0, "device": "cpu",
    "data": {"name": "digits", "augment": False, "train_limit": 300, "test_limit": 200},
    "teacher": {"model": "small_cnn", "options": {"width": 8}, "epochs": 1, "batch_size": 64},
    "student": {"model": "mlp", "epochs": 2, "batch_size": 64, "latency_budget_ms": 0.5,
                # ~600 MACs vs ~17M MACs (68 MB of weights read per call): far apart on any CPU
                "candidates": [{"model": "mlp", "options": {"hidden": [8]}},
                               {"model": "mlp", "options": {"hidden": [4096, 4096]}}]},
    "baseline": {"enabled": False},
    "export": {"enabled": True, "int8": True},
}


def test_a_budget_between_two_candidates_trains_the_larger_one_that_fits_and_verifies_it(tmp_path, monkeypatch):
    from distill import latency
    from distill.pipeline import run_recipe
    from distill.recipe import recipe_from_dict, to_toml
    recipe = recipe_from_dict(BUDGET_RECIPE)
    metrics = run_recipe(recipe, out=tmp_path / "run", progress=False)
    choice = metrics["student_choice"]
    assert choice["chosen"] == 0 and choice["budget_ms"] == 0.5
    assert [set(c) >= {"model", "options", "p50_ms", "p90_ms", "params", "macs"} for c in choice["candidates"]] == [True] * 2
    assert choice["candidates"][0]["p50_ms"] <= 0.5 < choice["candidates"][1]["p50_ms"]
    assert metrics["student"]["macs"] == choice["candidates"][0]["macs"]  # the chosen model was trained
    assert metrics["budget_check"]["student"]["verdict"] == "met"
    int8 = metrics["export"]["student"]["int8"]
    assert (tmp_path / "run" / "student.int8.onnx").exists() == int8["kept"] == ("student.int8" in metrics["budget_check"])
    # the recorded recipe is the user's (budget and candidates), so --resume with it is the same run ...
    assert (tmp_path / "run" / "recipe.toml").read_text() == to_toml(recipe)
    assert recipe.student.model == "mlp" and recipe.student.options == {}
    # ... and reuses the stored choice rather than timing again
    monkeypatch.setattr("distill.phases.choose.measure_candidates", lambda *a, **k: pytest.fail("timed again"))
    again = run_recipe(recipe_from_dict(BUDGET_RECIPE), out=tmp_path / "run", resume=True, progress=False)
    assert again["student_choice"]["chosen"] == 0 and again["student"]["epochs"] == 2
    lines = latency.budget_summary(again)
    assert "latency budget 0.5 ms: chose mlp(hidden=[8])" in lines[0]
    assert "student.onnx: p50" in lines[1] and lines[1].endswith("against a budget of 0.5 ms: MET")
    assert lines[-1].startswith("student: int8 ")


# ----------------------------------------------------------------------------- pruning to a budget

@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # random weights rank the channels: the same ones every time


def _widths(model) -> list[int]:
    return [m.out_features for m in model.features if isinstance(m, torch.nn.Linear)]


def test_pruning_to_a_latency_budget_stops_at_the_first_step_within_it():
    from distill.models.stats import count_macs
    from distill.prune import prune_to_latency
    model = build_model("mlp", 10, (1, 8, 8), hidden=[256, 256])
    fake_ms = lambda m: count_macs(m, (1, 8, 8)) / 1000  # noqa: E731  (84.5 "ms" unpruned)
    pruned, report = prune_to_latency(model, torch.zeros(1, 1, 8, 8), 30.0, fake_ms)
    assert report.latency_ms_before == pytest.approx(84.48) and report.latency_ms_after <= 30.0
    assert report.on_target and fake_ms(pruned) == report.latency_ms_after
    steps = sorted({t["step"] for t in report.trials})
    before_last = [t for t in report.trials if t["step"] == steps[-2]]
    assert len(steps) == report.steps >= 3 and min(t["latency_ms"] for t in before_last) > 30.0  # no step too many
    assert _widths(model) == [256, 256]  # the given model is left as it was


def test_pruning_to_a_latency_budget_keeps_the_fastest_channel_rounding_of_the_last_step():
    from distill.models.stats import count_macs
    from distill.prune import ROUND_TOS, prune_to_latency

    def fake_ms(m):  # an odd runtime, slower on channel counts that are multiples of 8: the rule is
        slow = any(w % 8 == 0 for w in _widths(m))  # arbitrary, the point is that the fastest rounding wins
        return count_macs(m, (1, 8, 8)) / 1000 * (1.3 if slow else 1.0)
    pruned, report = prune_to_latency(build_model("mlp", 10, (1, 8, 8), hidden=[256, 256]),
                                      torch.zeros(1, 1, 8, 8), 30.0, fake_ms)
    last = [t for t in report.trials if t["step"] == report.steps]
    assert sorted(t["round_to"] for t in last) == sorted(ROUND_TOS)
    fastest = min(t["latency_ms"] for t in last)
    assert report.latency_ms_after == fastest < max(t["latency_ms"] for t in last)  # rounding mattered
    assert report.round_to == min(last, key=lambda t: t["latency_ms"])["round_to"] != 8
    assert any(w % 8 for w in _widths(pruned))


def test_a_latency_budget_pruning_cannot_reach_is_one_line_naming_where_it_stopped():
    from distill.prune import prune_to_latency
    with pytest.raises(DistillError, match=r"cannot prune MLP to 0\.001 ms.*expected a larger latency budget"):
        prune_to_latency(build_model("mlp", 10, (1, 8, 8), hidden=[16]), torch.zeros(1, 1, 8, 8), 0.001,
                         lambda m: 1.0, max_steps=3)


def test_distill_prune_latency_ms_prunes_a_checkpoint_to_a_generous_budget(tmp_path, capsys):
    from distill.models import ModelCard, save_checkpoint
    from helpers import cli
    model = build_model("mlp", 10, (1, 8, 8), hidden=[1024, 1024])
    save_checkpoint(tmp_path / "m.pt", model, ModelCard("mlp", 10, (1, 8, 8), kwargs={"hidden": [1024, 1024]}))
    code, out = cli(["prune", str(tmp_path / "m.pt"), "--latency-ms", "100", "-o", str(tmp_path / "p.pt")], capsys)
    assert code == 0 and "target: 100 ms ONNX latency at batch 1 (met)" in out
    code, out = cli(["prune", str(tmp_path / "m.pt"), "--latency-ms", "0", "-o", str(tmp_path / "q.pt")], capsys)
    assert code == 2 and "--latency-ms: expected a positive number of milliseconds" in out


@pytest.mark.parametrize("student, message", [
    ({"latency_budget_ms": 0}, r"student\.latency_budget_ms: expected a positive number of milliseconds, got 0"),
    ({"latency_budget_ms": -2.5}, r"student\.latency_budget_ms: expected a positive number"),
    ({"latency_budget_ms": 1, "latency_provider": "TensorrtExecutionProvider"},
     r"student\.latency_provider: .*not available in this ONNX Runtime; expected one of .*CPUExecutionProvider"),
    ({"latency_budget_ms": 1, "candidates": [{"model": "mlp", "options": {"hidden": [8]}},
                                             {"model": "mlp", "options": {"hidden": [-1]}}]},
     r"student\.candidates\.1\.options\.hidden: expected a list of positive integers"),
    ({"latency_budget_ms": 1, "candidates": [{"model": "resnet9000"}]}, r"student\.candidates\.0\.model: unknown model"),
    ({"latency_budget_ms": 1, "candidates": [{"model": "mlp", "options": {"num_classes": 3}}]},
     r"student\.candidates\.0\.options\.num_classes: expected a keyword argument"),
    ({"candidates": [{"model": "mlp"}]}, r"student\.candidates: .*expected student\.latency_budget_ms too"),
    ({"latency_budget_ms": 1, "latency_batch": 0}, r"student\.latency_batch: expected a positive integer"),
])
def test_bad_latency_keys_in_a_recipe_are_one_line_naming_the_key(student, message):
    from distill.recipe import recipe_from_dict
    with pytest.raises(DistillError, match=message):
        recipe_from_dict({"student": {"model": "mlp", **student}})


def test_a_recipe_budget_no_candidate_meets_exits_2_naming_the_fastest(tmp_path, capsys):
    from helpers import cli
    recipe = tmp_path / "r.toml"
    recipe.write_text('device = "cpu"\n[data]\nname = "digits"\ntrain_limit = 50\ntest_limit = 20\n'
                      '[student]\nmodel = "mlp"\nlatency_budget_ms = 1e-6\n'
                      '[[student.candidates]]\nmodel = "mlp"\noptions = { hidden = [4] }\n')
    code, out = cli(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 2 and out.strip().splitlines()[-1].startswith("error: no candidate fits the latency budget "
                                                                 "of 1e-06 ms: the fastest, mlp(hidden=[4]), takes")
    assert not (tmp_path / "run" / "recipe.toml").exists()  # nothing trained, the same --out can be used again


def test_with_seeds_the_budget_chooses_once_and_every_seed_trains_that_student(tmp_path, monkeypatch):
    from distill.phases import choose as choose_phase
    from distill.pipeline import run_recipe
    from distill.recipe import recipe_from_dict
    timings, measure = [], choose_phase.measure_candidates
    monkeypatch.setattr(choose_phase, "measure_candidates", lambda *a, **k: timings.append(1) or measure(*a, **k))
    recipe = recipe_from_dict({**BUDGET_RECIPE, "seeds": 2, "export": {"enabled": False},
                               "student": {**BUDGET_RECIPE["student"], "epochs": 1}})
    run_recipe(recipe, out=tmp_path / "run", progress=False)
    seeds = [json.loads((tmp_path / "run" / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert len(timings) == 1, "timed once, in the first seed"
    assert seeds[0]["student_choice"] == seeds[1]["student_choice"]
    assert seeds[0]["student"]["macs"] == seeds[1]["student"]["macs"]
