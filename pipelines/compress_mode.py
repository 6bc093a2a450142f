"""``python -m pipelines.ensemble --compress``: the ensemble as the teacher of a compression search.

The pipeline's teachers and ``ensemble_eval`` stage run as usual (the teachers' outputs on the train split
computed once and cached); then one stage, ``compress``, runs the sweep over ``sweep.search_space``
(default ``search_spaces/compress.yaml``, with that space's objectives and run sizes) with all M teachers
as the teacher (:meth:`pipelines.ensemble_pipeline.EnsemblePipeline._sweep_stage`, the ``--sweep`` path):
its confirmed accuracy-vs-cost front, each point paired with its architecture alone, has the ensemble and
each teacher as reference rows (accuracy, params, MACs, latency).
"""

from __future__ import annotations

from typing import Any

from orchestrator.config.schema import Config, ConfigError, apply_overrides
from orchestrator.sweep.confirm.front import spec_of
from orchestrator.config.objectives import budget_of, resolve

DEFAULT_SPACE = "compress"


def compress_config(cfg: Config, given: list[str]) -> Config:
    """``cfg`` (``pipeline.compress`` true) made a compression search: ``sweep.search_space`` compress unless
    given, the space's declared objectives and run sizes unless given, the students alone trained with each
    front point (``sweep.baseline``), the pipeline's own name with ``-compress``. A combination that cannot
    give a confirmed front is a ConfigError naming the key."""
    from orchestrator.sweep.cli import hold_given, space_defaults_unless_given

    if cfg.pipeline.sweep:
        raise ConfigError("pipeline.compress", True, "false with pipeline.sweep=true (--sweep tunes the distillation "
                          "of one student, --compress searches the student: choose one)")
    if "pipeline.seeds" in given:
        raise ConfigError("pipeline.seeds", cfg.pipeline.seeds, "unset with --compress (each front point and its "
                          "architecture alone are trained on sweep.confirm.seeds fresh seeds)")
    values: dict[str, Any] = {}
    if "sweep.search_space" not in given:
        values["sweep.search_space"] = DEFAULT_SPACE
    if "sweep.baseline" not in given:
        values["sweep.baseline"] = True
    if "name" not in given:
        values["name"] = f"{cfg.name}-compress"
    cfg = apply_overrides(cfg, values) if values else cfg
    cfg = space_defaults_unless_given(hold_given(cfg, given), [*given, "name"])  # the pipeline keeps its name
    if spec_of(resolve(cfg), budget_of(cfg), cfg.sweep.metric, cfg.sweep.mode) is None:
        raise ConfigError("sweep.objectives", cfg.sweep.objectives, "a cost objective, e.g. "
                          "[val/acc1:max,cost/latency_ms:min], or a sweep.budget: --compress confirms an "
                          "accuracy-vs-cost front (the space declares none)")
    if cfg.sweep.confirm.top_k == 0:
        raise ConfigError("sweep.confirm.top_k", 0, "an integer >= 1 with --compress (the front is confirmed on "
                          "fresh seeds)")
    return cfg


def reference_rows(ens: dict, cfg: Config, data) -> list[dict[str, Any]]:
    """The front's reference rows: the ensemble (test accuracy of the mean softmax; cost: its teachers'
    summed), then each teacher (``ens``: the ``ensemble_eval`` stage's result)."""
    from orchestrator.sweep.confirm.front_stage import ensemble_row, teacher_row

    teachers = [teacher_row(t["source"], t["name"], t["test/acc1"], cfg, data) for t in ens["teachers"]]
    return [ensemble_row(teachers, ens["ensemble"]["test/acc1"]), *teachers]
