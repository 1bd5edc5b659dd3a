"""ONNX export that proves itself, and static int8 quantization.

Every export is checked twice before it lands at its path: `onnx.checker`, then ONNX Runtime
against PyTorch on a random batch (and a real batch when given). A file that disagrees with its
model by more than `atol` is never written, and the error says by how much.

The model's preprocessing (input shape, mean/std, class names: its `ModelCard`) travels in the
ONNX `metadata_props`, so an exported file is enough to feed the model correctly.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DistillError
from .files import disk_full_is_one_line, ensure_readable, is_disk_full
from .models import ModelCard

FORMAT = "distill-onnx/1"
INPUT, OUTPUT = "input", "logits"
OPSET = 18
MIN_OPSET = 17  # older opsets lack ops the exporters emit for common vision models
SINGLE_FILE_LIMIT = 1_800_000_000  # protobuf caps a single file at 2 GiB; larger weights go external


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how closely ONNX Runtime matches PyTorch."""

    path: Path
    exporter: str  # "dynamo" (torch.export) or "torchscript" (the fallback)
    opset: int  # as written in the file's opset_import, which can differ from the one asked for
    size_bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # batch label -> max |ORT - torch|
    atol: float = 1e-4
    seconds: float = 0.0
    requested_opset: int | None = None

    def summary(self) -> str:
        diffs = ", ".join(f"{k} batch {v:.1e}" for k, v in self.max_abs_diff.items())
        asked = (f" ({self.requested_opset} was asked for: the exporter could not convert to it)"
                 if self.requested_opset not in (None, self.opset) else "")
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, opset {self.opset}{asked}, {self.exporter} "
                f"exporter, {self.seconds:.1f}s); ONNX Runtime matches PyTorch: max |diff| {diffs} "
                f"<= {self.atol:g}")


def export_onnx(model: nn.Module, card: ModelCard, path: str | Path, *, sample: torch.Tensor | None = None,
                atol: float = 1e-4, opset: int = OPSET) -> ExportReport:
    """Export `model` to ONNX with a dynamic batch axis, then verify it; return what was checked.

    Tries the torch.export-based exporter first and falls back to the TorchScript one. `sample`
    is an optional real batch (N, C, H, W) to verify on besides a random one. The file appears
    at `path` only once verification passed; a mismatch above `atol` raises DistillError.
    """
    check_opset(opset)
    path = Path(path)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(2, *card.input_shape, generator=gen)
        batches = {"random": torch.randn(3, *card.input_shape, generator=gen)}  # another size: proves the axis
        if sample is not None:
            batches["real"] = _check_sample(sample, card)
        with _staging(path) as tmp:
            exporter = _export(model, example, tmp, opset)
            _write_metadata(tmp, {**card_metadata(card), **_cost_metadata(model, card)})
            check_onnx(tmp)
            diffs = {label: verify_onnx(tmp, model, x, atol, label=label) for label, x in batches.items()}
            written = written_opset(tmp)
    finally:
        model.train(was_training)
    return ExportReport(path, exporter, written, onnx_size(path), diffs, atol, time.perf_counter() - start,
                        requested_opset=opset)


def supported_opsets() -> range:
    """The opsets an export can target: MIN_OPSET up to the newest the installed onnx defines (the
    dynamo exporter converts to any of them; newer numbers would be silently written as another)."""
    import onnx
    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_opset(opset: int) -> None:
    """Refuse an opset the exporters cannot write, before any work."""
    opsets = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in opsets:
        raise DistillError(f"opset {opset!r} is not supported; expected {opsets.start} to {opsets[-1]} (the "
                           "opsets torch's exporter can write with the installed onnx)")


