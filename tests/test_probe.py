"""Linear probes per depth: one score per layer, choices on val only, `distill probe` end to end."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from helpers import cli as run_cli
from helpers import counted_over
from distill.errors import DistillError
from distill.models import ModelCard, build_model, save_checkpoint
from distill.probe import (LayerScore, ProbeResult, default_layers, pooled_features, probe_layers,
                           stratified_folds, write_probe_report)

CLASSES = 3


def colour_data(n: int, seed: int) -> TensorDataset:
    """8x8 noise images whose class is the brightest channel: linearly separable after pooling."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randn(n, 3, 8, 8, generator=g)
    images[torch.arange(n), labels] += 1.5
    return TensorDataset(images, labels)


class LostSignal(nn.Module):
    """`early` keeps the colour cue; `late` (all-zero weights) throws it away, as an over-specialised
    top would; the head only sees `late`."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Conv2d(3, 6, 1)
        self.late = nn.Conv2d(6, 6, 1)
        nn.init.zeros_(self.late.weight)
        nn.init.zeros_(self.late.bias)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.late(torch.relu(self.early(x)))).flatten(1))


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", CLASSES, (3, 8, 8), width=4)


def cli(*args: str, capsys, expect: int = 0) -> str:
    code, text = run_cli(list(args), capsys)
    assert code == expect, text
    return text


def test_one_score_per_requested_layer_with_its_pooled_feature_size(cnn):
    layers = ["stage3", "stage1", "logits", "stage2", "classifier"]
    result = probe_layers(cnn, layers, colour_data(60, 0), colour_data(30, 1), l2_grid=(1e-2,))
    depth_order = ["stage1", "stage2", "stage3", "classifier", "logits"]
    assert [s.layer for s in result.scores] == depth_order
    assert [s.feature_dim for s in result.scores] == [4, 8, 16, CLASSES, CLASSES]
    for s in result.scores:  # counts over the 60 training (held out in turn) and 30 test images
        assert counted_over(s.train_accuracy, 60) and counted_over(s.val_accuracy, 60), s
        assert counted_over(s.test_accuracy, 30), s
    assert result.best in layers


def test_an_earlier_layer_is_recommended_when_the_top_has_lost_the_signal():
    torch.manual_seed(0)
    result = probe_layers(LostSignal(), ["early", "late"], colour_data(90, 0), colour_data(60, 1))
    early, late = result.score("early"), result.score("late")
    assert early.val_accuracy > 0.9 and early.test_accuracy > 0.9
    assert late.val_accuracy <= 1 / CLASSES + 0.1  # a constant feature: chance level
    assert result.best == "early" and result.near_best() == ["early"]
    assert "rather than the top" in result.recommendation()


def test_layers_within_the_noise_of_the_best_are_named_as_too_close_to_call():
    def score(layer: str, val: float) -> LayerScore:
        return LayerScore(layer, 8, 1.0, val, 0.5, 1e-2, 0.3)

    scores = [score("a", 0.70), score("b", 0.82), score("c", 0.90), score("d", 0.86)]
    few = ProbeResult(scores, "c", 50, 50, 100, "5-fold cross-validation")
    assert few.margin() == pytest.approx(1.96 * (0.9 * 0.1 / 50) ** 0.5)  # about 0.083
    assert few.near_best() == ["b", "c", "d"] and "b, d are within the 95% interval" in few.recommendation()
    many = ProbeResult(scores, "c", 5000, 5000, 100, "5-fold cross-validation")
    assert many.near_best() == ["c"] and "too close" not in many.recommendation()


def test_features_are_global_average_pooled_maps_from_one_pass_over_the_data(cnn):
    data = colour_data(20, 0)
    calls = []
    cnn.register_forward_hook(lambda *args: calls.append(1))
    features, labels = pooled_features(cnn, ["stage1", "stage3", "classifier"], data, batch_size=8)
    assert len(calls) == 3  # ceil(20 / 8) batches, all layers at once
    images = data.tensors[0]
    with torch.no_grad():
        cnn.eval()
        assert torch.allclose(features["stage1"], cnn.stage1(images).mean((2, 3)), atol=1e-6)
        assert torch.allclose(features["classifier"], cnn(images), atol=1e-6)  # 2-D: as it is
    assert torch.equal(labels, data.tensors[1])


def test_choices_never_look_at_the_test_set(cnn):
    train, test = colour_data(60, 0), colour_data(30, 1)
    scrambled = TensorDataset(test.tensors[0], test.tensors[1].roll(1))
    a = probe_layers(cnn, ["stage1", "stage3"], train, test)
    b = probe_layers(cnn, ["stage1", "stage3"], train, scrambled)
    assert a.best == b.best
    assert [(s.val_accuracy, s.l2) for s in a.scores] == [(s.val_accuracy, s.l2) for s in b.scores]
    assert [s.test_accuracy for s in a.scores] != [s.test_accuracy for s in b.scores]


def test_choices_use_the_val_split_when_given_else_cross_validation_on_all_of_train(cnn):
    train, val, test = colour_data(60, 0), colour_data(15, 2), colour_data(30, 1)
    given = probe_layers(cnn, ["stage3"], train, test, val=val)
    assert (given.n_train, given.n_val, given.n_test) == (60, 15, 30)
    crossed = probe_layers(cnn, ["stage3"], train, test, folds=4)
    assert (crossed.n_train, crossed.n_val) == (60, 60)  # every image held out once, then all refitted
    assert "4-fold cross-validation" in crossed.val_source
    with pytest.raises(DistillError, match="cannot cross-validate 6 training images in 5 folds"):
        probe_layers(cnn, ["stage3"], colour_data(6, 0), test)


def test_folds_are_disjoint_cover_everything_and_keep_class_balance():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 15)
    folds = stratified_folds(labels, 5, seed=3)
    held = torch.cat([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(30))  # each position held out exactly once
    for fit, h in folds:
        assert set(fit.tolist()).isdisjoint(h.tolist()) and len(fit) + len(h) == 30
        assert torch.bincount(labels[h], minlength=3).tolist() == [2, 1, 3]
    assert [h.tolist() for _, h in folds] == [h.tolist() for _, h in stratified_folds(labels, 5, seed=3)]


def test_probing_twice_gives_identical_results(cnn):
    args = (cnn, ["stage2"], colour_data(60, 0), colour_data(30, 1))
    assert probe_layers(*args).to_dict() == probe_layers(*args).to_dict()


def test_an_unknown_layer_is_a_distill_error_naming_the_nearest_paths(cnn):
    with pytest.raises(DistillError, match="no layer 'stage9'.*stage"):
        probe_layers(cnn, ["stage1", "stage9"], colour_data(30, 0), colour_data(30, 1))


def test_default_layers_are_the_top_level_children_with_parameters(cnn):
    assert default_layers(cnn) == ["stage1", "stage2", "stage3", "classifier"]  # not the pool
    resnet = build_model("resnet18", 10, (3, 32, 32))
    assert default_layers(resnet) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_the_report_is_a_json_with_every_score_and_a_png_plot(cnn, tmp_path):
    result = probe_layers(cnn, ["stage1", "stage2"], colour_data(60, 0), colour_data(30, 1), l2_grid=(1e-2,))
    json_path, png_path = write_probe_report(result, tmp_path / "report", title="t")
    report = json.loads(json_path.read_text())
    assert [s["layer"] for s in report["scores"]] == ["stage1", "stage2"]
    assert report["best"] == result.best and report["recommendation"] == result.recommendation()
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- command line

@pytest.fixture
def digits_checkpoint(tmp_path):
    torch.manual_seed(0)
    card = ModelCard("small_cnn", 10, (1, 8, 8), {"width": 4}, (0.3051,), (0.3761,))
    path = tmp_path / "run" / "teacher.pt"
    save_checkpoint(path, card.build(), card)
    return path


def test_cli_probes_a_checkpoint_on_named_data_and_writes_the_report(digits_checkpoint, tmp_path, capsys):
    text = cli("probe", str(digits_checkpoint), "--data", "digits", "--layers", "stage2,stage3",
               "--per-class", "10", "--test-limit", "100", "--device", "cpu", capsys=capsys)
    assert "stage2" in text and "stage3" in text and "<- best" in text and "recommendation:" in text
    report = json.loads((digits_checkpoint.parent / "teacher_probe" / "probe.json").read_text())
    assert len(report["scores"]) == 2 and report["n_test"] == 100
    assert report["n_train"] == report["n_val"] == 100  # 10 classes x 10, cross-validated
    assert (digits_checkpoint.parent / "teacher_probe" / "probe.png").is_file()


RECIPE = """
name = "probe_digits"
[data]
name = "digits"
[teacher]
model = "small_cnn"
options = { width = 6 }
[student]
model = "mlp"
options = { hidden = [8] }
"""


def test_cli_probes_a_recipes_teacher_as_built_or_from_its_run(digits_checkpoint, tmp_path, capsys):
    recipe = tmp_path / "probe_digits.toml"
    recipe.write_text(RECIPE)
    common = ["--per-class", "10", "--test-limit", "50", "--layers", "stage3", "--device", "cpu"]
    text = cli("probe", str(recipe), *common, "--out", str(tmp_path / "built"), capsys=capsys)
    assert "random features" in text  # the recipe's teacher has no pretrained weights
    assert json.loads((tmp_path / "built" / "probe.json").read_text())["scores"][0]["feature_dim"] == 24
    card = ModelCard("small_cnn", 10, (1, 8, 8), {"width": 6}, (0.3051,), (0.3761,))  # a run of this recipe
    trained = tmp_path / "run6" / "teacher.pt"
    save_checkpoint(trained, card.build(), card)
    text = cli("probe", str(recipe), *common, "--run", str(trained.parent), capsys=capsys)
    assert "random features" not in text  # the run's trained teacher, not the recipe's as built
    report = json.loads((trained.parent / "teacher_probe" / "probe.json").read_text())
    assert str(trained) in report["title"] and report["scores"][0]["feature_dim"] == 24


@pytest.mark.parametrize("args, message", [
    (["--data", "digits", "--layers", "stage9"], "no layer 'stage9'"),
    ([], "needs data; expected --data"),
    (["--data", "digits", "--classes", "a,b"], "--classes 'a,b': expected a comma-separated list"),
    (["--data", "digits", "--run", "somewhere"], "--run and --set apply to a recipe"),
    (["--data", "digits", "--per-class", "1", "--layers", "stage1"],  # five folds of one image per class
     "cannot cross-validate 10 training images in 5 folds (the largest class has 1); expected"),
    (["--data", "digits", "--per-class", "2", "--folds", "3", "--layers", "stage1"],
     "cannot cross-validate 20 training images in 3 folds (the largest class has 2)"),
])
def test_cli_mistakes_on_a_checkpoint_are_one_line_errors(digits_checkpoint, args, message, capsys):
    text = cli("probe", str(digits_checkpoint), *args, capsys=capsys, expect=2)
    assert message in text and "Traceback" not in text and len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--run", "{tmp}"], "has no teacher.pt"),
    (["--data", "mnist"], "--data and --classes apply to a checkpoint"),
])
def test_cli_mistakes_on_a_recipe_are_one_line_errors(args, message, tmp_path, capsys):
    args = [a.format(tmp=tmp_path) for a in args]
    text = cli("probe", "quickstart", *args, capsys=capsys, expect=2)
    assert message in text and len(text.strip().splitlines()) == 1


def test_cli_help_shows_examples(capsys):
    text = cli("probe", "--help", capsys=capsys)
    assert "Examples:" in text and "--classes 5,6,7,8,9" in text and "--run runs/quickstart" in text


def test_probe_run_refuses_a_run_directory_of_another_recipe(tmp_path, capsys):
    """`--run DIR` probes DIR's trained teacher as the recipe's: a run of another recipe would be
    probed, and reported, as if it were this one."""
    other = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 32})
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "teacher.pt", other.build(), other)
    (tmp_path / "r.toml").write_text('name = "r"\n[data]\nname = "digits"\n[teacher]\nmodel = "small_cnn"\n'
                                     'options = { width = 16 }\n[student]\nmodel = "mlp"\n')
    text = cli("probe", str(tmp_path / "r.toml"), "--run", str(tmp_path / "run"), capsys=capsys, expect=2)
    assert "expected the --run directory of a run of this recipe" in text


def test_a_checkpoint_without_the_usual_suffix_is_probed_as_a_checkpoint(tmp_path, capsys):
    card = ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": 4})
    save_checkpoint(tmp_path / "teacher", card.build(), card)
    text = cli("probe", str(tmp_path / "teacher"), capsys=capsys, expect=2)
    assert "probing checkpoint" in text and "expected --data NAME" in text
