"""``python -m pipelines.ensemble``: compress an ensemble of teachers into one deployable student.

Stages (each a nested MLflow run ``orchestrator.kind=stage`` with tag ``stage``, under
one parent run ``orchestrator.kind=pipeline``; a stage already finished with the
same inputs is reused on rerun, see :mod:`pipelines.stages`):

1. ``teachers``             M teachers trained as concurrent Ray Train runs (or given), cached
                            (:mod:`pipelines.teachers`).
2. ``ensemble_eval``        every teacher and the ensemble (mean softmax) on val and test; each
                            teacher's outputs on the un-augmented train split computed ONCE and
                            cached (Ray tasks, one per teacher); the best single teacher chosen on
                            val; the cost of teacher inference per step measured live vs cached.
                            With ``data.augment``, the distillation stages read instead each
                            teacher's view cache (built once per teacher and seed before them,
                            ``sweep/teacher_outputs.py``), or run the teachers live (feature maps).
   With ``--compress`` stage 3 is ``compress`` (:mod:`pipelines.compress_mode`): a compression search over
   ``search_spaces/compress.yaml`` with the ensemble as teacher, ending with its confirmed accuracy-vs-cost
   front (the ensemble and each teacher as reference rows); no stage 4.
3. ``distill_ensemble``     the student distilled from the ensemble: one run with the configured
                            values, or with ``--sweep`` the sweep (Ray Tune + Optuna + ASHA, every
                            trial a Ray Train run) over ``search_spaces/ensemble.yaml``.
   ``distill_best_teacher`` the same student and values, distilled from the best single teacher.
   ``student_alone``        the same student trained alone (CE).
                            Each student is trained on ``pipeline.seeds`` seeds (one child run per
                            seed); all runs go concurrently, one Ray task each.
4. ``compare``              test acc1 (students: mean ± sd over seeds, with paired 95% t-intervals of
                            their gains), parameters and CPU inference time of every model: printed,
                            logged as ``comparison.csv`` + ``comparison.png`` (+ ``.md``) to the parent.

Examples::

    python -m pipelines.ensemble                       # 3 teachers, Fashion-MNIST, single KD run
    python -m pipelines.ensemble --sweep sweep.num_samples=8
    python -m pipelines.ensemble --compress            # the smallest students that keep the ensemble's accuracy
    python -m pipelines.ensemble data.dataset=digits "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1]" \\
        model.student=tiny_student teacher.epochs=2 train.epochs=2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from orchestrator.infra import tracking
from orchestrator.config.schema import Config, ConfigError, pipeline_output_dir
from pipelines.ensemble_pipeline import EnsemblePipeline, distill_configs
from pipelines.teachers import build_parser as teachers_parser
from pipelines.teachers import describe_teachers, parse_cli, preflight_checks


STAGES = ("teachers", "ensemble_eval", "distill_ensemble", "distill_best_teacher", "student_alone", "compare")
COMPRESS_STAGES = ("teachers", "ensemble_eval", "compress")


def build_parser() -> argparse.ArgumentParser:
    parser = teachers_parser(
        "python -m pipelines.ensemble",
        "Ensemble -> one student: train (or take) M teachers as concurrent Ray Train runs, evaluate them and "
        "their ensemble, distil the ensemble into the student (one run, or a sweep with --sweep), and compare "
        "with the student alone and the student distilled from the best single teacher. One MLflow parent run "
        "(kind=pipeline) with a nested run per stage; finished stages are reused on rerun. Any key can be "
        "overridden as key.sub=value; see --print-config.",
    )
    parser.add_argument("--sweep", action="store_true",
                        help="distil the ensemble with a sweep over sweep.search_space (default: ensemble)")
    parser.add_argument("--compress", action="store_true",
                        help="the ensemble as the teacher of a compression search (sweep.search_space, default "
                        "compress): its confirmed accuracy-vs-cost front, the ensemble and each teacher as reference "
                        "rows")
    return parser


def dry_run(cfg: Config, data) -> None:
    from orchestrator.teacher_outputs import choose, describe

    print("\n".join(describe_teachers(cfg)))
    if cfg.pipeline.compress:
        compress_dry_run(cfg, data)
        return
    c = cfg
    seeds = c.pipeline.student_seeds(c.seed)
    how = (f"sweep over '{c.sweep.search_space}' ({c.sweep.num_samples} trials)" if cfg.pipeline.sweep
           else f"{c.distill.method}, {c.train.epochs} epochs, lr {c.train.lr}")
    print(f"student: {c.model.student}; ensemble distillation: {how}; each student trained on seeds {seeds}")
    if cfg.pipeline.sweep:
        from orchestrator.sweep.search.space import load_space

        space = load_space(cfg.sweep.search_space, cfg, len(data.train))
        if space.held:
            print(space.held_line())
    inputs = choose(cfg, distill_configs(cfg, len(data.train)))
    if inputs.kind == "views" and not cfg.pipeline.sweep:  # the distillation stages train on the students' seeds
        inputs = replace(inputs, seeds=tuple(seeds))
    print(describe(cfg, inputs, len(data.train), data.num_classes, None, readers="distillation stage"))
    print(f"stages: {', '.join(STAGES)}; folder {pipeline_output_dir(cfg)}")
    print("dry run: nothing was started")


def compress_dry_run(cfg: Config, data) -> None:
    """``--compress --dry-run``: the teachers (above), then what the sweep's dry run shows (objectives, budget,
    the students with their MACs, what will be confirmed) and the front's reference rows."""
    from orchestrator.sweep.plan import make_plan
    from orchestrator.sweep.search.space import possible_configs
    from orchestrator.sweep.costs import students_table
    from orchestrator.config.objectives import budget_of
    from orchestrator.teacher_outputs.choice import plan_line

    plan = make_plan(cfg, len(data.train))
    print(f"compression search with the ensemble of {len(cfg.pipeline.teachers)} teachers as teacher:")
    print(plan.describe())
    print(students_table(plan.space, cfg, data, budget_of(cfg)))
    print(plan_line(cfg, possible_configs(plan.space, cfg), data))
    print("reference rows of the front: the ensemble (mean softmax; cost: its teachers' summed) and each teacher "
          "(test acc1, params, MACs, ONNX Runtime latency)")
    print(f"stages: {', '.join(COMPRESS_STAGES)}; folder {pipeline_output_dir(cfg)}")
    print("dry run: nothing was started")


