"""Teacher-output cache: run the teacher once per sample (and view), not once per epoch.

With a big teacher its forward pass is most of the cost of distillation. The cache stores the
outputs every term reads (logits, hooked features) as float16 `.npy` files that are memory-mapped,
so an ImageNet-size cache (1.28M x 1000 logits = 2.6 GB per view) never has to fit in memory.

Correctness under augmentation: the student must see exactly the image the teacher saw. Each
sample has `views` fixed augmentations: view v of sample i is drawn from a key hashed from
(seed, i, v) (in-memory data, `distill.data.batched.sample_keys`) or with the random generator
seeded by (seed, i, v) (any other dataset), and in epoch e the student sees view e mod `views`. So:
- `views=1` with deterministic inputs (no augmentation) is exact and loses nothing;
- `views=K` with random augmentation is exact for those K views, but the student sees only K
  distinct augmentations per sample instead of a fresh one every epoch (less augmentation
  diversity; FKD, Shen & Xing 2021, uses the same trade with K ~ epochs/4 at ImageNet scale).
Stored as float16 by default (relative rounding ~5e-4), or float32 for bit-exact replay.
The cache is keyed by the teacher's weights, the dataset (its class, length, transform described
without memory addresses, every image and label of in-memory data, the content of a few samples),
the read paths, the views, the seed and the dtype: change any and it is rebuilt, never silently
reused. The key is the same in every
process that runs the same recipe, so `--resume` reuses the cache and, under DDP, rank 0 builds it
and the other ranks only open it. A damaged cache (corrupt meta.json or array) is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data.batched import batchable, gather, sample_keys
from .distiller import SAMPLE_INDEX
from .errors import DistillError
from .files import atomic_write_text, ensure_free_space
from .models.ensemble import teacher_logits
from .settings import check_cache
from .taps import LOGITS, FeatureTaps
from .train import make_loader

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


def describe_transform(transform: Any) -> str:
    """`repr(transform)` without memory addresses, which differ in every process.

    The project's transforms (and torchvision's) repr as their class and settings; an unknown
    one may repr as `<function f at 0x7f...>`, which is kept only up to its address: what it does
    to the images is caught by the hash of their content in the key.
    """
    return _ADDRESS.sub("", repr(transform))


def cache_key(teacher: nn.Module, dataset: Dataset, paths: Sequence[str], *, views: int = 1, seed: int = 0,
              dtype: str = "float16") -> str:
    """What a cache depends on, the same in every process that runs the same recipe: the teacher's
    weights; the dataset's class, length and transform description; every image and label when they
    are in memory (`content_digest`), and the content of a few samples (view 0, as augmented with
    `seed`); the read paths, views, seed and dtype."""
    h = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    kind = type(dataset)
    h.update(json.dumps({"paths": list(dict.fromkeys(paths)), "views": views, "seed": seed, "dtype": dtype,
                         "n": len(dataset), "dataset": f"{kind.__module__}.{kind.__qualname__}",
                         "transform": describe_transform(getattr(dataset, "transform", None)),
                         "content": dataset.content_digest() if hasattr(dataset, "content_digest") else None
                         }).encode())
    for i in sorted({0, len(dataset) // 2, len(dataset) - 1}):
        x, y = ViewDataset(dataset, views=1, seed=seed)._sample(i, 0)
        h.update(x.numpy().tobytes())
        h.update(str(int(y)).encode())
    return h.hexdigest()[:20]


def draws_random_views(dataset: Dataset, seed: int = 0, tries: int = 8) -> bool:
    """Whether `dataset` augments at random: its first sample differs between views."""
    source = ViewDataset(dataset, views=tries, seed=seed)
    first = source._sample(0, 0)[0]
    return any(not torch.equal(first, source._sample(0, view)[0]) for view in range(1, tries))


class ViewDataset(Dataset):
    """`dataset` with reproducible augmentation: item i in epoch e is view (e mod views) of sample i.

    An in-memory dataset (`batchable`) draws view v of sample i from its key (`sample_keys`), in any
    batch and on any device; any other dataset from the CPU generator seeded by (seed, i, v)."""

    def __init__(self, dataset: Dataset, views: int, seed: int) -> None:
        self.dataset, self.views, self.seed, self.epoch = dataset, views, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def batchable(self) -> bool:
        return batchable(self.dataset)

    def batch(self, k: Tensor, device: torch.device, keys: Tensor | None = None) -> tuple[Any, ...]:
        """The current epoch's view of the samples at positions `k`, as one batch on `device`."""
        return self._views(k, self.epoch % self.views, device)

    def _views(self, k: Tensor, view: int, device: torch.device) -> tuple[Any, ...]:
        return gather(self.dataset, k, device, keys=sample_keys(self.seed, k, view))

    def _sample(self, index: int, view: int) -> tuple[Tensor, Any]:
        if self.batchable:
            image, target, *_ = self._views(torch.tensor([index]), view, torch.device("cpu"))
            return image[0], target[0]
        # Seed and restore only the CPU generator the transforms draw from: torch.manual_seed
        # would also reseed (and leave reseeded) every GPU generator, and costs ~10x more.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(((self.seed * 1_000_003 + index) * 1_009 + view) % (2 ** 63))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)

    def __getitem__(self, index: int):
        return self._sample(index, self.epoch % self.views)


