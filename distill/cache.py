"""Teacher-output cache: run the teacher once per sample (and view), not once per epoch.

With a big teacher its forward pass is most of the cost of distillation. The cache stores the
outputs every term reads (logits, hooked features) as float16 `.npy` files that are memory-mapped,
so an ImageNet-size cache (1.28M x 1000 logits = 2.6 GB per view) never has to fit in memory.

Correctness under augmentation: the student must see exactly the image the teacher saw. Each
sample has `views` fixed augmentations: view v of sample i is drawn with the random generator
seeded by (seed, i, v), and in epoch e the student sees view e mod `views`. So:
- `views=1` with deterministic inputs (no augmentation) is exact and loses nothing;
- `views=K` with random augmentation is exact for those K views, but the student sees only K
  distinct augmentations per sample instead of a fresh one every epoch (less augmentation
  diversity; FKD, Shen & Xing 2021, uses the same trade with K ~ epochs/4 at ImageNet scale).
Stored as float16 by default (relative rounding ~5e-4), or float32 for bit-exact replay.
The cache is keyed by the teacher's weights, the dataset, its transform, the read paths, the
views and the seed: change any and it is rebuilt, never silently reused.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .errors import DistillError
from .taps import LOGITS, FeatureTaps


def _fingerprint(teacher: nn.Module, dataset: Dataset, paths: Sequence[str], views: int, seed: int) -> str:
    h = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({"paths": list(paths), "views": views, "seed": seed, "n": len(dataset),
                         "dataset": type(dataset).__name__,
                         "transform": repr(getattr(dataset, "transform", None))}).encode())
    for i in sorted({0, len(dataset) // 2, len(dataset) - 1}):  # content of a few samples
        x, y = ViewDataset(dataset, views=1, seed=seed)._sample(i, 0)
        h.update(x.numpy().tobytes())
        h.update(str(int(y)).encode())
    return h.hexdigest()[:20]


class ViewDataset(Dataset):
    """`dataset` with reproducible augmentation: item i in epoch e is view (e mod views) of sample i."""

    def __init__(self, dataset: Dataset, views: int, seed: int) -> None:
        self.dataset, self.views, self.seed, self.epoch = dataset, views, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def _sample(self, index: int, view: int) -> tuple[Tensor, Any]:
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
    """Yields (image, target, {path: teacher output}) with the teacher's outputs read from the cache."""

    def __init__(self, dataset: Dataset, cache: "TeacherCache") -> None:
        super().__init__(dataset, cache.views, cache.seed)
        self.cache = cache

    def __getitem__(self, index: int):
        view = self.epoch % self.views
        image, target = self._sample(index, view)
        return image, target, self.cache.row(view, index)


class TeacherCache:
    """Memory-mapped float16 teacher outputs, one array per read path: [views, N, *shape]."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory, self.meta = directory, meta
        self.views, self.seed = meta["views"], meta["seed"]
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # opened lazily, so loader workers each map the files themselves
            self._arrays = {p: np.load(self.directory / f"{i}.npy", mmap_mode="r")
                            for i, p in enumerate(self.meta["paths"])}
        return self._arrays

    def row(self, view: int, index: int) -> dict[str, Tensor]:
        return {p: torch.from_numpy(np.array(a[view, index], dtype=np.float32)) for p, a in self.arrays.items()}

    def nbytes(self) -> int:
        return sum((self.directory / f"{i}.npy").stat().st_size for i in range(len(self.meta["paths"])))

    def __getstate__(self) -> dict[str, Any]:  # loader workers re-open the memory maps
        return {**self.__dict__, "_arrays": None}

    @classmethod
    def build(cls, teacher: nn.Module, dataset: Dataset, paths: Sequence[str], directory: str | Path, *,
              views: int = 1, seed: int = 0, dtype: str = "float16", batch_size: int = 256,
              device: torch.device | str = "cpu", num_workers: int = 0,
              progress: bool = True) -> "TeacherCache":
        """Open the cache in `directory` when its key matches, else run the teacher and write it.

        `dtype` float16 halves the disk and read cost (relative rounding ~5e-4 on each output);
        float32 makes cached training bit-identical to running the teacher.
        """
        if dtype not in ("float16", "float32"):
            raise DistillError(f"cache dtype must be float16 or float32, got {dtype!r}")
        if views < 1:
            raise DistillError(f"cache views must be a positive integer, got {views!r}")
        paths = list(dict.fromkeys(paths))
        directory = Path(directory)
        key = _fingerprint(teacher, dataset, paths, views, seed) + dtype
        meta_file = directory / "meta.json"
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            if meta.get("key") == key and meta.get("complete"):
                return cls(directory, meta)
        directory.mkdir(parents=True, exist_ok=True)
        meta_file.unlink(missing_ok=True)
        meta = {"key": key, "paths": paths, "views": views, "seed": seed, "n": len(dataset), "complete": False}
        teacher = teacher.eval().to(device)
        taps = FeatureTaps(teacher, paths, role="teacher")
        arrays: dict[str, np.ndarray] = {}
        try:
            source = ViewDataset(dataset, views, seed)
            for view in range(views):
                source.set_epoch(view)
                loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                    generator=torch.Generator())  # leaves the global RNG untouched
                start = 0
                for images, _ in tqdm(loader, desc=f"teacher cache view {view + 1}/{views}", leave=False,
                                      disable=None if progress else True):
                    with torch.inference_mode():
                        logits = teacher(images.to(device))
                        outputs = {**taps.outputs, LOGITS: logits}
                    for i, p in enumerate(paths):
                        out = outputs[p].float().cpu().numpy()
                        if dtype == "float16" and np.abs(out).max(initial=0) > np.finfo(np.float16).max:
                            raise DistillError(f"teacher output {p!r} exceeds the float16 range "
                                               f"({np.abs(out).max():.3g}); expected cache dtype float32")
                        if p not in arrays:
                            arrays[p] = np.lib.format.open_memmap(directory / f"{i}.npy", mode="w+",
                                                                  dtype=np.dtype(dtype),
                                                                  shape=(views, len(dataset), *out.shape[1:]))
                        arrays[p][view, start:start + len(out)] = out
                    start += len(images)
        finally:
            taps.remove()
        for a in arrays.values():
            a.flush()
        meta["complete"] = True
        meta_file.write_text(json.dumps(meta))
        return cls(directory, meta)
