"""The phases of `distill run`, one function each, in the order the pipeline calls them."""
from .choose import choose_phase, verify_budget_phase
from .context import RunContext
from .deploy import bench_phase, export_phase
from .preflight import preflight
from .prune import prune_phase
from .student import baseline_phase, gain_phase, pseudo_label_phase, student_phase
from .teacher import teacher_phase

__all__ = ["RunContext", "baseline_phase", "bench_phase", "choose_phase", "export_phase", "gain_phase", "preflight",
           "prune_phase", "pseudo_label_phase", "student_phase", "teacher_phase", "verify_budget_phase"]