class CachedTeacherDataset(ViewDataset):
    """Yields (image, target, {path: teacher output, SAMPLE_INDEX: index}) with the teacher's outputs
    read from the cache (and the sample's index, for the terms that need it)."""

    def __init__(self, dataset: Dataset, cache: "TeacherCache") -> None:
        super().__init__(dataset, cache.views, cache.seed)
        self.cache = cache

    def __getitem__(self, index: int):
        view = self.epoch % self.views
        image, target = self._sample(index, view)
        return image, target, {**self.cache.row(view, index), SAMPLE_INDEX: torch.tensor(index)}

    def batch(self, k: Tensor, device: torch.device, keys: Tensor | None = None) -> tuple[Any, ...]:
        image, target, *_ = super().batch(k, device)
        return image, target, {**self.cache.rows(self.epoch % self.views, k, device), SAMPLE_INDEX: k.to(device)}


class TeacherCache:
    """Memory-mapped float16 teacher outputs, one array per read path: [views, N, *shape].

    `reused` says whether this process found the cache on disk (True) or wrote it (False).
    """

    def __init__(self, directory: Path, meta: dict[str, Any], reused: bool = False) -> None:
        self.directory, self.meta, self.reused = directory, meta, reused
        self.key, self.views, self.seed = meta["key"], meta["views"], meta["seed"]
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # opened lazily, so loader workers each map the files themselves
            self._arrays = {p: np.load(self.directory / f"{i}.npy", mmap_mode="r")
                            for i, p in enumerate(self.meta["paths"])}
        return self._arrays

    def row(self, view: int, index: int) -> dict[str, Tensor]:
        return {p: torch.from_numpy(np.array(a[view, index], dtype=np.float32)) for p, a in self.arrays.items()}

    def rows(self, view: int, k: Tensor, device: torch.device) -> dict[str, Tensor]:
        """The rows of the samples at positions `k`, as float32 on `device`."""
        at = k.numpy()
        return {p: torch.from_numpy(np.asarray(a[view, at], dtype=np.float32)).to(device, non_blocking=True)
                for p, a in self.arrays.items()}

    def nbytes(self) -> int:
        return sum((self.directory / f"{i}.npy").stat().st_size for i in range(len(self.meta["paths"])))

    def __getstate__(self) -> dict[str, Any]:  # loader workers re-open the memory maps
        return {**self.__dict__, "_arrays": None}

    @classmethod
    def open(cls, directory: str | Path, key: str) -> "TeacherCache":
        """The complete cache in `directory` built for `key`, without writing anything: how the
        ranks other than 0 read the cache rank 0 built. Any other state is a DistillError."""
        directory = Path(directory)
        meta, problem = _inspect(directory)
        if meta is not None and meta["key"] != key:
            problem = (f"it was built for key {meta['key']}, this process computes {key} (different "
                       "teacher weights, data, transforms, seed or read paths)")
        if problem:
            raise DistillError(f"teacher cache {directory}: {problem}; expected the complete cache of "
                               f"this run (delete {directory} and run again to rebuild it)")
        return cls(directory, meta, reused=True)

    @classmethod
    def build(cls, teacher: nn.Module, dataset: Dataset, paths: Sequence[str], directory: str | Path, *,
              views: int = 1, seed: int = 0, dtype: str = "float16", batch_size: int = 256,
              device: torch.device | str = "cpu", num_workers: int = 0,
              progress: bool = True) -> "TeacherCache":
        """Open the cache in `directory` when its key matches, else run the teacher and write it.

        `dtype` float16 halves the disk and read cost (relative rounding ~5e-4 on each output);
        float32 makes cached training bit-identical to running the teacher. A damaged cache (a
        corrupt meta.json or array) is rebuilt, with a one-line note: it only ever costs time.
        """
        try:
            check_cache(views, dtype)
        except DistillError as e:
            raise DistillError(f"teacher cache {e}") from None
        paths = list(dict.fromkeys(paths))
        directory = Path(directory)
        key = cache_key(teacher, dataset, paths, views=views, seed=seed, dtype=dtype)
        meta, problem = _inspect(directory)
        if meta is not None and meta["key"] == key:
            return cls(directory, meta, reused=True)
        if problem and problem != _NO_CACHE:
            print(f"note: teacher cache {directory}: {problem}; rebuilding it (it is only a cache)",
                  file=sys.stderr)
        meta = {"key": key, "paths": paths, "views": views, "seed": seed, "n": len(dataset), "dtype": dtype,
                "complete": False}
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").unlink(missing_ok=True)
        arrays = _run_teacher(teacher, ViewDataset(dataset, views, seed), paths, directory, dtype,
                              batch_size=batch_size, device=device, num_workers=num_workers, progress=progress)
        meta.update(shapes=[list(arrays[p].shape) for p in paths], complete=True)
        atomic_write_text(directory / "meta.json", json.dumps(meta))
        return cls(directory, meta, reused=False)


