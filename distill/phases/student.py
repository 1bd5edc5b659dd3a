"""The student phases: the distilled student, the same student on labels alone, and the gain."""
from __future__ import annotations

import sys
import time

from torch import nn
from torch.utils.data import Dataset

from .. import distributed
from ..cache import CachedTeacherDataset, TeacherCache, cache_key, draws_random_views
from ..distiller import Distiller, IndexedDataset, Term
from ..gain import paired_gain
from ..train import Supervised, correct_predictions, fit
from .context import RunContext


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
    terms = ctx.terms()
    with Distiller(teacher, student, terms, ctx.data.input_shape, ce_weight=ctx.recipe.distill.ce_weight) as distiller:
        data = _cached_train_set(ctx, teacher, terms) if ctx.recipe.distill.cache else ctx.train_set("student")
        if any(getattr(t.loss, "needs_indices", False) for t in terms) and not ctx.recipe.distill.cache:
            data = IndexedDataset(data)  # the cache's rows carry their index already
        history = fit(distiller, data, spec.schedule(), **ctx.fit_options("student"))
        connectors = sorted(distiller.connectors)
    ctx.finish("student", student, history, ctx.card("student"), connectors=connectors)
    return student


def baseline_phase(ctx: RunContext) -> nn.Module:
    """The same student, from the same initial weights, trained on the labels alone."""
    done = ctx.finished("baseline")
    if done is not None:
        return done
    model = ctx.build("student", ctx.recipe.student.weights)
    history = fit(Supervised(model), ctx.train_set("student"), ctx.recipe.student.schedule(),
                  **ctx.fit_options("baseline"))
    ctx.finish("baseline", model, history, ctx.card("student"))
    return model


def gain_phase(ctx: RunContext, student: nn.Module, baseline: nn.Module) -> None:
    """What distillation bought: student vs baseline on the same test images (paired band)."""
    ctx.metrics["gain"] = paired_gain(correct_predictions(student, ctx.data.test, ctx.device),
                                      correct_predictions(baseline, ctx.data.test, ctx.device))


def _cached_train_set(ctx: RunContext, teacher: nn.Module, terms: list[Term]) -> Dataset:
    """The student's training set with the teacher's outputs read from the run's cache. Rank 0
    builds (or reuses) the cache; the other ranks wait, then only open it, under the same key."""
    d = ctx.recipe.distill
    started = time.perf_counter()
    train = ctx.train_set("student")
    paths, directory = [t.teacher for t in terms], ctx.run.path / "teacher_cache"
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
