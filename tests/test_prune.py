"""Specification of structured pruning: `distill.prune` and `distill prune`."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch_pruning as tp
from torch import nn

from distill.cli import main
from distill.errors import DistillError
from distill.export import export_onnx
from distill.models import ModelCard, load_checkpoint, save_checkpoint
from distill.models.registry import last_layer
from distill.prune import prune_model

# a torchvision ResNet (residual couplings) and a plain VGG, at small inputs to stay fast
MODELS = {"resnet18": (3, 64, 64), "cifar_vgg8": (3, 32, 32)}


@pytest.fixture(scope="module", params=list(MODELS))
def pruned(request, tmp_path_factory) -> SimpleNamespace:
    """A 10-class model pruned to half its MACs in two steps, saved as a pruned checkpoint."""
    torch.manual_seed(0)
    card = ModelCard(request.param, 10, MODELS[request.param])
    model = card.build().eval()
    original = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    x = torch.randn(4, *card.input_shape)
    with torch.no_grad():
        before = model(x)
    report = prune_model(model, x[:1], macs_ratio=0.5, steps=2)
    path = tmp_path_factory.mktemp(request.param) / "pruned.pt"
    save_checkpoint(path, model, replace(card, pruned=True))
    return SimpleNamespace(card=card, model=model, original=original, report=report, path=path, x=x,
                           before=before)


def test_pruning_keeps_the_requested_share_of_macs_within_5_percent(pruned):
    report = pruned.report
    macs, params = tp.utils.count_ops_and_params(pruned.model, pruned.x[:1])
    assert report.macs_after == int(macs) and report.params_after == int(params)
    assert report.ratio == pytest.approx(report.macs_after / report.macs_before)
    assert abs(report.ratio - 0.5) <= 0.05 * 0.5 and report.on_target
    assert report.params_after < report.params_before and report.steps == 2


def test_channels_stay_multiples_of_8_and_the_head_keeps_its_outputs(pruned):
    convs = {n: m for n, m in pruned.model.named_modules() if isinstance(m, nn.Conv2d)}
    assert any(convs[n].out_channels < c for n, c in pruned.original.items())
    assert all(m.out_channels % 8 == 0 for m in convs.values())
    assert all(m.num_features % 8 == 0 for m in pruned.model.modules() if isinstance(m, nn.BatchNorm2d))
    head = last_layer(pruned.model)[1]
    assert head.out_features == 10 and head.in_features % 8 == 0


def test_pruned_checkpoint_reloads_with_weights_only_and_gives_the_same_outputs(pruned):
    assert torch.load(pruned.path, weights_only=True)["card"]["pruned"] is True
    model, card = load_checkpoint(pruned.path)
    assert card.pruned
    with torch.no_grad():
        out = model(pruned.x)
        assert out.shape == pruned.before.shape
        torch.testing.assert_close(out, pruned.model(pruned.x), rtol=0, atol=1e-6)


def test_pruned_model_exports_to_onnx_with_parity(pruned, tmp_path):
    model, card = load_checkpoint(pruned.path)
    report = export_onnx(model, card, tmp_path / "pruned.onnx")  # raises unless ORT matches torch
    assert report.path.exists() and max(report.max_abs_diff.values()) <= 1e-4


SMALL = (3, 16, 16)  # cifar_vgg8 pools globally, so 16x16 inputs keep the next tests quick


def vgg8() -> nn.Module:
    torch.manual_seed(0)
    return ModelCard("cifar_vgg8", 10, SMALL).build().eval()


@pytest.mark.parametrize("importance", ["magnitude", "lamp"])
def test_magnitude_and_lamp_importance_reach_the_target(importance):
    report = prune_model(vgg8(), torch.randn(1, *SMALL), macs_ratio=0.6, importance=importance, steps=1)
    assert abs(report.ratio - 0.6) <= 0.05 * 0.6 and report.importance == importance


def test_taylor_importance_ranks_channels_by_the_calibration_gradients():
    x = torch.randn(8, *SMALL, generator=torch.Generator().manual_seed(1))
    with pytest.raises(DistillError, match="calibration batch"):
        prune_model(vgg8(), x[:1], importance="taylor")
    kept = []
    for labels in (torch.zeros(8, dtype=torch.long), torch.arange(8)):
        model = vgg8()
        report = prune_model(model, x[:1], macs_ratio=0.6, importance="taylor", steps=1,
                             calibration=(x, labels))
        assert abs(report.ratio - 0.6) <= 0.05 * 0.6
        kept.append(model.classifier.weight)
    assert kept[0].shape != kept[1].shape or not torch.equal(kept[0], kept[1])


def test_ignored_layers_keep_their_channels():
    model = vgg8()
    prune_model(model, torch.randn(1, *SMALL), macs_ratio=0.5, steps=1, ignored_layers=["block0.0"])
    assert model.block0[0].out_channels == 64 and model.block1[0].out_channels < 128
    with pytest.raises(DistillError, match="no layer 'block0.9' in CifarVGG .*did you mean"):
        prune_model(vgg8(), torch.randn(1, *SMALL), ignored_layers=["block0.9"])


@pytest.mark.parametrize("settings, message", [
    ({"macs_ratio": 0.0}, "between 0 and 1"),
    ({"macs_ratio": 1.0}, "between 0 and 1"),
    ({"macs_ratio": 1.5}, "between 0 and 1"),
    ({"importance": "tayler"}, "did you mean 'taylor'"),
    ({"steps": 0}, "steps: expected a positive integer"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(DistillError, match=message):
        prune_model(nn.Linear(4, 2), torch.randn(1, 4), **settings)


class HardCodedWidth(nn.Module):
    """Its forward assumes 64 channels, which no dependency graph can see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x).relu()).reshape(-1, 64 * 8 * 8))


def test_a_model_torch_pruning_cannot_follow_is_a_distill_error():
    with pytest.raises(DistillError, match="torch-pruning cannot prune HardCodedWidth"):
        prune_model(HardCodedWidth(), torch.randn(1, 3, 8, 8), steps=1)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "vgg.pt"
    save_checkpoint(path, vgg8(), ModelCard("cifar_vgg8", 10, SMALL))
    return path


def test_cli_writes_the_pruned_checkpoint_and_prints_a_summary(checkpoint, tmp_path, capsys):
    out = tmp_path / "half.pt"
    main(["prune", str(checkpoint), "--macs", "0.5", "--steps", "1", "--importance", "taylor",
          "--batch", "8", "-o", str(out)])
    captured = capsys.readouterr()
    assert "random inputs" in captured.err  # taylor without --data warns
    assert "MACs" in captured.out and "params" in captured.out and f"wrote {out}" in captured.out
    model, card = load_checkpoint(out)
    assert card.pruned and model(torch.randn(2, *SMALL)).shape == (2, 10)
    extra = torch.load(out, weights_only=True)["extra"]
    assert extra["pruned_from"] == str(checkpoint) and extra["prune"]["importance"] == "taylor"
    assert abs(extra["prune"]["ratio"] - 0.5) <= 0.05 * 0.5


def test_cli_rejects_a_bad_macs_ratio_with_exit_2_and_one_line(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(checkpoint), "--macs", "1.5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error:") and "between 0 and 1" in err and len(err.strip().splitlines()) == 1
