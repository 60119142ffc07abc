"""Distillation of a classifier-free-guided model: guided sampling at the price of unguided, in fewer steps.

* ``guidance.py``: stage 1, guidance distillation (Meng et al. 2023, arXiv 2210.03142): a student ε_η(z, λ, c, w)
  with the teacher's architecture plus a w embedding learns the guided (1 + w) ε(z, c) - w ε(z) in one pass.
* ``progressive.py``: stage 2, progressive distillation (Salimans & Ho 2022, arXiv 2202.00512): one student
  DDIM step learns two teacher DDIM steps, N → N/2 per stage.
* ``student.py``: the student as eps_fns (``Student.at(w)``), its w range policy (refused outside), loading.
* ``run.py``: distillation runs through the project's Trainer (``distill_config``, ``distill``), and the record each
  run keeps of its teacher.
* ``evaluate.py``: ``sweep_student``, the evaluation sweep of a student (one network row per step at every w).
"""

from cfgdiff.distillation.guidance import (
    GuidanceDistillationLoss,
    WEpsFn,
    guided_teacher,
    init_student,
    student_config,
)
from cfgdiff.distillation.progressive import (
    WEIGHTINGS,
    ProgressiveDistillationLoss,
    check_halving,
    ddim_step,
    target_x,
    teacher_two_steps,
)
from cfgdiff.distillation.run import DistillConfig, TeacherError, distill, distill_config, stage_cost
from cfgdiff.distillation.student import (
    DISTILLATION_KEY,
    STAGE_GUIDANCE,
    STAGE_PROGRESSIVE,
    GuidedStudent,
    Student,
    WRange,
    WRangeError,
    distillation_info,
    file_sha256,
    load_student,
)

__all__ = [
    "DISTILLATION_KEY",
    "DistillConfig",
    "TeacherError",
    "distill",
    "distill_config",
    "stage_cost",
    "STAGE_GUIDANCE",
    "STAGE_PROGRESSIVE",
    "WEIGHTINGS",
    "GuidanceDistillationLoss",
    "GuidedStudent",
    "ProgressiveDistillationLoss",
    "Student",
    "WEpsFn",
    "WRange",
    "WRangeError",
    "check_halving",
    "ddim_step",
    "distillation_info",
    "file_sha256",
    "guided_teacher",
    "init_student",
    "load_student",
    "student_config",
    "target_x",
    "teacher_two_steps",
]
