"""Linear probes: how well each depth of a network separates the classes of new data.

When the user's data is small and unlike the pretraining data, the top layers of a pretrained
network are the most specialised to the old task, and a classifier on earlier activations can do
better (Yosinski et al. 2014). A probe answers "which depth should I transfer from?" cheaply: the
network runs once over the data with forward hooks on every chosen layer; each layer's output is
pooled (global average over space for 4-D maps, flattened otherwise), standardised, and a
multinomial logistic regression is fitted on it with full-batch L-BFGS from zero weights, which is
deterministic. The L2 strength and the recommended layer are chosen on held-out data, by accuracy
with ties broken by cross-entropy: the DataBundle's val split when there is one, else seeded
stratified k-fold cross-validation on train (with 10 labels per class a single held-out share
would score each choice on a handful of images), after which the probe is refitted on all of
train. Never on the test set, whose accuracy is reported for reference only.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .errors import DistillError
from .files import atomic_write, atomic_write_text
from .taps import LOGITS, check_path
from .train import make_loader

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # weight decay on the mean cross-entropy, chosen on held-out data
Features = tuple[Tensor, Tensor]    # (pooled features, labels)


@dataclass
class LayerScore:
    """One layer's probe: its pooled feature size and the accuracy of a linear classifier on it."""

    layer: str
    feature_dim: int
    train_accuracy: float
    val_accuracy: float     # on the held-out data the choices are made on (val split or CV folds)
    test_accuracy: float    # for reference; never used for a choice
    l2: float               # the weight decay chosen on the held-out data
    val_loss: float         # held-out cross-entropy: breaks ties of the (coarse, on little data) accuracy

    def merit(self) -> tuple[float, float]:
        return self.val_accuracy, -self.val_loss


@dataclass
class ProbeResult:
    scores: list[LayerScore]  # in depth order
    best: str                 # the layer with the best val accuracy (ties: the lower val loss)
    n_train: int
    n_val: int                # held-out predictions the choices were scored on
    n_test: int
    val_source: str           # the validation split, or k-fold cross-validation on train

    def score(self, layer: str) -> LayerScore:
        return next(s for s in self.scores if s.layer == layer)

    def margin(self) -> float:
        """Half-width of the 95% confidence interval of the best layer's val accuracy."""
        p = self.score(self.best).val_accuracy
        return 1.96 * math.sqrt(p * (1 - p) / max(self.n_val, 1))

    def near_best(self) -> list[str]:
        """The layers whose val accuracy is inside the best's confidence interval (best included):
        on this much held-out data they cannot be told apart."""
        floor = self.score(self.best).val_accuracy - self.margin()
        return [s.layer for s in self.scores if s.val_accuracy >= floor]

    def recommendation(self) -> str:
        best, top = self.score(self.best), self.scores[-1]
        if best is top:
            text = (f"transfer from the top probed layer, {best.layer} (val accuracy "
                    f"{best.val_accuracy:.4f}): the deepest features separate the new classes best")
        else:
            text = (f"transfer from {best.layer} (val accuracy {best.val_accuracy:.4f} vs "
                    f"{top.val_accuracy:.4f} at {top.layer}): classify from its activations rather than "
                    "the top, or fine-tune the layers after it")
        close = [layer for layer in self.near_best() if layer != self.best]
        if close:
            text += (f"; but {', '.join(close)} {'is' if len(close) == 1 else 'are'} within the 95% "
                     f"interval of its val accuracy (+-{self.margin():.4f} on {self.n_val} held-out "
                     "predictions): too close to call on this data")
        return text

    def table(self) -> str:
        lines = [f"{'layer':<24} {'dim':>6} {'train':>7} {'val':>7} {'val loss':>8} {'test':>7} {'l2':>7}"]
        near = self.near_best()
        for s in self.scores:
            mark = "  <- best" if s.layer == self.best else "  ~ best (within noise)" if s.layer in near else ""
            lines.append(f"{s.layer:<24} {s.feature_dim:>6} {s.train_accuracy:>7.4f} {s.val_accuracy:>7.4f} "
                         f"{s.val_loss:>8.4f} {s.test_accuracy:>7.4f} {s.l2:>7.0e}{mark}")
        lines.append(f"({self.n_train} train / {self.n_test} test images; the best layer and l2 are chosen "
                     f"on {self.n_val} held-out predictions ({self.val_source}); test accuracy is for "
                     "reference only)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "near_best": self.near_best(), "margin": self.margin(),
                "recommendation": self.recommendation()}


