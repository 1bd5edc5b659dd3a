"""Recipes: TOML files that pair a teacher with a student, data, losses and schedules.

A recipe is read with the standard library (`tomllib`) and validated into typed
dataclasses before any work starts. Every error names the key path and what was expected; unknown
keys get a did-you-mean. `--set a.b.c=value` overrides any field (the value is read as TOML, and
as a plain string when it is not valid TOML, so `--set teacher.model=resnet18` works).

Reading a recipe runs nothing, but running one can: a `teacher.model` or `student.model` of the form
`package.module:factory` imports that module and calls the factory, so a recipe naming one is code,
to be trusted like a script (the standard library and torch functions are refused as factories).
Checkpoints the recipe uses build only built-in architectures and the factories the recipe itself
names, unless `trust_code = true` (or `--trust-code`) says to trust the code those files ask for.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import torch

from .data.load import MAX_IMAGE_SIZE
from .data.transforms import check_stats
from .errors import DistillError, did_you_mean
from .losses import LOSSES, build_loss
from .models.options import OptionError
from .models.registry import BUILD_ARGUMENTS, available_models, build_model, small_input_models
from .models.ensemble import check_average
from .models.timm_models import check_timm_name, is_timm_name
from .settings import Schedule, Speed, check_cache, check_device, check_prune, check_provider
from .strategy import STRATEGIES as TEACHER_STRATEGIES


@dataclass
class DataSpec:
    """Which dataset, and how it is split, resized and augmented (see `distill.data.load_data`)."""

    name: str = "digits"
    root: str | None = None           # data root; default --data-root, $DISTILL_DATA, ~/.cache/distill/data
    path: str | None = None           # for npz / imagefolder
    val_fraction: float = 0.0
    augment: bool = True
    jitter: int = 0                   # +-pixels of random shift (Hinton et al. 2015 MNIST)
    image_size: int | None = None
    channels: int | None = None
    classes: list[int] | None = None  # keep these labels only (relabelled 0..k-1)
    per_class: int | None = None      # keep N training examples per class
    labelled_per_class: int | None = None  # keep the labels of N per class; the rest become unlabelled
    unlabelled: str | None = None     # extra unlabelled images: an image folder or an .npz (x or x_train)
    train_limit: int | None = None
    test_limit: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None    # for `fake` data; checked against the data otherwise
    download: bool = False
    num_workers: int = 0
    in_memory: bool = True            # array data sets: batches sliced from one tensor, augmented on the device


@dataclass
class CandidateSpec:
    """A student to choose from for a latency budget: a model and its options, as `[student]` takes them."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """A model and how its phase trains. Schedule keys mirror `distill.Schedule`."""

    model: str = "small_cnn"
    options: dict[str, Any] = field(default_factory=dict)   # keyword arguments of the model
    weights: str | None = None        # torchvision weights name or checkpoint path
    checkpoint: str | None = None     # an already trained teacher / distilled student: skip its phase
    strategy: str | None = None       # teachers: scratch | feature_extraction | finetune | full | auto
                                      # (default: full with weights, else scratch)
    finetune_from: str | None = None  # finetune: first module path that trains
    backbone_lr_scale: float = 0.1    # finetune/full: lr of pretrained layers relative to the head
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True             # SGD with Nesterov momentum (the CRD/DKD references: false)
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    augment: bool = True              # false: this role trains on plain images even when data.augment
                                      # (Hinton's students learn from the jittered teacher on plain ones)
    latency_budget_ms: float | None = None   # students: choose the most capable candidate that fits
    latency_batch: int = 1                   # ... timed at this batch size
    latency_provider: str = "CPUExecutionProvider"   # ... in this ONNX Runtime execution provider
    candidates: list[CandidateSpec] = field(default_factory=list)  # default: the model's size family

    def schedule(self) -> Schedule:
        names = {f.name for f in dataclasses.fields(Schedule)}
        return Schedule(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class TeacherSpec(ModelSpec):
    """The teacher's section: a model like the student's, or an ensemble of trained ones."""

    ensemble: list[str] = field(default_factory=list)   # trained members, never trained here
                                      # (distill checkpoints, or state dicts of `model`)
    ensemble_average: str = "probabilities"   # probabilities (Hinton 2015) | logits


@dataclass
class TermSpec:
    """One distillation term: `loss` from distill.losses, read from `student`/`teacher` layers."""

    loss: str
    weight: float = 1.0
    student: str = "logits"
    teacher: str = "logits"
    name: str | None = None           # defaults to the loss name
    options: dict[str, Any] = field(default_factory=dict)   # keyword arguments of the loss
    warmup_epochs: int = 0            # weight ramps linearly over these epochs (DKD uses 20)
    teacher_member: int | None = None  # with teacher.ensemble: read this member (feature terms: 0 when unset)


@dataclass
class DistillSpec:
    ce_weight: float = 1.0
    terms: list[TermSpec] = field(default_factory=lambda: [TermSpec(loss="kd")])
    cache: bool = False               # run the teacher once per sample/view (see distill.cache)
    cache_views: int = 1              # fixed augmented views per sample; epoch e uses view e mod K
    cache_dtype: str = "float16"      # float16 | float32 (bit-exact)


@dataclass
class SpeedSpec:
    """Fast paths (see distill.train.Speed)."""

    amp: str | None = None            # bf16 | fp16
    channels_last: bool = False
    compile: bool = False


@dataclass
class BaselineSpec:
    """The same student trained from the labels alone, with the student's schedule; and, with
    `pseudo_labels`, trained on the teacher's hard top-1 labels over the distilled student's images."""

    enabled: bool = True
    pseudo_labels: bool = False


@dataclass
class ExportSpec:
    enabled: bool = False
    int8: bool = False
    atol: float = 1e-4
    calibration_images: int = 256
    int8_max_drop: float = 1.0        # int8 is kept only if faster and at most this many points less accurate


@dataclass
class BenchSpec:
    enabled: bool = False
    batch_size: int = 32              # throughput batch (latency is always batch 1)
    rounds: int = 20


@dataclass
class PruneSpec:
    """Prune the distilled student to a MACs budget, then recover (teacher = unpruned student)."""

    enabled: bool = False
    macs: float = 0.5
    importance: str = "magnitude"
    steps: int = 5
    recovery: str = "kd"              # kd | finetune
    temperature: float = 4.0          # of the recovery KD term
    hint_layers: list[str] = field(default_factory=list)   # extra hint terms, same path in both
    hint_weight: float = 1.0
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 64
    latency_budget_ms: float | None = None  # prune until the ONNX latency fits (instead of `macs`)


@dataclass
class LogSpec:
    """What a run logs besides its own files."""

    tensorboard: bool = False         # scalars per epoch under RUN/tb/ROLE (pip install 'distill[tensorboard]')


@dataclass
class Recipe:
    name: str = "run"
    description: str = ""
    seed: int = 0
    seeds: int = 1                    # run every phase once per seed (seed, seed + 1, ...): RUN/seed-N/
    device: str = "auto"
    out: str | None = None            # run directory; default runs/<name>
    skip_nonfinite: bool = False      # skip (and count) steps with a NaN/inf loss instead of stopping
    trust_code: bool = False          # checkpoints may build any 'package.module:factory' (runs its code)
    data: DataSpec = field(default_factory=DataSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    student: ModelSpec = field(default_factory=ModelSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    bench: BenchSpec = field(default_factory=BenchSpec)
    log: LogSpec = field(default_factory=LogSpec)


# ----------------------------------------------------------------------------- reading

def shipped_recipes_dir() -> Path:
    """recipes/ beside the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[1] / "recipes"


