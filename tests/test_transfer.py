"""Adapting a pretrained teacher: what each strategy may change, what auto picks, local weights."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from distill.cli import main
from helpers import counted_over, image_folder
from distill.errors import DistillError
from distill.models import ModelCard, build_model, load_checkpoint, save_checkpoint
from distill.settings import Schedule
from distill.strategy import FEW_LABELS_PER_CLASS, choose_strategy
from distill.transfer import adapt_teacher

CLASSES, SHAPE = 4, (3, 32, 32)


class RecordingSchedule(Schedule):
    """A Schedule that keeps the optimizer it makes, to read the learning rates of its groups."""

    def make_optimizer(self, params):
        self.optimizer = super().make_optimizer(params)
        return self.optimizer


def schedule() -> RecordingSchedule:
    return RecordingSchedule(epochs=1, batch_size=8, lr=0.05, scheduler="constant")


@pytest.fixture
def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % CLASSES
    return TensorDataset(torch.randn(24, *SHAPE, generator=g), labels)


@pytest.fixture
def resnet18():
    """A small torchvision ResNet-18 (32x32 inputs) standing in for a pretrained network."""
    torch.manual_seed(0)
    return build_model("resnet18", CLASSES, SHAPE)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_feature_extraction_changes_the_head_only_not_one_backbone_weight_or_bn_statistic(resnet18, data):
    before = snapshot(resnet18)
    assert any(k.endswith("running_mean") for k in before)  # BN buffers are part of the comparison
    adapt_teacher(resnet18, "feature_extraction", data, schedule(), progress=False)
    assert changed(before, resnet18) == {"fc.weight", "fc.bias"}


def test_finetune_from_layer4_changes_layer4_and_the_head_only_and_keeps_frozen_bn_stats(resnet18, data):
    before = snapshot(resnet18)
    params = {name for name, _ in resnet18.named_parameters()}
    plan = schedule()
    adapt_teacher(resnet18, "finetune", data, plan, finetune_from="layer4", backbone_lr_scale=0.1,
                  progress=False)
    diff = changed(before, resnet18)
    trained = {k for k in params if k.startswith(("layer4.", "fc."))}
    assert diff & params == trained  # every parameter from layer4 on changed, no earlier one
    assert not {k for k in diff if not k.startswith(("layer4.", "fc."))}  # frozen BN stats included
    assert "layer4.0.bn1.running_mean" in diff  # the trained part's BN keeps learning statistics
    head, backbone = plan.optimizer.param_groups
    assert head["lr"] == pytest.approx(0.05) and backbone["lr"] == pytest.approx(0.005)
    assert sum(p.numel() for p in backbone["params"]) == \
        sum(p.numel() for n, p in resnet18.named_parameters() if n.startswith("layer4."))


def test_full_changes_every_parameter_with_the_backbone_at_the_smaller_rate(resnet18, data):
    before = snapshot(resnet18)
    plan = schedule()
    adapt_teacher(resnet18, "full", data, plan, backbone_lr_scale=0.1, progress=False)
    assert {name for name, _ in resnet18.named_parameters()} <= changed(before, resnet18)
    head, backbone = plan.optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in resnet18.fc.parameters()}
    assert len(head["params"]) + len(backbone["params"]) == len(list(resnet18.parameters()))
    assert head["lr"] == pytest.approx(0.05) and backbone["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("pretrained, per_class, expected", [
    (True, 10, "feature_extraction"),
    (True, FEW_LABELS_PER_CLASS - 1, "feature_extraction"),
    (True, FEW_LABELS_PER_CLASS, "full"),
    (True, 5000, "full"),
    (False, 10, "scratch"),
    (False, 5000, "scratch"),
])
def test_auto_keeps_the_backbone_fixed_with_few_labels_and_fine_tunes_with_many(pretrained, per_class, expected):
    decision = choose_strategy("auto", pretrained, per_class)
    assert decision.strategy == expected
    assert decision.reason  # says why


@pytest.mark.parametrize("requested, pretrained, message", [
    ("scratch", True, "teacher.weights is set"),
    ("finetune", False, "needs pretrained weights"),
    ("feature_extraction", False, "needs pretrained weights"),
])
def test_strategies_that_contradict_the_weights_are_refused(requested, pretrained, message):
    with pytest.raises(DistillError, match=message):
        choose_strategy(requested, pretrained, 50)


@pytest.mark.parametrize("arch", ["resnet18", "resnet8"])  # torchvision and the 32x32 family
@pytest.mark.parametrize("plain_state_dict", [False, True])
def test_weights_from_a_local_checkpoint_load_exactly_except_the_replaced_head(arch, plain_state_dict, tmp_path):
    torch.manual_seed(1)
    source = build_model(arch, 10, SHAPE)
    path = tmp_path / "pretrained.pt"
    if plain_state_dict:
        torch.save(source.state_dict(), path)
    else:
        save_checkpoint(path, source, ModelCard(arch, 10, SHAPE))
    adapted = build_model(arch, CLASSES, SHAPE, weights=str(path))
    new, old = adapted.state_dict(), source.state_dict()
    head = {"fc.weight", "fc.bias"}
    assert all(torch.equal(new[k], old[k]) for k in old if k not in head)
    assert new["fc.weight"].shape[0] == CLASSES
    same_classes = build_model(arch, 10, SHAPE, weights=str(path)).state_dict()
    assert all(torch.equal(same_classes[k], old[k]) for k in old)  # a head that fits is kept


# ----------------------------------------------------------------------------- end to end


RECIPE = """
name = "transfer_e2e"
[data]
name = "imagefolder"
path = "{images}"
image_size = 32
[teacher]
model = "resnet18"
weights = "{weights}"
strategy = "{strategy}"
finetune_from = "layer4"
epochs = 1
batch_size = 8
lr = 0.01
[student]
model = "small_cnn"
options = {{ width = 4 }}
epochs = 1
batch_size = 8
[[distill.terms]]
loss = "kd"
"""


@pytest.mark.parametrize("strategy, trained", [("feature_extraction", ("fc.",)), ("finetune", ("layer4.",))])
def test_an_imagefolder_recipe_adapts_a_local_pretrained_teacher_end_to_end(strategy, trained, tmp_path, capsys):
    torch.manual_seed(0)
    pretrained = build_model("resnet18", 7, SHAPE)  # "pretrained" on another task with 7 classes
    weights = tmp_path / "pretrained.pt"
    save_checkpoint(weights, pretrained, ModelCard("resnet18", 7, SHAPE))
    recipe = tmp_path / "recipe.toml"
    images = image_folder(tmp_path / "images", size=36)
    recipe.write_text(RECIPE.format(images=images, weights=weights, strategy=strategy))
    out = tmp_path / "run"
    try:
        main(["run", str(recipe), "--out", str(out), "-q", "--device", "cpu"])
    except SystemExit as e:
        pytest.fail(f"exit {e.code}: {capsys.readouterr().err}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["strategy"] == strategy
    assert counted_over(metrics["student"]["test_accuracy"], metrics["data"]["test"])
    teacher, card = load_checkpoint(out / "teacher.pt")
    assert card.num_classes == 3
    old, new = pretrained.state_dict(), teacher.state_dict()
    backbone = {name for name, _ in teacher.named_parameters() if not name.startswith("fc.")}
    moved = {k for k in old if not k.startswith("fc.") and not torch.equal(old[k], new[k])}
    assert not {k for k in moved if not k.startswith(trained)}  # the frozen part, BN stats included
    assert moved & backbone == {k for k in backbone if k.startswith(trained)}
