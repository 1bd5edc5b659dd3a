"""ONNX export: verified parity, dynamic batch, metadata, int8, and loud failures."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from distill.cli import main
from distill.errors import DistillError
from distill.export import (card_from_onnx, export_onnx, load_onnx, onnx_metadata, quantize_int8, run_onnx,
                            verify_onnx)
from distill.models import ModelCard, build_model, save_checkpoint


def small_card(width: int = 8) -> ModelCard:
    return ModelCard("small_cnn", 10, (1, 8, 8), kwargs={"width": width}, mean=(0.5,), std=(0.25,),
                     class_names=[f"digit {i}" for i in range(10)])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small CNN exported once, verified on a random and a real batch."""
    torch.manual_seed(0)
    card = small_card()
    model = card.build().eval()
    path = tmp_path_factory.mktemp("export") / "small.onnx"
    report = export_onnx(model, card, path, sample=torch.randn(4, 1, 8, 8))
    return model, card, path, report


def test_export_is_a_single_checked_file_verified_on_random_and_real_batches(small):
    _, _, path, report = small
    assert report.path == path and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no external data, no leftovers
    onnx.checker.check_model(str(path))
    assert set(report.max_abs_diff) == {"random", "real"}
    assert all(d <= 1e-4 for d in report.max_abs_diff.values())
    assert report.opset >= 17 and report.exporter in ("dynamo", "torchscript")
    assert "wrote" in report.summary() and "matches PyTorch" in report.summary()


def test_onnx_runs_at_batch_sizes_other_than_the_export_batch(small):
    model, _, path, _ = small
    session = load_onnx(path)
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            np.testing.assert_allclose(run_onnx(session, x), model(x).numpy(), atol=1e-4)


def test_metadata_carries_the_preprocessing_from_the_model_card(small):
    _, card, path, _ = small
    meta = onnx_metadata(path)
    assert meta["input_shape"] == ["batch", 1, 8, 8] and meta["layout"] == "NCHW"
    assert meta["mean"] == [0.5] and meta["std"] == [0.25]
    assert meta["class_names"][3] == "digit 3" and meta["precision"] == "float32"
    assert meta["macs"] > 0 and meta["params"] == sum(p.numel() for p in card.build().parameters())
    assert card_from_onnx(path) == card


def test_verification_fails_naming_the_difference_when_onnx_and_pytorch_disagree(small):
    model, card, path, _ = small
    changed = card.build().eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.classifier.bias.add_(0.5)
    with pytest.raises(DistillError, match=r"differs from PyTorch by 0\.5\d* \(max abs on logits"):
        verify_onnx(path, changed, torch.randn(3, 1, 8, 8), atol=1e-4)


def test_a_failed_verification_leaves_no_file_behind(tmp_path, monkeypatch):
    import distill.export as ex
    card = small_card()
    other = card.build().eval()  # the exporter "writes" a different model than the one verified
    real_export = ex._export
    monkeypatch.setattr(ex, "_export", lambda model, x, path, opset: real_export(other, x, path, opset))
    with pytest.raises(DistillError, match="differs from PyTorch by"):
        export_onnx(card.build().eval(), card, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_torchvision_model_exports_and_keeps_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    card = ModelCard("resnet18", 10, (3, 64, 64))
    model = build_model("resnet18", 10, (3, 64, 64)).eval()
    report = export_onnx(model, card, tmp_path / "resnet18.onnx", atol=1e-4)
    x = torch.randn(3, 3, 64, 64)
    assert verify_onnx(report.path, model, x) <= 1e-4


def test_pruned_model_exports(tmp_path):
    import torch_pruning as tp
    torch.manual_seed(0)
    card = small_card(width=16)
    model = card.build().eval()
    tp.pruner.MagnitudePruner(model, torch.randn(1, 1, 8, 8), importance=tp.importance.MagnitudeImportance(p=2),
                              pruning_ratio=0.5, ignored_layers=[model.classifier]).step()
    assert model.stage1[0].out_channels == 8
    report = export_onnx(model, card, tmp_path / "pruned.onnx", sample=torch.randn(2, 1, 8, 8))
    assert max(report.max_abs_diff.values()) <= 1e-4


def test_int8_model_runs_and_mostly_agrees_with_float(small, tmp_path):
    _, _, path, _ = small
    calibration = torch.randn(64, 1, 8, 8)
    q = quantize_int8(path, tmp_path / "small.int8.onnx", calibration)
    meta = onnx_metadata(q)
    assert meta["precision"] == "int8" and meta["mean"] == [0.5]  # metadata survives quantization
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(q)).graph.node)
    x = torch.randn(200, 1, 8, 8)
    agree = (run_onnx(load_onnx(q), x).argmax(1) == run_onnx(load_onnx(path), x).argmax(1)).mean()
    assert agree >= 0.8


def test_a_file_that_is_not_onnx_is_a_distill_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff")
    for read in (onnx_metadata, load_onnx):
        with pytest.raises(DistillError, match="is not an ONNX model: .*expected a file written by distill export"):
            read(bad)
    with pytest.raises(DistillError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")


def test_sample_with_the_wrong_shape_is_refused(small, tmp_path):
    model, card, _, _ = small
    with pytest.raises(DistillError, match=r"shape \(2, 3, 8, 8\); expected \(N, 1, 8, 8\)"):
        export_onnx(model, card, tmp_path / "x.onnx", sample=torch.randn(2, 3, 8, 8))


def test_cli_export_writes_a_verified_file_and_reports_user_errors_on_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    card = small_card()
    save_checkpoint(tmp_path / "student.pt", card.build(), card)
    main(["export", str(tmp_path / "student.pt"), "-o", str(tmp_path / "out" / "student.onnx")])
    assert "matches PyTorch" in capsys.readouterr().out
    assert onnx_metadata(tmp_path / "out" / "student.onnx")["arch"] == "small_cnn"

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")


def test_onnx_student_predictions_agree_with_pytorch_on_at_least_999_per_mille_of_a_test_set(tmp_path):
    from distill import Schedule, Supervised, fit
    from distill.data import load_data
    from distill.export import load_onnx, run_onnx

    data = load_data("digits", augment=False)
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes, data.input_shape, width=8)
    fit(Supervised(model), data.train, Schedule(epochs=2), progress=False)
    card = ModelCard("small_cnn", data.num_classes, data.input_shape, {"width": 8}, data.mean, data.std)
    export_onnx(model, card, tmp_path / "s.onnx")
    images = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.no_grad():
        torch_pred = model.eval()(images).argmax(1).numpy()
    onnx_pred = run_onnx(load_onnx(tmp_path / "s.onnx"), images).argmax(1)
    assert (torch_pred == onnx_pred).mean() >= 0.999