def default_layers(model: nn.Module) -> list[str]:
    """The top-level children that have parameters (`layer1`... `fc` for a ResNet)."""
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]


def _pool(x: Tensor) -> Tensor:
    return x.mean((2, 3)) if x.ndim == 4 else x.flatten(1)


@torch.no_grad()
def pooled_features(model: nn.Module, layers: Sequence[str], data: Dataset, *,
                    device: torch.device | str = "cpu", batch_size: int = 256
                    ) -> tuple[dict[str, Tensor], Tensor]:
    """({layer: pooled output for every sample}, labels), from one eval-mode pass over `data`.

    A module called several times in one forward contributes its last output, as in FeatureTaps.
    """
    for layer in layers:
        check_path(model, layer)
    device = torch.device(device)
    current: dict[str, Tensor] = {}

    def saver(name: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            current[name] = _pool(output[0] if isinstance(output, (tuple, list)) else output).float().cpu()
        return hook

    handles = [model.get_submodule(name).register_forward_hook(saver(name))
               for name in dict.fromkeys(layers) if name != LOGITS]
    was_training = model.training
    model.eval().to(device)
    parts: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels = []
    try:
        for images, targets in make_loader(data, batch_size, shuffle=False):
            current.clear()
            current[LOGITS] = _pool(model(images.to(device))).float().cpu()
            for name in layers:
                if name not in current:
                    raise DistillError(f"layer {name!r} of {type(model).__name__} produced no output in "
                                       "the forward pass; expected a module the forward calls")
                parts[name].append(current[name])
            labels.append(torch.as_tensor(targets))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(p) for name, p in parts.items()}, torch.cat(labels)


