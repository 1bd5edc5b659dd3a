"""`distill export`: a verified ONNX file (and optionally its int8 version) from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import click

from .options import POSITIVE, POSITIVE_NUMBER


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write (default: CHECKPOINT with .onnx).")
@click.option("--atol", type=POSITIVE_NUMBER, default=1e-4, show_default=True,
              help="Max |ORT - PyTorch| on logits before the export fails.")
@click.option("--opset", default=18, show_default=True,
              help="ONNX opset (17 up to the newest the installed onnx knows).")
@click.option("--int8", is_flag=True, help="Also write OUTPUT.int8.onnx: static int8 quantization with ONNX Runtime.")
@click.option("--calibration", type=POSITIVE, default=256, show_default=True,
              help="Training images that calibrate the int8 scales.")
@click.option("--data", "data_name", default=None,
              help="Dataset (e.g. cifar10): a real batch to verify on, int8 calibration and accuracy.")
@click.option("--data-root", default=None, help="Folder with <dataset>.npz files (default: $DISTILL_DATA).")
@click.option("--max-samples", type=POSITIVE, default=None,
              help="Test images for the int8 accuracy check (default: all).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--trust-code", is_flag=True,
              help="Let checkpoints build 'package.module:factory' models, running that code: only for "
                   "files you trust.")
def export(checkpoint: Path, output: Path | None, atol: float, opset: int, int8: bool, calibration: int,
           data_name: str | None, data_root: str | None, max_samples: int | None, quiet: bool,
           trust_code: bool) -> None:
    """Export CHECKPOINT to ONNX (dynamic batch axis, preprocessing in the metadata) and verify it
    against PyTorch with ONNX Runtime; a difference above --atol fails the command.

    \b
    Examples:
      distill export runs/quickstart/student.pt -o student.onnx
      distill export runs/cifar/student.pt --data cifar10 --int8     # verify on real images, add int8
    """
    import torch

    from ..data import take_batch
    from ..export import check_opset, export_onnx, load_onnx, quantize_int8, run_onnx
    from ..files import refuse_overwrite
    from ..models import load_checkpoint

    check_opset(opset)
    output = output or checkpoint.with_suffix(".onnx")
    int8_output = output.with_name(output.name.removesuffix(".onnx") + ".int8.onnx")
    outputs = [("--output", output), ("--output's external data", output.with_name(output.name + ".data"))]
    refuse_overwrite(outputs + ([("the int8 output", int8_output)] if int8 else []), [checkpoint, data_name])
    model, card = load_checkpoint(checkpoint, trust_code)
    bundle = None
    if data_name:
        from ..model_data import data_for_card
        bundle = data_for_card(data_name, card, root=data_root)
    sample = take_batch(bundle.test, 32)[0] if bundle else None
    report = export_onnx(model, card, output, sample=sample, atol=atol, opset=opset)
    click.echo(report.summary())
    if not int8:
        return

    if bundle:
        calib = take_batch(bundle.train_plain, calibration, shuffle=True)[0]
        source = f"{len(calib)} random {data_name} training images"
    else:
        gen = torch.Generator().manual_seed(0)
        calib, source = torch.randn(calibration, *card.input_shape, generator=gen), "random inputs (no --data)"
        click.echo(f"warning: calibrating int8 on {source}: scales may not fit real images; pass --data")
    q = quantize_int8(output, int8_output, calib)
    check = sample if sample is not None else torch.randn(64, *card.input_shape,
                                                          generator=torch.Generator().manual_seed(1))
    agree = float((run_onnx(load_onnx(q), check).argmax(1) == run_onnx(load_onnx(output), check).argmax(1)).mean())
    click.echo(f"wrote {q} (calibrated on {source}); top-1 agrees with float32 on {100 * agree:.1f}% "
               f"of {len(check)} {'test' if sample is not None else 'random'} inputs")

    from ..bench import benchmark
    result = benchmark({"float32": output, "int8": q}, runtimes=("ort",), rounds=10, round_time=0.1,
                       data=bundle.test if bundle else None, max_samples=max_samples, progress=not quiet)
    f, i = result.row("float32", "ort"), result.row("int8", "ort")
    speed = i["speedup_vs_teacher"]
    verdict = "faster" if speed >= 1 else "SLOWER on this CPU"
    click.echo(f"int8 is {speed:.2f}x the speed of float32 in ONNX Runtime ({verdict}): p50 "
               f"{i['batches']['1']['p50_ms']:.3g} ms vs {f['batches']['1']['p50_ms']:.3g} ms at batch 1, "
               f"{result.machine['threads']} threads")
    if i["accuracy"] is None:
        click.echo("int8 accuracy change: unknown without --data")
    else:
        click.echo(f"int8 accuracy {100 * i['accuracy']:.2f}% vs float32 {100 * f['accuracy']:.2f}% "
                   f"({100 * i['accuracy_delta_vs_teacher']:+.2f} pts on "
                   f"{result.settings['accuracy_samples']} test images)")
