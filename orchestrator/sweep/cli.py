"""``python -m orchestrator.sweep``: Ray Tune + Optuna (TPE) + ASHA over Ray Train distillation trials.

Flow: config -> data -> search space (validated) -> teacher (given, or trained
once and cached) -> teacher outputs precomputed once (no augmentation) ->
Tune (paper defaults first, then TPE; every trial trains with the same seeds;
one TorchTrainer run per trial; MLflow child runs) -> leaderboard ->
confirmation (top-k configs, the best paper default and the student alone
re-trained on fresh seeds) -> chosen config by mean validation accuracy, its
test mean ± sd and paired gains with intervals -> its student registered.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.config.schema import (
    Config, ConfigError, apply_overrides, dump_yaml, flatten, given_keys, load_config, student_arch, to_dict,
)
from orchestrator.sweep.plan import make_plan
from orchestrator.sweep.search.space import available_spaces


EXAMPLE = (
    "example:\n"
    "  python -m orchestrator.sweep --num-samples 12 sweep.search_space=kd "
    "distill.kd.temperature=4 train.epochs=6\n"
    "  (a key you set that the search space samples is held at your value, out of the space)\n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Distillation hyperparameter sweep: Ray Tune + Optuna + ASHA, every trial a Ray Train run, "
        "everything logged to MLflow. Any config key can be overridden as key.sub=value "
        "(see --print-config for all keys and defaults).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to run")
    what.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=6")
    what.add_argument("--config", help="YAML config file (defaults are built in)")
    what.add_argument("--name", help="sweep name = MLflow experiment (default: fmnist-crd-kd)")
    what.add_argument("--seed", type=int, help="seeds data split, Optuna and every trial (default: 0)")
    what.add_argument("--num-samples", type=int, help="number of trials (default: 8)")
    what.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    modes = parser.add_argument_group("modes")
    modes.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    modes.add_argument("--dry-run", action="store_true", help="validate, show the space and resources, start nothing")
    modes.add_argument(
        "--resume", nargs="?", const="latest", metavar="PATH",
        help="resume an interrupted sweep (default: the latest one of this name)",
    )
    where = parser.add_argument_group("where")
    where.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    where.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    where.add_argument("--storage-path", help="where Ray writes trial results and checkpoints: a folder (default: ./runs) or a "
                       "URI (s3://bucket/prefix, gs://..., any pyarrow filesystem) every node can reach; with a URI "
                       "the driver's own files stay in ./runs")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    flags = {
        "name": args.name, "seed": args.seed, "sweep.num_samples": args.num_samples,
        "sweep.max_concurrent": args.max_concurrent, "sweep.storage_path": args.storage_path,
        "tracking.uri": args.tracking_uri, "ray.address": args.address,
    }
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.resume:
        overrides.append("sweep.resume=true")
    cfg = load_config(args.config, overrides)
    if args.resume:  # the held keys are the ones the sweep started with (its config.yaml)
        from orchestrator.sweep.driver_copy import restore

        args.resume = restore(cfg.sweep.storage_path, cfg.name, args.resume)  # from a storage URI, if ./runs lacks it
        return resumed_config(cfg, args.config, overrides, args.resume)
    given = given_keys(args.config, overrides)
    return space_defaults_unless_given(hold_given(cfg, given), given)


def space_defaults_unless_given(cfg: Config, given: list[str]) -> Config:
    """``cfg`` with what the search space declares for itself, each unless the user set it: ``defaults:``
    (compress.yaml: its name, trials and confirmed points sized for its time budget) and ``objectives:`` as
    ``sweep.objectives`` (compress.yaml's accuracy-vs-latency front; not with a ``sweep.budget``, whose mode has
    the one objective); validated like given values (ConfigError)."""
    from orchestrator.sweep.search.space import space_defaults, space_objectives

    values = {k: v for k, v in space_defaults(cfg.sweep.search_space).items() if k not in given}
    declared = space_objectives(cfg.sweep.search_space)
    if declared is not None and "sweep.objectives" not in given and not cfg.sweep.budget:
        values["sweep.objectives"] = declared
    return apply_overrides(cfg, values) if values else cfg


def hold_given(cfg: Config, given: list[str]) -> Config:
    """``cfg`` with ``sweep.held_keys`` extended by the ``given`` keys its search space samples or fixes:
    a value the user set is held, never replaced by a sampled one."""
    from orchestrator.sweep.search.space import space_keys

    in_space = space_keys(cfg.sweep.search_space)
    cfg.sweep.held_keys = list(dict.fromkeys(cfg.sweep.held_keys + [k for k in given if k in in_space]))
    return cfg


def resumed_config(cfg: Config, path: str | None, overrides: list[str], resume: str) -> Config:
    """The config the resumed sweep started with (its ``config.yaml``) under what was given now; anything given
    now that differs from it is a ConfigError naming every differing key. A changed search-space file too."""
    from orchestrator.sweep.search.space import space_path
    from orchestrator.infra.storage import local_root
    from orchestrator.sweep.folder import CONFIG_FILE, differing_keys, find_folder, space_changed

    folder = find_folder(local_root(cfg.sweep.storage_path), cfg.name, resume)
    if not (folder / CONFIG_FILE).is_file():  # stopped before it saved its config: nothing to restore
        return cfg
    saved = flatten(to_dict(load_config(folder / CONFIG_FILE)))
    cfg = load_config(path, overrides, defaults=saved)
    differ = differing_keys(saved, flatten(to_dict(cfg)))
    if differ:
        raise ConfigError(", ".join(differ), [flatten(to_dict(cfg))[k] for k in differ],
                          f"the values the sweep in {folder} started with, {[saved[k] for k in differ]} "
                          f"(or start a new sweep without --resume)")
    if space_changed(folder, space_path(cfg.sweep.search_space)):
        raise ConfigError("sweep.search_space", cfg.sweep.search_space,
                          f"the space the sweep in {folder} started with: its file changed since "
                          f"(the original is {folder / 'search_space.yaml'})")
    return cfg


def check_weights_available(cfg: Config, data) -> None:
    """Load the published weights the config names once (downloading them if not cached), so that
    unavailable weights are an error before anything starts (WeightsUnavailableError)."""
    from orchestrator.models.pretrained import build_with_weights

    for arch, weights in ((cfg.model.teacher, cfg.teacher.weights), (cfg.model.student, cfg.model.student_weights)):
        if weights:
            build_with_weights(arch, data.num_classes, data.in_channels, weights)


def check_feature_stages(configs: list[Config], data, teacher=None) -> None:
    """Every stage selector the sweep can use picks stages the student and the teacher (the given one, else
    ``model.teacher``) have (ConfigError naming the knob and the student's stages), checked before any work
    instead of when a trial builds its terms."""
    from orchestrator.distill.registry import knobs_of, method_terms, stage_problem, term
    from orchestrator.models import build_model
    from orchestrator.models.base import probe_shapes

    reading = [c for c in configs if any(term(n).needs_for(knobs_of(c.distill, n)).stages
                                         for n in method_terms(c.distill.method))]
    if not reading:
        return
    cfg = reading[0]
    teacher = probe_shapes(teacher if teacher is not None else build_model(cfg.model.teacher, data.num_classes,
                                                                           data.in_channels),
                           data.in_channels, data.image_size)
    students: dict[str, object] = {}  # a sampled student: each architecture probed once
    for c in reading:
        arch = student_arch(c.model)
        if arch not in students:
            students[arch] = probe_shapes(build_model(arch, data.num_classes, data.in_channels), data.in_channels,
                                          data.image_size)
        problem = stage_problem(c.distill, data.num_classes, students[arch], (teacher,))
        if problem:
            raise ConfigError(*problem)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from orchestrator.infra.dry_run import writing_nothing

    with writing_nothing(args.dry_run):  # a dry run computes what it shows (data, costs) and caches none of it
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from orchestrator.infra.ray_compat import version_warnings

    for line in version_warnings():  # Ray/Optuna outside the range the internals the tool uses were tested on
        print(line, file=sys.stderr)

    from orchestrator.infra import cluster
    from orchestrator.run import preflight
    from orchestrator.data import DatasetNotFoundError, build_data
    from orchestrator.models.pretrained import WeightsUnavailableError
    from orchestrator.teacher.checkpoint import TeacherCheckpointError
    from orchestrator.infra.tracking import resolve_tracking_uri
    from orchestrator.config.schema import in_process
    from orchestrator.sweep.search.space import possible_configs
    from orchestrator.sweep.costs import budget_problem, students_table
    from orchestrator.config.objectives import budget_of
    from orchestrator.teacher_outputs import plan_line

    address = cluster.resolve_address(cfg.ray.address)
    try:
        data = build_data(cfg.data, cfg.seed)
        plan = make_plan(cfg, len(data.train))
        if address is None:
            preflight.check_local(cfg, plan.trial_cpu, in_process(cfg))
        # what the run would refuse later (tracking store, a teacher that does not fit) is an error now, and
        # checking it writes nothing (preflight)
        uri = resolve_tracking_uri(cfg.tracking.uri)
        preflight.check_tracking_store(uri)
        teacher = preflight.check_teacher(cfg.teacher.checkpoint, cfg.model.teacher, data, cfg.teacher.normalize,
                                          "model.teacher", uri) if cfg.teacher.checkpoint else None
        check_feature_stages([cfg, *possible_configs(plan.space, cfg)], data, teacher)
        check_weights_available(cfg, data)
        budget, budget_read = budget_of(cfg), {}
        if budget is not None:  # no student of the space fits: an error before anything starts
            problem, budget_read = budget_problem(plan.space, cfg, data, budget)
            if problem:
                raise ConfigError("sweep.budget", cfg.sweep.budget,
                                  f"a budget some student of the space meets ({problem})")
    except (ConfigError, DatasetNotFoundError, TeacherCheckpointError, WeightsUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        if address is not None:  # a real run checks after connecting (sweep.run)
            try:
                preflight.check_cluster(address, {"CPU": plan.trial_cpu, "GPU": plan.trial_gpu}, cfg)
            except cluster.ClusterError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        print(plan.describe())
        print(students_table(plan.space, cfg, data, budget, budget_read))
        print(plan_line(cfg, possible_configs(plan.space, cfg), data))
        print(f"\nsearch spaces shipped: {', '.join(available_spaces())}")
        print("dry run: nothing was started")
        return 0

    from orchestrator.sweep.run import SweepRunner

    return SweepRunner(plan, data, resume=args.resume).run()