_NO_CACHE = "it holds no complete cache"
_META_TYPES = {"key": str, "paths": list, "views": int, "seed": int, "n": int, "dtype": str, "shapes": list,
               "complete": bool}


def _inspect(directory: Path) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") of the complete cache in `directory`, else (None, why it cannot be used). Every
    file is checked against meta.json (types, then each array's shape and dtype), so a damaged
    cache is found here, not as a traceback in the middle of training."""
    meta_file = directory / "meta.json"
    if not meta_file.exists():
        return None, _NO_CACHE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{meta_file} is not readable JSON ({type(e).__name__})"
    wrong = [k for k, kind in _META_TYPES.items() if not isinstance(meta, dict)
             or not isinstance(meta.get(k), kind) or (kind is int and isinstance(meta.get(k), bool))]
    if wrong:
        return None, f"{meta_file} lacks or mistypes {', '.join(wrong)}"
    if not meta["complete"]:
        return None, _NO_CACHE
    if len(meta["shapes"]) != len(meta["paths"]):
        return None, f"{meta_file} lists {len(meta['shapes'])} shapes for {len(meta['paths'])} paths"
    for i, shape in enumerate(meta["shapes"]):
        problem = _check_array(directory / f"{i}.npy", shape, meta)
        if problem:
            return None, problem
    return meta, ""


def _check_array(file: Path, shape: Any, meta: dict[str, Any]) -> str:
    """Why `file` is not the [views, n, ...] array of `meta['dtype']` that meta.json says, or ""."""
    try:
        array = np.load(file, mmap_mode="r")  # reads the header only; never unpickles
    except (OSError, ValueError, EOFError) as e:
        return f"{file} cannot be read as an array ({type(e).__name__})"
    expected = (meta["views"], meta["n"])
    if list(array.shape) != shape or tuple(array.shape[:2]) != expected or array.dtype != np.dtype(meta["dtype"]):
        return (f"{file} holds {array.dtype} {list(array.shape)}, meta.json says {meta['dtype']} {shape} "
                f"with {expected[0]} views of {expected[1]} samples")
    return ""


def _ensure_space_for(directory: Path, paths: list[str], outputs: dict[str, Tensor], rows: int,
                      itemsize: int) -> None:
    """Refuse before writing a cache of `rows` rows per path whose size the first batch tells."""
    for i in range(len(paths)):  # an older cache's arrays are replaced: their space is free to reuse
        (directory / f"{i}.npy").unlink(missing_ok=True)
    ensure_free_space(directory, rows * itemsize * sum(outputs[p][0].numel() for p in paths))


def _run_teacher(teacher: nn.Module, source: ViewDataset, paths: list[str], directory: Path, dtype: str, *,
                 batch_size: int, device: torch.device | str, num_workers: int,
                 progress: bool) -> dict[str, np.ndarray]:
    """Run the teacher on every view of every sample and write its outputs to `directory`."""
    teacher = teacher.eval().to(device)
    taps = FeatureTaps(teacher, paths, role="teacher")
    arrays: dict[str, np.ndarray] = {}
    n = len(source)
    try:
        for view in range(source.views):
            source.set_epoch(view)
            loader = make_loader(source, batch_size, shuffle=False, num_workers=num_workers, device=device)
            start = 0
            for images, *_ in tqdm(loader, desc=f"teacher cache view {view + 1}/{source.views}", leave=False,
                                  disable=None if progress else True):
                with torch.inference_mode():
                    logits = teacher_logits(teacher, images.to(device))  # an Ensemble's: [N, M, C]
                    outputs = {**taps.outputs, LOGITS: logits}
                if not arrays:  # memory maps are sparse files: a full disk would kill the run with SIGBUS
                    _ensure_space_for(directory, paths, outputs, source.views * n, np.dtype(dtype).itemsize)
                for i, p in enumerate(paths):
                    out = outputs[p].float().cpu().numpy()
                    if dtype == "float16" and np.abs(out).max(initial=0) > np.finfo(np.float16).max:
                        raise DistillError(f"teacher output {p!r} exceeds the float16 range "
                                           f"({np.abs(out).max():.3g}); expected cache dtype float32")
                    if p not in arrays:
                        arrays[p] = np.lib.format.open_memmap(directory / f"{i}.npy", mode="w+",
                                                              dtype=np.dtype(dtype),
                                                              shape=(source.views, n, *out.shape[1:]))
                    arrays[p][view, start:start + len(out)] = out
                start += len(images)
    finally:
        taps.remove()
    for a in arrays.values():
        a.flush()
    return arrays