def fit_linear(x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS from zero weights (deterministic)."""
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * l2 * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return head


@torch.no_grad()
def _scores(head: nn.Linear, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a probe."""
    logits = head(x)
    return (logits.argmax(1) == y).sum().item() / len(y), F.cross_entropy(logits, y).item()


def probe_layers(model: nn.Module, layers: Sequence[str], train: Dataset, test: Dataset, *,
                 val: Dataset | None = None, folds: int = 5, device: torch.device | str = "cpu",
                 batch_size: int = 256, l2_grid: Sequence[float] = L2_GRID, max_iter: int = 100,
                 seed: int = 0) -> ProbeResult:
    """Fit a linear probe on each layer's pooled activations and say which depth to transfer from.

    Args:
        train: labelled images without augmentation (a DataBundle's `train_plain`).
        val: where the l2 strength and the best layer are chosen; without it, seeded stratified
            `folds`-fold cross-validation on `train` chooses, then each probe is refitted on all of it.
        test: scored for reference only; it never influences a choice.
    """
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise DistillError("no layers to probe; expected at least one layer path such as 'layer3'")
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    layers.sort(key=lambda name: order.get(name, len(order)))  # depth order; logits last
    train_x, train_y = pooled_features(model, layers, train, device=device, batch_size=batch_size)
    test_x, test_y = pooled_features(model, layers, test, device=device, batch_size=batch_size)
    largest = int(train_y.bincount().max())  # folds deal each class round-robin: more would leave one empty
    if val is not None:
        val_x, val_y = pooled_features(model, layers, val, device=device, batch_size=batch_size)
        source = "the validation split"
    elif not 2 <= folds <= min(len(train_y) // 2, largest):
        raise DistillError(f"cannot cross-validate {len(train_y)} training images in {folds} folds (the largest "
                           f"class has {largest}); expected 2 <= folds <= half the training images and at most "
                           "the largest class's count, or a validation split")
    else:
        source = f"{folds}-fold cross-validation on train, seed {seed}"
    num_classes = int(max(train_y.max(), test_y.max(), val_y.max() if val is not None else 0)) + 1

    def held_out_pairs(layer: str) -> list[tuple[Features, Features]]:
        """(fit on, score on): train and val, or for each fold the other folds and the fold."""
        x = train_x[layer]
        if val is not None:
            return [((x, train_y), (val_x[layer], val_y))]
        return [((x[fit], train_y[fit]), (x[held], train_y[held]))
                for fit, held in stratified_folds(train_y, folds, seed)]

    scores = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small full-batch fits: more threads add only overhead, 10x on a busy machine
    try:
        for layer in layers:
            scores.append(_probe_layer(layer, (train_x[layer], train_y), (test_x[layer], test_y),
                                       held_out_pairs(layer), num_classes, l2_grid, max_iter))
    finally:
        torch.set_num_threads(threads)
    best = max(reversed(scores), key=LayerScore.merit).layer  # exact ties: the deeper layer
    n_val = len(val_y) if val is not None else len(train_y)
    return ProbeResult(scores, best, len(train_y), n_val, len(test_y), source)


def stratified_folds(labels: Tensor, folds: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """(other folds, this fold) positions for each fold; each class is dealt round-robin in a
    seeded order, so every fold holds about 1/folds of every class."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        members = order[labels[order] == c]
        fold_of[members] = torch.arange(len(members)) % folds
    return [((fold_of != f).nonzero().flatten(), (fold_of == f).nonzero().flatten()) for f in range(folds)]


def _fit(x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int
         ) -> tuple[nn.Linear, Tensor, Tensor]:
    """A probe on `x` standardised with its own statistics: (head, mean, std)."""
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features stay 0
    return fit_linear((x - mean) / std, y, num_classes, l2, max_iter), mean, std


def _probe_layer(layer: str, train: Features, test: Features, pairs: list[tuple[Features, Features]],
                 num_classes: int, l2_grid: Sequence[float], max_iter: int) -> LayerScore:
    """Choose l2 on the held-out parts of `pairs`, refit on all of train, score train and test."""
    def held_out(l2: float) -> tuple[float, float]:  # accuracy and loss over every held-out image
        correct = loss = 0.0
        for (x, y), (hx, hy) in pairs:
            head, mean, std = _fit(x, y, num_classes, l2, max_iter)
            accuracy, ce = _scores(head, (hx - mean) / std, hy)
            correct, loss = correct + accuracy * len(hy), loss + ce * len(hy)
        n = sum(len(hy) for _, (_, hy) in pairs)
        return correct / n, loss / n

    merit = {l2: held_out(l2) for l2 in l2_grid}
    l2 = max(reversed(l2_grid), key=lambda c: (merit[c][0], -merit[c][1]))  # exact ties: the stronger l2
    head, mean, std = _fit(*train, num_classes, l2, max_iter)
    train_acc, test_acc = (_scores(head, (x - mean) / std, y)[0] for x, y in (train, test))
    return LayerScore(layer, train[0].shape[1], train_acc, merit[l2][0], test_acc, l2, merit[l2][1])


def write_probe_report(result: ProbeResult, out_dir: str | Path, title: str = "") -> tuple[Path, Path]:
    """probe.json (every number and the recommendation) and probe.png (accuracy per depth)."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DistillError(f"cannot write to {out}: {e.strerror}; expected a writable --out directory") from e
    json_path, png_path = out / "probe.json", out / "probe.png"
    atomic_write_text(json_path, json.dumps({"title": title, **result.to_dict()}, indent=2) + "\n")

    names = [s.layer for s in result.scores]
    fig = Figure(figsize=(max(4.5, 0.9 * len(names) + 2), 3.6))
    ax = fig.subplots()
    for key, style in (("val_accuracy", "o-"), ("test_accuracy", "s--"), ("train_accuracy", ":")):
        ax.plot(names, [getattr(s, key) for s in result.scores], style,
                label=key.replace("_accuracy", "") + (" (choice)" if key == "val_accuracy" else ""))
    best = names.index(result.best)
    ax.plot([best], [result.scores[best].val_accuracy], "*", ms=16, color="C3", label=f"best: {result.best}")
    ax.set_xlabel("layer (input -> output)")
    ax.set_ylabel("linear probe accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "linear probe per depth", fontsize=10)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=120))
    return json_path, png_path
