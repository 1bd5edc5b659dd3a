"""The size family of a model: the same design at other widths and depths, as (name, options) pairs.

Choosing a student for a latency budget (`distill.latency`) needs candidates. A user who names
one student and a budget gets this family of it: narrower and wider, shallower and deeper versions
of the same design, each a plain (model name, options) pair a recipe could have written.
"""
from __future__ import annotations

from typing import Any

from ..errors import DistillError

Candidate = tuple[str, dict[str, Any]]

WIDTHS = (0.25, 0.5, 1.0, 2.0)  # width factors of mlp / small_cnn
CIFAR_RESNETS = tuple(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110))
_NAMED = [  # families whose members are separate model names
    CIFAR_RESNETS,
    ("resnet8", "resnet8x4", "resnet32", "resnet32x4"),
    ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"),
    tuple(f"cifar_vgg{d}" for d in (8, 11, 13, 16, 19)),
    ("resnet18", "resnet34", "resnet50"),
    ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"),
    tuple(f"efficientnet_b{i}" for i in range(4)),
]
_SHUFFLE_V2 = ((48, 96, 192, 1024), (116, 232, 464, 1024), (176, 352, 704, 1024), (244, 488, 976, 2048))


def size_family(model: str, options: dict[str, Any]) -> list[Candidate]:
    """Other sizes of `model` (its own size among them), keeping the options the family does not vary."""
    found = _family(model, dict(options))
    unique: list[Candidate] = []
    for candidate in found:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _family(model: str, options: dict[str, Any]) -> list[Candidate]:
    if model == "mlp":
        hidden = list(options.get("hidden", [800, 800]))
        widths = [[max(1, round(h * f)) for h in hidden] for f in WIDTHS]
        depths = [hidden[:-1]] if len(hidden) > 1 else []
        return [("mlp", {**options, "hidden": h}) for h in (*widths, *depths, hidden + hidden[-1:])]
    if model == "small_cnn":
        width = options.get("width", 32)
        return [("small_cnn", {**options, "width": max(1, round(width * f))}) for f in WIDTHS]
    if model == "mobilenetv2":
        return [(model, {**options, "width_mult": w}) for w in (0.25, 0.5, 0.75, 1.0)]
    if model == "shufflenetv2":
        return [(model, {**options, "stage_channels": list(c)}) for c in _SHUFFLE_V2]
    if model == "shufflenetv1":
        planes = [list(p) for p in ((120, 240, 480), (240, 480, 960), (480, 960, 1920))]
        return [(model, {**options, "stage_planes": p}) for p in planes]
    if model in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"):
        names = [model] if model == "mobilenet_v2" else ["mobilenet_v3_small", "mobilenet_v3_large"]
        return [(name, {**options, "width_mult": w}) for name in names for w in (0.5, 0.75, 1.0)]
    for names in _NAMED:
        if model in names:
            return [(name, options) for name in names]
    raise DistillError(f"no size family is known for student.model {model!r}; expected [[student.candidates]] "
                       "entries (model and options) to choose from, or a model with a family: mlp, small_cnn, "
                       "the CIFAR resnets/wrns/vggs/mobilenetv2/shufflenets, torchvision MobileNets, "
                       "resnet18/34/50, mnasnets, efficientnet_b0-b3")
