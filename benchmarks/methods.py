"""Method comparison: every objective at its paper defaults against the student alone, paired by seed.

    python benchmarks/methods.py --out /tmp/methods                       # every preset and ce+<term>, seeds 1 2 3
    python benchmarks/methods.py --methods ce+kd ce+seed --out /tmp/m -- data.labeled_fraction=0.1
    python benchmarks/methods.py --quick --out /tmp/mq                    # digits, tiny models (seconds)
    python benchmarks/methods.py --tune 6 --out /tmp/methods              # also a short sweep per method's space

Each method (a preset, or ``ce+<term>`` for a term no preset starts with) is trained with the project's
plain-PyTorch ``Learner`` (what every trial and confirmation job runs) at the paper defaults the registry
records for it, on each seed, with the default config's data split, teacher and optimiser; the student
alone (``ce``) is trained on the same seeds with the same optimiser. The teacher's outputs are computed once
per set of fields the method reads (``output_cache.ensure_outputs``, the sweep's cache) unless they exceed
``teacher.cache_max_gb``, in which case the teacher runs live. Every (method, seed) result is written to
``<out>/results.json`` as it finishes, so a killed run resumes where it stopped. Prints and writes
``<out>/table.md`` (test accuracy mean ± sd, per seed, paired gain over the student alone with its 95%
interval, minutes per run) and ``<out>/gains.png`` (the gains with their intervals).

``--tune N`` also runs, per method, the real sweep (``python -m orchestrator.sweep``, sweep seed 0, so the
search trains on seed 0 and confirms on seeds 1, 2, 3) over the method's own search space
(``search_spaces/<space>.yaml``, the one that fixes or chooses the method; one sweep per space) with N
trials, the top config, the best paper default and the student alone confirmed on 3 fresh seeds, and adds a
second table from each sweep's ``summary.json``: the chosen config, its test accuracy and its paired gains
over the student alone and over the best paper default (``<out>/tuned/<space>.json``, resumable too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import selection  # noqa: E402

ALONE = "ce"
QUICK = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64",
         "teacher.epochs=4", "teacher.lr=0.1", "train.epochs=2"]


def default_methods() -> list[str]:
    """Every preset, plus ``ce+<term>`` for each term with reference code that no preset of the form ``ce+<term>``
    covers (a term without reference code, e.g. a user's, has no paper setting or space to compare: name it with
    ``--methods``)."""
    from orchestrator.distill import registry

    methods = [m for m in registry.method_names() if m != ALONE]
    covered = {"+".join(registry.method_terms(m)) for m in methods}
    return methods + [f"ce+{t}" for t in registry.term_names()
                      if t != ALONE and f"ce+{t}" not in covered and not registry.term(t).no_reference]


def space_for(method: str) -> Path:
    """The shipped search space of ``method``: the one fixing it, else one (not the zoo) that chooses it."""
    import yaml

    choosing = []
    for path in sorted((common.REPO / "search_spaces").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if (spec.get("fixed") or {}).get("distill.method") == method:
            return path
        if path.stem != "zoo" and method in ((spec.get("params") or {}).get("distill.method") or {}).get("choices", []):
            choosing.append(path)
    if not choosing:
        raise ValueError(f"no search space in search_spaces/ fixes or chooses distill.method={method}")
    return choosing[0]


def method_config(base, method: str, after: dict | None = None):
    """``base`` with ``distill.method=method`` at its paper defaults, then ``after`` (``--set``)."""
    from orchestrator.config.schema import apply_overrides
    from orchestrator.distill import registry

    return apply_overrides(base, {"distill.method": method, **registry.paper_defaults(method), **(after or {})})


def teacher_inputs(cfg, data, teacher_path: str):
    """(teachers, teacher_outputs) for the Learner: the cached outputs of the fields ``cfg`` reads, or the live
    teacher when they exceed the cache limit; ((), None) for a method that reads no teacher."""
    from orchestrator.distill import registry
    from orchestrator.teacher_outputs import CachedTeacherOutputs
    from orchestrator.teacher.checkpoint import load_teacher

    if not registry.needs_teacher(cfg.distill):
        return (), None
    model = load_teacher(teacher_path, data.num_classes, data.in_channels, data.image_size)
    if registry.cacheable(cfg.distill):
        from orchestrator.teacher_outputs import ensure_outputs

        path, _ = ensure_outputs(model, cfg, data, registry.teacher_needs(cfg.distill))
        if path is not None:
            return (), [CachedTeacherOutputs.load(path)]
    return (model,), None


def train(cfg, data, teacher_path: str, seed: int) -> dict:
    """Train ``cfg`` on ``seed``: {"test", "val", "seconds"} (accuracies as fractions)."""
    from orchestrator.config.schema import apply_overrides
    from orchestrator.run.epochs import run_epochs
    from orchestrator.run.learner import Learner

    cfg = apply_overrides(cfg, {"seed": seed})
    start = time.perf_counter()
    teachers, outputs = teacher_inputs(cfg, data, teacher_path)
    trainer = Learner(cfg, data, teachers, teacher_outputs=outputs)

    def progress(metrics: dict, _per_seed) -> None:  # a pre-stage, if any, runs inside the first epoch
        prestage = f"{int(metrics['prestage/epochs'])} pre-stage epochs, then " if "prestage/epochs" in metrics else ""
        print(f"    {cfg.distill.method} seed {seed}: {prestage}epoch {metrics['epoch']}/{cfg.train.epochs}, "
              f"train loss {metrics['train/loss']:.4f}, {metrics['throughput/train_img_s']:.0f} img/s, "
              f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)

    metrics = run_epochs([trainer], evaluate_test=True, on_epoch=progress)
    # test: the student network's (with peers, not the best peer's, as this table has always shown); val: the
    # best network's (the trial's student)
    return {"test": metrics.get("test/student/acc1", metrics["test/acc1"]), "val": metrics["val/acc1"],
            "seconds": time.perf_counter() - start}


def table(results: dict[str, dict[str, dict]], methods: list[str], seeds: list[int], title: str) -> common.Table:
    from orchestrator.distill import registry
    from orchestrator.report.stats import mean_sd, paired_gain

    out = common.Table(title, ["method", "terms", "test acc1 %", "test per seed", "gain over alone, points [95% CI]",
                               "min/run"])
    alone = {int(s): r["test"] for s, r in results.get(ALONE, {}).items()}
    for method in [ALONE, *methods]:
        runs = {int(s): r for s, r in results.get(method, {}).items() if int(s) in seeds}
        if not runs:
            continue
        test = {s: r["test"] for s, r in sorted(runs.items())}
        mean, sd = mean_sd(list(test.values()))
        gain = "" if method == ALONE else paired_gain(test, alone).text()
        minutes = sum(r["seconds"] for r in runs.values()) / len(runs) / 60
        out.add(f"`{method}`", "+".join(registry.method_terms(method)), f"{100 * mean:.2f} ± {100 * sd:.2f}",
                ", ".join(f"{100 * v:.2f}" for v in test.values()), gain, f"{minutes:.1f}")
    return out


def paired_gains(results: dict[str, dict[str, dict]], methods: list[str]) -> list[tuple[str, object]]:
    """(method, its paired gain over the student alone of ``results``) for the methods that have runs."""
    from orchestrator.report.stats import paired_gain

    alone = {int(s): r["test"] for s, r in results.get(ALONE, {}).items()}
    gains = [(m, paired_gain({int(s): r["test"] for s, r in results.get(m, {}).items()}, alone)) for m in methods]
    return [(m, gain) for m, gain in gains if gain.n]


def plot(gains: list[tuple[str, object]], path: Path) -> Path:
    """Paired gains over the student alone (:func:`paired_gains`, possibly of several runs): mean and 95%
    interval, in points, largest first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(gains, key=lambda item: item[1].mean, reverse=True)
    fig = Figure(figsize=(7, 0.32 * len(rows) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, (method, gain) in enumerate(rows):
        low = gain.low if gain.low is not None else gain.mean
        high = gain.high if gain.high is not None else gain.mean
        colour = "tab:blue" if gain.significant else "tab:grey"
        ax.errorbar(100 * gain.mean, y, xerr=[[100 * (gain.mean - low)], [100 * (high - gain.mean)]], fmt="o",
                    color=colour, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [m for m, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test acc1 gain over the student alone (points), mean and 95% CI; blue = excludes 0")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def tune(spaces: dict[Path, list[str]], samples: int, out: Path, overrides: list[str]) -> common.Table:
    """One short sweep per space (resumable: a finished space's summary is kept); the table of their results."""
    from orchestrator.infra.atomic_files import write_json_atomic
    from orchestrator.infra.cache_dir import default_cache_dir

    table = common.Table(f"After a short sweep per method ({samples} trials on seed 0, confirmed on seeds 1, 2, 3)",
                         ["space", "methods", "chosen", "chosen test %", "alone test %", "gain vs alone [95% CI]",
                          "gain vs best paper default [95% CI]", "minutes"])
    (out / "tuned").mkdir(parents=True, exist_ok=True)
    for space, methods in spaces.items():
        stored = out / "tuned" / f"{space.stem}.json"
        if not stored.is_file():
            print(f"sweep over {space.name} ({', '.join(methods)}), {samples} trials ...", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"methods-{space.stem}-") as tmp:
                summary = selection.run_sweep(0, [f"sweep.search_space={space}", f"sweep.num_samples={samples}",
                                                  "sweep.confirm.top_k=1", "sweep.confirm.seeds=3", *overrides],
                                              Path(tmp), default_cache_dir())
            write_json_atomic(stored, summary)
        summary = json.loads(stored.read_text())
        seed_row = selection.row(0, summary)
        chosen = next(c for c in summary["candidates"] if c["label"] == summary["chosen"])
        params = ", ".join(f"{k}={_short(v)}" for k, v in chosen["params"].items())
        table.add(f"`{space.stem}`", ", ".join(methods), f"{summary['chosen']}: {params}", *seed_row[3:])
        print(" | ".join(table.rows[-1]), flush=True)
    return table


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: every one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, table.md, gains.png")
    parser.add_argument("--title", default="Every objective at its paper defaults vs the student alone")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="digits and tiny models (seconds)")
    parser.add_argument("--tune", type=int, default=0, metavar="N",
                        help="also a short sweep (N trials) over each method's own search space")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="values applied after the paper defaults (e.g. a knob a paper default cannot fit)")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value) for every run, after --")
    args = parser.parse_args(argv)

    from orchestrator.infra.atomic_files import write_json_atomic
    from orchestrator.config.schema import ConfigError, load_config
    from orchestrator.data import build_data
    from orchestrator.distill import registry
    from orchestrator.run.alone import ensure_teacher
    from orchestrator.infra.tracking import resolve_tracking_uri

    common.set_threads(args.threads)
    try:
        base = load_config(None, [*(QUICK if args.quick else []), *args.overrides])
        if any("=" not in item for item in args.set):
            raise ConfigError("--set", args.set, "items of the form key.sub=value")
        after = dict(item.split("=", 1) for item in args.set)
        methods = args.methods or default_methods()
        for method in methods:
            method_config(base, method, after)
        spaces: dict[Path, list[str]] = {}
        for method in methods if args.tune else []:
            spaces.setdefault(space_for(method), []).append(method)
    except (ConfigError, ValueError) as err:  # ValueError: an unknown method, naming the allowed ones
        print(f"error: {err}", file=sys.stderr)
        return 2
    data = build_data(base.data, base.seed)
    for method in methods:
        problem = registry.data_problem(method_config(base, method, after).distill, len(data.train))
        if problem:
            key, value, allowed = problem
            print(f"error: {method} at its paper defaults: {key}={value!r} does not fit this data ({allowed})",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results: dict[str, dict[str, dict]] = json.loads(store.read_text()) if store.is_file() else {}
    teacher = base.teacher.checkpoint or ensure_teacher(base, resolve_tracking_uri(base.tracking.uri))
    todo = [(m, s) for m in [ALONE, *methods] for s in args.seeds if str(s) not in results.get(m, {})]
    print(f"{len(todo)} runs to do ({sum(len(v) for v in results.values())} already in {store})", flush=True)
    for i, (method, seed) in enumerate(todo, 1):
        result = train(method_config(base, method, after), data, teacher, seed)
        results.setdefault(method, {})[str(seed)] = result
        write_json_atomic(store, results)
        print(f"[{i}/{len(todo)}] {method:<14} seed {seed}: test {100 * result['test']:.2f}% "
              f"({result['seconds'] / 60:.1f} min)", flush=True)
    tables = [table(results, methods, args.seeds, args.title)]
    if args.tune:
        tables.append(tune(spaces, args.tune, args.out, [*(QUICK if args.quick else []), *args.overrides]))
    tables[-1].notes += [f"command: `{common.command_line()}`" + (f"; after the paper defaults: {', '.join(args.set)}"
                                                                   if args.set else ""),
                         f"machine: {common.machine_text()}; {common.load_text()}; "
                         f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    text = "\n\n".join(t.markdown() for t in tables)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(f"plot: {plot(paired_gains(results, methods), args.out / 'gains.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