def written_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file declares in its opset_import."""
    versions = [o.version for o in _load_proto(Path(path)).opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise DistillError(f"{path} declares no opset for the default ONNX domain; expected a file written "
                           "by distill export")
    return max(versions)


def _check_sample(sample: torch.Tensor, card: ModelCard) -> torch.Tensor:
    sample = torch.as_tensor(sample, dtype=torch.float32)
    if sample.ndim != 1 + len(card.input_shape) or tuple(sample.shape[1:]) != tuple(card.input_shape):
        raise DistillError(f"sample batch has shape {tuple(sample.shape)}; expected (N, "
                           f"{', '.join(map(str, card.input_shape))}) to match the model card")
    return sample


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A temporary `path.name` beside `path`, moved into place (with its `<name>.data`) on success."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise DistillError(f"cannot write {path}: {e.strerror}; expected a writable directory") from e
    try:
        with disk_full_is_one_line(path):
            tmp = folder / path.name
            yield tmp
            for f in sorted(folder.glob(f"{path.name}?*")):  # external data first, then the model
                f.replace(path.parent / f.name)
            tmp.replace(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow the exporters' and quantizer's progress prints, warnings and log lines."""
    log = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int) -> str:
    """Write `model` to `path`, batch axis dynamic; return the name of the exporter that worked."""
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > SINGLE_FILE_LIMIT
    errors = []
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(model, (x,), input_names=[INPUT], output_names=[OUTPUT],
                                        opset_version=opset, dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
            program.save(str(path), external_data=external)
            return "dynamo"
        except Exception as e:  # any tracing failure: fall back to the TorchScript exporter
            if is_disk_full(e):
                raise
            errors.append(f"torch.export: {_first_line(e)}")
        try:
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
            return "torchscript"
        except Exception as e:
            errors.append(f"torchscript: {_first_line(e)}")
    raise DistillError(f"cannot export {type(model).__name__} to ONNX ({'; '.join(errors)}); expected a "
                       "model that torch.export or torch.jit.trace can follow with a batch of any size")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def card_metadata(card: ModelCard) -> dict[str, Any]:
    """The ONNX metadata that says how to feed the model: input, normalisation, classes."""
    return {"distill.format": FORMAT, "distill.card": card.to_dict(), "arch": card.arch,
            "num_classes": card.num_classes, "input_name": INPUT, "output_name": OUTPUT,
            "input_shape": ["batch", *card.input_shape], "layout": "NCHW",
            "preprocessing": "float32 pixels scaled to [0, 1], then (x - mean) / std per channel",
            "mean": list(card.mean),
            "std": list(card.std), "class_names": card.class_names, "pruned": card.pruned,
            "precision": "float32"}


def _cost_metadata(model: nn.Module, card: ModelCard) -> dict[str, Any]:
    from .models.stats import count_macs, count_params
    return {"params": count_params(model), "macs": count_macs(model, card.input_shape)}


def _load_proto(path: Path):
    """The model of an ONNX file without its external tensors, after checking they are all there."""
    import onnx
    from google.protobuf.message import DecodeError
    ensure_readable(path, "ONNX file", "a file written by distill export")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as e:
        raise DistillError(f"{path} is not an ONNX model: {_first_line(e)}; expected a file written by "
                           "distill export") from e
    if proto.ir_version <= 0 or not proto.graph.node:
        raise DistillError(f"{path} is not an ONNX model: it holds no graph; expected a file written by "
                           "distill export")
    external_files(path, proto)
    return proto


def external_files(path: Path, proto: Any) -> list[Path]:
    """The external data files an ONNX model refers to; missing ones, or ones outside the model's
    folder (an absolute or ../ location: a file from elsewhere must not read arbitrary files), are refused."""
    import onnx
    folder = path.parent.resolve()
    found = []
    for name in sorted({e.value for t in _tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL
                        for e in t.external_data if e.key == "location"}):
        file = (folder / name).resolve()
        if Path(name).is_absolute() or not file.is_relative_to(folder):
            raise DistillError(f"ONNX file {path} refers to external data {name!r} outside its folder; expected "
                               "data files beside the model, named relative to it")
        if not file.is_file():
            raise DistillError(f"ONNX file {path} needs its external data file {name}, which is missing; expected "
                               f"{path.parent / name} beside it (copy the model together with its data file)")
        found.append(file)
    return found


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def graph_shapes(path: str | Path) -> tuple[list[int | str], list[int | str]]:
    """Shapes of an ONNX model's single float input and of its first output; a dimension is a
    number when fixed, else its name ('?' when unnamed)."""
    import onnx
    proto = _load_proto(Path(path))
    weights = {t.name for t in proto.graph.initializer}  # old files list weights among the inputs
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        found = ", ".join(f"{i.name} ({onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type)})"
                          for i in inputs) or "none"
        raise DistillError(f"{path} takes inputs {found}; expected one float32 image batch (N, C, H, W)")
    if not proto.graph.output:
        raise DistillError(f"{path} has no output; expected one holding the logits")

    def dims(value: Any) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                for d in value.type.tensor_type.shape.dim]
    return dims(inputs[0]), dims(proto.graph.output[0])


