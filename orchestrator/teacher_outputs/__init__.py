"""One home for a teacher's outputs: computed once, cached by content, read by every run instead of the teacher.

The one interface the sweep, the pipelines and the run core use (import from here, not from the modules):

- :mod:`.cached`   the outputs file on the un-augmented train split (:class:`CachedTeacherOutputs`) and
                   :func:`compute_teacher_outputs`, one pass of a frozen teacher;
- :mod:`.views`    the per-view cache of an augmented train split, (seed, epoch, index) -> outputs, top-k logits;
- :mod:`.cache`    where both live, their content key (teacher weights, data split, fields) and the size limit
                   (``teacher.cache_max_gb``) past which the teacher runs live (:data:`RUNS_LIVE`);
- :mod:`.choice`   which of the three a sweep's trials read (cached, views, live), decided once from the config;
- :mod:`.prepare`  building them before the first trial (in this process or one Ray task per teacher);
- :mod:`.read`     what one run, for one seed, reads instead of its teachers.

Nothing here trains a model or imports the run core.
"""

from orchestrator.teacher_outputs.cache import (
    RUNS_LIVE, data_key, ensure_outputs, ensure_views, estimated_bytes, teacher_outputs_file,
)
from orchestrator.teacher_outputs.cached import CachedTeacherOutputs, compute_teacher_outputs
from orchestrator.teacher_outputs.choice import TeacherInputs, choose, describe, plan_line, views_bytes
from orchestrator.teacher_outputs.prepare import build_teacher_views, outputs_for, shared_views
from orchestrator.teacher_outputs.read import load_outputs, outputs_for_seed, teacher_inputs_tag
from orchestrator.teacher_outputs.views import TeacherViews, ViewCacheMismatch, build_views

__all__ = [
    "RUNS_LIVE", "CachedTeacherOutputs", "TeacherInputs", "TeacherViews", "ViewCacheMismatch", "build_teacher_views",
    "build_views", "choose", "compute_teacher_outputs", "data_key", "describe", "ensure_outputs", "ensure_views",
    "estimated_bytes", "load_outputs", "outputs_for", "outputs_for_seed", "plan_line", "shared_views",
    "teacher_inputs_tag", "teacher_outputs_file", "views_bytes",
]