def find_recipe(name: str) -> Path:
    """A path, or the name of a shipped recipe (`quickstart` -> recipes/quickstart.toml)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = shipped_recipes_dir() / f"{name.removesuffix('.toml')}.toml"
    if shipped.exists() and not path.suffix:
        return shipped
    known = sorted(p.stem for p in shipped_recipes_dir().glob("*.toml"))
    raise DistillError(f"recipe {name!r} not found{did_you_mean(path.stem, known)}; expected a .toml "
                       f"path or a shipped recipe name ({', '.join(known)})")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    data = read_toml(path)
    if not data:  # an empty file is a mistake, not a request for every default
        raise DistillError(f"recipe {path} is empty; expected at least [data], [teacher] and [student] "
                           "tables (see `distill recipes` for examples)")
    return recipe_from_dict(data, overrides)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML table of a recipe file: UTF-8 text, with or without a byte-order mark."""
    text = _read_text(Path(path))
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DistillError(f"recipe {path} is not valid TOML: {e}") from e
    except RecursionError:
        raise DistillError(f"recipe {path} is not valid TOML: nested too deeply; expected a recipe "
                           "(see `distill recipes`)") from None


def _read_text(path: Path) -> str:
    """The file's text; a BOM (Windows editors write one) is dropped, as TOML readers do."""
    if not path.exists():
        raise DistillError(f"recipe {path} does not exist; expected a .toml file (see `distill recipes`)")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise DistillError(f"recipe {path} is {kind}; expected a .toml file (see `distill recipes`)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DistillError(f"cannot read recipe {path}: {e.strerror or e}; expected a readable .toml "
                           "file") from e
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DistillError(f"recipe {path} is not UTF-8 text (it is UTF-16); expected a .toml file "
                           "saved as UTF-8")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DistillError(f"recipe {path} is not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}); "
                           "expected a .toml file saved as UTF-8") from e


