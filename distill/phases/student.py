"""The student phases: the distilled student, the same student on labels alone (and on the
teacher's hard pseudo-labels), and the gains between them."""
from __future__ import annotations

import sys
import time

from torch import nn
from torch.utils.data import Dataset

from .. import distributed
from ..cache import CachedTeacherDataset, TeacherCache, cache_key, draws_random_views
from ..distiller import Distiller, IndexedDataset, Term
from ..gain import paired_gain
from ..losses import LOSSES
from ..losses.labels import PseudoLabelLoss
from ..taps import LOGITS
from ..train import Supervised, correct_predictions, fit
from .context import RunContext, teacher_path


def student_phase(ctx: RunContext, teacher: nn.Module) -> nn.Module:
    """The student distilled from `teacher` by the recipe's terms (with CE on the labels)."""
    spec = ctx.recipe.student
    if spec.checkpoint:  # an already distilled student, e.g. to compare pruning recoveries
        model = ctx.load(spec.checkpoint)[0].to(ctx.device)
        ctx.score("student", model, [], {"source": str(spec.checkpoint)})
        return model
    done = ctx.finished("student")
    if done is not None:
        return done
    student = ctx.build("student", spec.weights)
    with Distiller(teacher, student, ctx.terms(), ctx.data.input_shape, ce_weight=ctx.recipe.distill.ce_weight) as distiller:
        history = fit(distiller, _transfer_set(ctx, teacher), spec.schedule(), **ctx.fit_options("student"))
        connectors = sorted(distiller.connectors)
    ctx.finish("student", student, history, ctx.card("student"), connectors=connectors)
    return student


def pseudo_label_phase(ctx: RunContext, teacher: nn.Module) -> nn.Module:
    """The same student, from the same initial weights and on the same images, taught by the
    teacher's hard top-1 classes instead of its soft targets (pseudo-labelling), with the same
    cross-entropy on the true labels: what the soft targets add is the student's gain over it."""
    done = ctx.finished("pseudo")
    if done is not None:
        return done
    model = ctx.build("student", ctx.recipe.student.weights)
    terms = [Term("pseudo_labels", PseudoLabelLoss())]
    with Distiller(teacher, model, terms, ctx.data.input_shape, ce_weight=ctx.recipe.distill.ce_weight) as distiller:
        history = fit(distiller, _transfer_set(ctx, teacher), ctx.recipe.student.schedule(),
                      **ctx.fit_options("pseudo"))
    ctx.finish("pseudo", model, history, ctx.card("student"))
    return model


def baseline_phase(ctx: RunContext) -> nn.Module:
    """The same student, from the same initial weights, trained on the labels alone."""
    done = ctx.finished("baseline")
    if done is not None:
        return done
    model = ctx.build("student", ctx.recipe.student.weights)
    history = fit(Supervised(model), ctx.train_set("baseline"), ctx.recipe.student.schedule(),
                  **ctx.fit_options("baseline"))
    ctx.finish("baseline", model, history, ctx.card("student"))
    return model


def gain_phase(ctx: RunContext, student: nn.Module, other: nn.Module, key: str = "gain") -> None:
    """What distillation bought: the student vs `other` (the baseline, or the pseudo-label student)
    on the same test images, with the paired band; stored as metrics[key]."""
    ctx.metrics[key] = paired_gain(correct_predictions(student, ctx.data.test, ctx.device),
                                   correct_predictions(other, ctx.data.test, ctx.device))


def _transfer_set(ctx: RunContext, teacher: nn.Module) -> Dataset:
    """The images the students distil on, with the teacher's outputs from the cache when asked, and
    each sample's index when a term needs it (CRD; the cache's rows carry their index already)."""
    if ctx.recipe.distill.cache:
        return _cached_train_set(ctx, teacher)
    data = ctx.train_set("student")
    needs_indices = any(getattr(LOSSES[t.loss], "needs_indices", False) for t in ctx.recipe.distill.terms)
    return IndexedDataset(data) if needs_indices else data


def _cached_train_set(ctx: RunContext, teacher: nn.Module) -> Dataset:
    """The student's training set with the teacher's outputs read from the run's cache. Rank 0
    builds (or reuses) the cache; the other ranks wait, then only open it, under the same key.
    One cache serves the distilled and the pseudo-label student: it holds the logits for both."""
    d = ctx.recipe.distill
    started = time.perf_counter()
    train = ctx.train_set("student")
    paths = [teacher_path(ctx.recipe, t) for t in d.terms] + ([LOGITS] if ctx.recipe.baseline.pseudo_labels else [])
    directory = ctx.run.path / "teacher_cache"
    if distributed.is_main():
        if d.cache_views == 1 and draws_random_views(train, ctx.recipe.seed):
            print("warning: the training images are augmented but distill.cache_views = 1, so every image "
                  "keeps one frozen augmented view for the whole run; set distill.cache_views (about "
                  "epochs / 4) for more diversity", file=sys.stderr)
        cache = TeacherCache.build(teacher, train, paths, directory, views=d.cache_views, seed=ctx.recipe.seed,
                                   dtype=d.cache_dtype, device=ctx.device,
                                   num_workers=ctx.recipe.data.num_workers, progress=ctx.progress)
        distributed.barrier()
    else:
        distributed.barrier()
        cache = TeacherCache.open(directory, cache_key(teacher, train, paths, views=d.cache_views,
                                                       seed=ctx.recipe.seed, dtype=d.cache_dtype))
    ctx.metrics["teacher_cache"] = {"key": cache.key, "reused": cache.reused, "bytes": cache.nbytes(),
                                    "views": cache.views, "dtype": d.cache_dtype,
                                    "seconds": round(time.perf_counter() - started, 1)}
    return CachedTeacherDataset(train, cache)