def _write_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Replace the values of `meta` keys in `path`'s metadata_props (JSON-encoded), keep the rest."""
    import onnx
    proto = _load_proto(path)
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in meta}
    del proto.metadata_props[:]
    for key, value in {**kept, **{k: json.dumps(v) for k, v in meta.items()}}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))  # external tensors keep their references: only the graph is rewritten


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata_props of an ONNX file, JSON values decoded (see `card_metadata` for the keys)."""
    out: dict[str, Any] = {}
    for p in _load_proto(Path(path)).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


def card_from_onnx(path: str | Path) -> ModelCard | None:
    """The ModelCard an ONNX file was exported with, or None for a file not written by distill."""
    card = onnx_metadata(path).get("distill.card")
    if card is None:
        return None
    try:
        return ModelCard.from_dict(card, source=f"{path} has a 'distill.card' in its metadata that is not a model card")
    except (KeyError, TypeError, ValueError) as e:
        raise DistillError(f"{path} has a 'distill.card' in its metadata that is not a model card "
                           f"({type(e).__name__}: {e}); expected a file written by distill export") from e


def onnx_size(path: str | Path) -> int:
    """Bytes of an ONNX file plus the external data files it references."""
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_files(path, _load_proto(path)))


def check_onnx(path: str | Path) -> None:
    """Run `onnx.checker` on a file; a rejected model is a DistillError."""
    import onnx
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise DistillError(f"{path} fails the ONNX checker: {_first_line(e)}; expected a valid ONNX "
                           "model (this is an exporter bug: please report it)") from e


def load_onnx(path: str | Path, threads: int | None = None, provider: str = "CPUExecutionProvider"):
    """An ONNX Runtime session for `path` (all graph optimisations, `threads` intra-op threads) on
    `provider` (see `distill.settings.check_provider`).

    Spinning is off so idle ORT threads do not steal cores from other models timed in between.
    """
    import onnxruntime as ort

    from .settings import check_provider
    check_provider(provider)
    path = Path(path)
    _load_proto(path)  # a clear error for a missing or non-ONNX file
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=[provider])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise DistillError(f"ONNX Runtime cannot load {path}: {_first_line(e)}; expected a file written "
                           "by distill export") from e


def run_onnx(session, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The first output of `session` for the batch `x` (float32)."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def verify_onnx(path: str | Path, model: nn.Module, inputs: torch.Tensor, atol: float = 1e-4, *,
                label: str = "given") -> float:
    """Max |ORT(path) - model| on `inputs`; raises DistillError when it exceeds `atol` (or is NaN)."""
    with torch.no_grad():
        expected = model.eval()(torch.as_tensor(inputs, dtype=torch.float32)).numpy()
    if not np.isfinite(expected).all():  # no export can match NaN: raising --atol would not help
        raise DistillError(f"the PyTorch model's own logits on the {label} batch are NaN or infinite, so its export "
                           "cannot be verified; expected a model with finite outputs (NaN or infinite weights: "
                           "it diverged or is damaged)")
    got = run_onnx(load_onnx(path), inputs)
    if got.shape != expected.shape:
        raise DistillError(f"{path} returns shape {got.shape} on the {label} batch; expected "
                           f"{expected.shape} like the PyTorch model")
    diff = float(np.abs(got.astype(np.float64) - expected).max()) if got.size else 0.0
    if not diff <= atol:
        scale = float(np.abs(expected).max()) if expected.size else 0.0
        raise DistillError(f"ONNX Runtime output of {Path(path).name} differs from PyTorch by {diff:.3g} "
                           f"(max abs on logits, {label} batch of {len(expected)}; logits reach {scale:.3g}, "
                           f"so {diff / scale if scale else float('inf'):.2g} of their scale); expected at most "
                           f"{atol:g}: the export is not faithful (raise --atol only if that is acceptable)")
    return diff


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: np.ndarray | torch.Tensor, *,
                  batch_size: int = 16, per_channel: bool = True) -> Path:
    """Static int8 quantization (QDQ, uint8 activations, int8 weights) calibrated on `calibration`.

    `calibration` is a batch of real, preprocessed inputs (N, C, H, W); their activation ranges
    set the int8 scales, so they should look like the data the model will see. The metadata of
    `onnx_path` is kept, with `precision` set to int8.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    meta = onnx_metadata(onnx_path)
    calibration = np.ascontiguousarray(torch.as_tensor(calibration, dtype=torch.float32).numpy())
    if calibration.ndim < 2 or len(calibration) == 0:
        raise DistillError(f"calibration data has shape {calibration.shape}; expected a batch (N, C, H, W) "
                           "of preprocessed inputs with N >= 1")
    input_name = _load_proto(onnx_path).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    with _staging(out_path) as tmp, _quiet():
        source = tmp.with_name("preprocessed.onnx")
        try:  # shape inference + graph cleanup give the quantizer more to work with
            quant_pre_process(str(onnx_path), str(source))
        except Exception:  # optional step: quantize the file as it is
            source = onnx_path
        quantize_static(str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        meta.update(precision="int8", quantization=f"static QDQ, uint8 activations, int8 weights"
                    f"{' per channel' if per_channel else ''}, MinMax over {len(calibration)} inputs")
        _write_metadata(tmp, meta)
        check_onnx(tmp)
    return out_path