def recipe_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> Recipe:
    data = copy.deepcopy(data)
    for item in overrides:
        apply_override(data, item)
    recipe = _build(Recipe, data, "")
    _check(recipe)
    return recipe


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` to the raw recipe dict; list items are addressed by index."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise DistillError(f"--set {item!r}: expected KEY=VALUE, e.g. --set student.epochs=2")
    if not _is_text(item):
        raise DistillError(f"--set {item!r}: expected UTF-8 text")
    keys = key.strip().split(".")
    value = _parse_value(raw.strip())
    node: Any = data
    cls: Any = Recipe
    for i, k in enumerate(keys):
        parent, where, last = ".".join(keys[:i]), ".".join(keys[: i + 1]), i == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(node, k, key, parent)
            if last:
                node[index] = value
            else:
                node = node[index]
            cls = _item_type(cls)
            continue
        if not isinstance(node, dict):
            raise DistillError(f"--set {key}: {parent} is {_describe(node)}, not a table or a list; "
                               f"expected a key that ends there, such as --set {parent}=VALUE")
        if dataclasses.is_dataclass(cls):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if k not in fields:
                raise DistillError(f"--set {key}: {where} is not a recipe field{did_you_mean(k, fields)}; "
                                   f"expected one of {', '.join(fields)}")
            cls = typing.get_type_hints(cls)[k]
        if last:
            node[k] = value
        else:
            if k not in node:
                node[k] = [] if _is_list(cls) else {}
                if _is_list(cls):  # a list can only be addressed by existing index
                    default = _default_of(keys[:i + 1])
                    node[k] = [dataclasses.asdict(t) if dataclasses.is_dataclass(t) else t for t in default]
            node = node[k]


def _list_index(items: list[Any], k: str, key: str, parent: str) -> int:
    """The position `k` names in `items` (the list at `parent`), or a DistillError."""
    if re.fullmatch("[0-9]+", k) and int(k) < len(items):
        return int(k)
    expected = (f"an index 0..{len(items) - 1}" if items
                else f"no index into an empty list (set it whole: --set {parent}=[...])")
    raise DistillError(f"--set {key}: {parent}.{k} is not an item of a {len(items)}-item list; expected {expected}")


def _is_text(value: str) -> bool:
    """Whether `value` can be written as UTF-8 (command lines may carry undecodable bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _default_of(keys: list[str]) -> Any:
    obj: Any = Recipe()
    for k in keys:
        obj = getattr(obj, k)
    return obj


# ----------------------------------------------------------------------------- typed building

def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise DistillError(f"{path or 'recipe'}: expected a table, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise DistillError(f"unknown key {_join(path, key)!r}{did_you_mean(key, fields)}; "
                               f"expected one of {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, _join(path, name))
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        expected = {"loss": "a loss name (" + ", ".join(LOSSES) + ")"}.get(missing[0], "a value")
        raise DistillError(f"{_join(path, missing[0])} is required; expected {expected}")
    return cls(**kwargs)


INT_LIMIT = 2 ** 31          # seeds, counts and sizes: what torch and numpy index with
FLOAT32_MAX = 3.4028234e38   # rates and weights become float32 tensors


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (value == "" and type(None) in args):
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise DistillError(f"{path}: expected a list, got {_describe(value)}")
        return [_convert(args[0], v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise DistillError(f"{path}: expected a table, got {_describe(value)}")
        _check_plain(value, path)
        return value
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) <= FLOAT32_MAX else math.inf
    ok = isinstance(value, bool) if tp is bool else isinstance(value, tp) and not isinstance(value, bool)
    if not ok:
        raise DistillError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    if tp is int and not -INT_LIMIT < value < INT_LIMIT:
        raise DistillError(f"{path}: expected an integer smaller than 2^31 in size, got {_describe(value)}")
    if tp is float and math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise DistillError(f"{path}: expected a number within float32's range (+-3.4e38), got {_describe(value)}")
    return value


def _check_plain(value: Any, path: str) -> None:
    """Options are passed to constructors: strings, numbers, booleans, lists and tables only (a TOML
    date or time reaches no model or loss as anything it understands)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}.{i}")
    elif not isinstance(value, (str, int, float, bool)):
        raise DistillError(f"{path}: expected a string, number, boolean, list or table, got {_describe(value)}")


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _item_type(tp: Any) -> Any:
    return typing.get_args(tp)[0] if _is_list(tp) else typing.Any


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"[:120]


# ----------------------------------------------------------------------------- semantic checks

def _positive(value: float | None, path: str, integer: bool = False) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        kind = "a positive integer" if integer else "a positive number"
        raise DistillError(f"{path}: expected {kind}, got {value!r}")


def _not_negative(value: float, path: str, integer: bool = False) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise DistillError(f"{path}: expected {'an integer' if integer else 'a number'} >= 0, got {value!r}")


def _check(r: Recipe) -> None:
    check_device(r.device)
    _check_paths(r)
    _not_negative(r.seed, "seed", integer=True)
    _positive(r.seeds, "seeds", integer=True)
    if r.seed + r.seeds > INT_LIMIT:  # the last seed's recipe.toml must load again
        raise DistillError(f"seed + seeds: the last seed would be {r.seed + r.seeds - 1}; expected seed + seeds "
                           f"at most 2^31 ({INT_LIMIT})")
    _check_data(r.data)
    for role in ("teacher", "student"):
        _check_model_spec(getattr(r, role), role)
    if r.student.strategy not in ("scratch", "full"):
        raise DistillError("student.strategy: students are trained whole by distillation; expected no "
                           "key (set student.weights to start from pretrained weights)")
    if r.teacher.strategy == "finetune" and not r.teacher.finetune_from:
        raise DistillError("teacher.finetune_from is required with strategy 'finetune'; expected a "
                           "module path such as 'layer4'")
    _check_distill(r.distill)
    _check_ensemble(r)
    _checked("speed.", Speed, amp=r.speed.amp)
    _check_prune(r.prune)
    _check_latency(r)
    _not_negative(r.export.int8_max_drop, "export.int8_max_drop")
    _positive(r.export.atol, "export.atol")
    _positive(r.export.calibration_images, "export.calibration_images", integer=True)
    for key in ("batch_size", "rounds"):
        _positive(getattr(r.bench, key), f"bench.{key}", integer=True)


def _check_paths(r: Recipe) -> None:
    """`name` is one folder inside runs/; the paths (`out` may be anywhere) hold no NUL."""
    name = r.name
    if (not name or name in (".", "..") or any(c in name for c in "/\\\0")
            or PureWindowsPath(name).drive):
        raise DistillError(f"name: expected a plain folder name, as the run goes to runs/<name> (no /, "
                           f"\\, NUL, drive, '.' or '..'; set out = '...' for another place), got {name!r}")
    paths = {"out": r.out, "data.root": r.data.root, "data.path": r.data.path, "data.unlabelled": r.data.unlabelled}
    for role in ("teacher", "student"):
        spec = getattr(r, role)
        paths.update({f"{role}.weights": spec.weights, f"{role}.checkpoint": spec.checkpoint})
    for key, value in paths.items():
        if value is not None and "\0" in value:
            raise DistillError(f"{key}: expected a path without NUL characters, got {value!r}")


def _check_data(d: DataSpec) -> None:
    if not 0 <= d.val_fraction < 1:
        raise DistillError(f"data.val_fraction: expected a fraction in [0, 1), got {d.val_fraction!r}")
    for key, largest in (("image_size", MAX_IMAGE_SIZE), ("jitter", MAX_IMAGE_SIZE // 2)):
        if (getattr(d, key) or 0) > largest:
            raise DistillError(f"data.{key}: expected at most {largest} pixels, got {getattr(d, key)!r}")
    for key in ("image_size", "channels", "per_class", "train_limit", "test_limit", "num_classes",
                "labelled_per_class"):
        _positive(getattr(d, key), f"data.{key}", integer=True)
    _not_negative(d.jitter, "data.jitter", integer=True)
    if d.classes is not None and (not d.classes or min(d.classes) < 0 or len(set(d.classes)) != len(d.classes)):
        raise DistillError(f"data.classes: expected distinct labels >= 0 (at least one), got {d.classes!r}")
    _checked("data.", Speed, num_workers=d.num_workers)
    for kind in ("mean", "std"):
        _check_stats(kind, getattr(d, kind), d.channels)


def _check_stats(kind: str, values: list[float] | None, channels: int | None) -> None:
    """data.mean / data.std: one value for every channel, or one per channel; finite, std > 0."""
    if values is None:
        return
    counts = sorted({1, channels or 3})  # without `channels`, the data's own: 1 (grey) or 3 (RGB)
    try:
        check_stats(kind, values)
        fits = len(values) in counts
    except DistillError:
        fits = False
    if not fits:
        numbers = "finite numbers" if kind == "mean" else "positive finite numbers"
        raise DistillError(f"data.{kind}: expected {' or '.join(map(str, counts))} {numbers} (one per "
                           f"channel), got {values!r}")


def _checked(where: str, check, *args: Any, **kwargs: Any) -> Any:
    """Run a check defined beside the value it checks, reporting it under the recipe key `where`
    (a `where` ending in "." prefixes the key the message starts with: "teacher." + "lr: expected")."""
    try:
        return check(*args, **kwargs)
    except DistillError as e:
        raise DistillError(f"{where}{e}" if where.endswith(".") else f"{where}: {e}") from None


def _check_model_spec(spec: ModelSpec, role: str) -> None:
    _checked(f"{role}.", spec.schedule)
    _check_build_arguments(spec.options, role)
    _not_negative(spec.backbone_lr_scale, f"{role}.backbone_lr_scale")
    if spec.strategy is None:
        spec.strategy = "full" if spec.weights else "scratch"
    if spec.strategy not in TEACHER_STRATEGIES:
        raise DistillError(f"{role}.strategy: expected one of {', '.join(TEACHER_STRATEGIES)}, got "
                           f"{spec.strategy!r}{did_you_mean(spec.strategy, TEACHER_STRATEGIES)}")
    _check_model_name(spec.model, f"{role}.model")
    _check_model_options(spec, role)


def _check_build_arguments(options: dict[str, Any], role: str) -> None:
    for key in options:
        if key in BUILD_ARGUMENTS:
            raise DistillError(f"{role}.options.{key}: expected a keyword argument of the model's constructor; "
                               f"{key!r} is set by distill (num_classes and input_shape come from the data, "
                               f"weights from {role.split('.')[0]}.weights)")


def _check_latency(r: Recipe) -> None:
    """The latency budget keys: on the student only, a positive budget, a provider ONNX Runtime has,
    and candidates validated as `[student]` is."""
    t, s = r.teacher, r.student
    if t.latency_budget_ms is not None or t.candidates:
        raise DistillError("teacher.latency_budget_ms / teacher.candidates: a latency budget chooses the "
                           "student; expected them under [student]")
    if s.candidates and s.latency_budget_ms is None:
        raise DistillError("student.candidates: candidates are chosen from by a latency budget; expected "
                           "student.latency_budget_ms too")
    for key, budget in (("student", s.latency_budget_ms), ("prune", r.prune.latency_budget_ms)):
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise DistillError(f"{key}.latency_budget_ms: expected a positive number of milliseconds, got {budget!r}")
    _positive(s.latency_batch, "student.latency_batch", integer=True)
    if r.prune.latency_budget_ms is not None and not r.prune.enabled:
        raise DistillError("prune.latency_budget_ms: pruning is off; expected prune.enabled = true with it")
    if s.latency_budget_ms is None and r.prune.latency_budget_ms is None:
        return
    if s.checkpoint and s.latency_budget_ms is not None:
        raise DistillError("student.checkpoint: a given student is not chosen by latency; expected either "
                           "student.checkpoint or student.latency_budget_ms")
    _checked("student.latency_provider", check_provider, s.latency_provider)
    for i, c in enumerate(s.candidates):
        where = f"student.candidates.{i}"
        _check_build_arguments(c.options, where)
        _check_model_name(c.model, f"{where}.model")
        _check_model_options(c, where)


def _check_model_options(spec: ModelSpec | CandidateSpec, role: str) -> None:
    """Build a built-in model on the meta device (no memory, no weights, milliseconds), so options
    that make no sense (a width of 0) fail now under their key, not after the data has loaded.
    Torchvision and user models are left to build time: their constructors are not ours."""
    if spec.model not in ("mlp", "small_cnn", *small_input_models()):
        return
    try:
        with torch.device("meta"):
            build_model(spec.model, 10, (3, 32, 32), **spec.options)
    except OptionError as e:  # the message starts with the option's name
        raise DistillError(f"{role}.options.{e}") from None
    except DistillError as e:
        raise DistillError(f"{role}.options: {e}") from None


def _check_distill(d: DistillSpec) -> None:
    _not_negative(d.ce_weight, "distill.ce_weight")
    names = set()
    for i, term in enumerate(d.terms):
        where = f"distill.terms.{i}"
        if term.loss not in LOSSES:
            raise DistillError(f"{where}.loss: unknown loss {term.loss!r}{did_you_mean(term.loss, LOSSES)}; "
                               f"expected one of {', '.join(LOSSES)}")
        _not_negative(term.weight, f"{where}.weight")
        _not_negative(term.warmup_epochs, f"{where}.warmup_epochs", integer=True)
        name = term.name or term.loss
        if name in names or name == "ce":
            raise DistillError(f"{where}.name: term name {name!r} is used twice; expected unique names "
                               "(set name = '...' on one of them)")
        names.add(name)
        term.name = name
        _checked(where, build_loss, term.loss, **term.options)
    _checked("distill.", check_cache, d.cache_views, d.cache_dtype)


def _check_ensemble(r: Recipe) -> None:
    """teacher.ensemble: its members, how they are averaged, and which member each term reads."""
    members = r.teacher.ensemble
    if members and r.teacher.checkpoint:
        raise DistillError("teacher.ensemble and teacher.checkpoint are both set; expected one of them")
    for i, path in enumerate(members):
        if not path or "\0" in path:
            raise DistillError(f"teacher.ensemble.{i}: expected a checkpoint path, got {path!r}")
    _checked("teacher.ensemble_average", check_average, r.teacher.ensemble_average)
    for i, term in enumerate(r.distill.terms):
        k = term.teacher_member
        if k is None:
            continue
        if not members:
            raise DistillError(f"distill.terms.{i}.teacher_member: set, but teacher.ensemble is not; expected "
                               "no key (a single teacher has no members)")
        if isinstance(k, bool) or not 0 <= k < len(members):
            raise DistillError(f"distill.terms.{i}.teacher_member: expected a member index from 0 to "
                               f"{len(members) - 1} (teacher.ensemble has {len(members)}), got {k!r}")


def _check_prune(p: PruneSpec) -> None:
    _checked("prune.", check_prune, p.macs, p.importance, p.steps)
    if p.recovery not in ("kd", "finetune"):
        raise DistillError(f"prune.recovery: expected kd or finetune, got {p.recovery!r}")
    _checked("prune.", Schedule, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr)  # its recovery schedule
    _positive(p.temperature, "prune.temperature")
    _not_negative(p.hint_weight, "prune.hint_weight")


def _check_model_name(name: str, path: str) -> None:
    if is_timm_name(name):
        _checked(path, check_timm_name, name)
        return
    if ":" in name:
        return
    models = available_models()
    if name not in models:
        raise DistillError(f"{path}: unknown model {name!r}{did_you_mean(name, models)}; expected a name "
                           "from `distill models` or 'package.module:factory'")


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (written to the run directory for reproduction, read back by
    --resume): every string escaped, so any value the recipe holds reads back the same."""
    data = dataclasses.asdict(recipe)
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items() if v is not None]
    for section, body in data.items():
        if not isinstance(body, dict):
            continue
        lines.append(f"\n[{section}]")
        tables = []
        for k, v in body.items():
            if v is None:
                continue
            if isinstance(v, list) and v and isinstance(v[0], dict):
                tables.append((k, v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, items in tables:
            for item in items:
                lines.append(f"\n[[{section}.{k}]]")
                lines += [f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv is not None]
    return "\n".join(lines) + "\n"


# TOML basic strings: these have short escapes; other control characters are written \uXXXX
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, other text as is."""
    def escape(c: str) -> str:
        if c in _TOML_ESCAPES:
            return _TOML_ESCAPES[c]
        return f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c
    return '"' + "".join(escape(c) for c in text) + '"'


def _toml_key(key: str) -> str:
    """A bare key when TOML allows one (A-Z a-z 0-9 _ -), else a quoted key."""
    return key if re.fullmatch("[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):  # TOML spells the non-finite floats nan, inf and -inf, as repr does
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))