def check_compress_budget(cfg: Config, data) -> None:
    """``--compress`` with a ``sweep.budget`` no student of the space meets: a ConfigError before any work."""
    from orchestrator.sweep.plan import make_plan
    from orchestrator.sweep.costs import budget_problem
    from orchestrator.config.objectives import budget_of

    budget = budget_of(cfg)
    if budget is not None:
        problem, _ = budget_problem(make_plan(cfg, len(data.train)).space, cfg, data, budget)
        if problem:
            raise ConfigError("sweep.budget", cfg.sweep.budget, f"a budget some student of the space meets ({problem})")


def main(argv: list[str] | None = None) -> int:
    parsed = parse_cli(build_parser(), argv)
    if isinstance(parsed, int):  # a config error (2) or --print-config (0)
        return parsed
    args, cfg = parsed
    from orchestrator.data import DatasetNotFoundError, build_data
    from orchestrator.infra.dry_run import writing_nothing
    from orchestrator.models.pretrained import WeightsUnavailableError
    from orchestrator.sweep.cli import check_weights_available
    from orchestrator.teacher.checkpoint import TeacherCheckpointError

    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    try:
        with writing_nothing(args.dry_run):
            data = build_data(cfg.data, cfg.seed)
        check_weights_available(cfg, data)
        if cfg.pipeline.sweep or cfg.pipeline.compress:
            from orchestrator.sweep.search.space import load_space

            load_space(cfg.sweep.search_space, cfg, len(data.train))  # bad space: exit 2 now
        if cfg.pipeline.compress:
            with writing_nothing(args.dry_run):  # as the sweep's: a run caches the costs it measured
                check_compress_budget(cfg, data)
        preflight_checks(cfg, data, uri)  # tracking store, folder, given teachers: writing nothing
    except (ConfigError, DatasetNotFoundError, WeightsUnavailableError, TeacherCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        dry_run(cfg, data)
        return 0
    try:
        client = tracking.check_connection(uri)
    except tracking.TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return EnsemblePipeline(cfg, data, uri, client).run()


if __name__ == "__main__":
    sys.exit(main())
