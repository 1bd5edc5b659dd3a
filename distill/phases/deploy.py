"""The deployment phases: verified ONNX files of the students (+ int8), then the run's benchmark."""
from __future__ import annotations

from pathlib import Path

from .. import distributed
from ..bench import BenchResult, benchmark, write_report
from ..data import take_batch
from ..export import export_onnx, quantize_int8
from ..latency import compare_int8
from .context import RunContext, recipe_trust

STUDENTS = ("student", "pruned")


def export_phase(ctx: RunContext) -> dict[str, Path]:
    """ROLE.onnx for the student (and pruned student), verified on a real test batch, + int8."""
    spec, onnx_files = ctx.recipe.export, {}
    if not distributed.is_main():
        return onnx_files
    for role, checkpoint in _checkpoints(ctx, STUDENTS).items():
        model, card = ctx.load(checkpoint)
        path = ctx.run.path / f"{role}.onnx"
        report = export_onnx(model, card, path, sample=take_batch(ctx.data.test, 32)[0], atol=spec.atol)
        ctx.metrics.setdefault("export", {})[role] = {
            "file": path.name, "bytes": report.size_bytes, "max_abs_diff": report.max_abs_diff}
        onnx_files[role] = path
        if spec.int8:
            calibration = take_batch(ctx.data.transfer_plain, spec.calibration_images)[0]  # unlabelled too
            int8 = quantize_int8(path, ctx.run.path / f"{role}.int8.onnx", calibration)
            if _int8_guard(ctx, role, path, int8):
                onnx_files[f"{role}.int8"] = int8
        if ctx.progress:
            print(report.summary())
    return onnx_files


def _int8_guard(ctx: RunContext, role: str, float_file: Path, int8_file: Path) -> bool:
    """Keep the int8 file only if it is faster and at most `export.int8_max_drop` points less
    accurate on the test set (timed as a latency budget is); else remove it and say why."""
    s = ctx.recipe.student
    result = compare_int8(float_file, int8_file, ctx.data.input_shape, ctx.data.test,
                          max_drop_points=ctx.recipe.export.int8_max_drop, batch=s.latency_batch,
                          provider=s.latency_provider)
    ctx.metrics["export"][role]["int8"] = result
    if not result["kept"]:
        int8_file.unlink(missing_ok=True)
    if ctx.progress:
        print(f"{role}: {result['reason']}")
    return result["kept"]


def bench_phase(ctx: RunContext, onnx_files: dict[str, Path]) -> None:
    """bench.json/md/png: every checkpoint and ONNX file of the run, timed against the teacher."""
    if not distributed.is_main():
        return
    artifacts = _checkpoints(ctx, ("teacher", "student", "baseline", "pruned"))
    artifacts.update({f"{name}.onnx": path for name, path in onnx_files.items()})
    b = ctx.recipe.bench
    # an ensemble teacher has no single checkpoint to time: the student is then the reference
    reference = "teacher" if "teacher" in artifacts else "student"
    result = benchmark(artifacts, teacher=reference, batch_sizes=(1, b.batch_size), rounds=b.rounds,
                       data=ctx.data.test, progress=ctx.progress, trust_code=recipe_trust(ctx.recipe))
    write_report(result, ctx.run.path)
    ctx.metrics["bench"] = {"file": "bench.json", "teacher_runtime": result.teacher_runtime,
                            "speedups": _onnx_speedups(result)}


def _onnx_speedups(result: BenchResult) -> dict[str, dict[str, float]]:
    """Each exported student's ONNX Runtime latency against the teacher in its fastest runtime."""
    batch = str(result.settings["latency_batch"])
    teacher_p50 = result.row(result.teacher, result.teacher_runtime)["batches"][batch]["p50_ms"]
    return {r["artifact"]: {"speedup": r["speedup_vs_teacher"], "p50_ms": r["batches"][batch]["p50_ms"],
                            "teacher_p50_ms": teacher_p50, "batch": int(batch)}
            for r in result.rows if r["artifact"].endswith(".onnx") and r["runtime"] == "ort"}


def _checkpoints(ctx: RunContext, roles: tuple[str, ...]) -> dict[str, Path]:
    """The checkpoint of each role of `roles` that this run has: the one the recipe gave
    (`teacher.checkpoint`, `student.checkpoint`), else the one its phase left in the run directory."""
    found = {}
    for role in roles:
        given = ctx.spec(role).checkpoint if role in ("teacher", "student") else None
        path = Path(given) if given else ctx.run.checkpoint(role)
        if role in ctx.metrics and path.exists():
            found[role] = path
    return found
