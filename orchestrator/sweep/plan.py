"""What a sweep will do, computed and checked before anything starts: :class:`Plan` (:func:`make_plan`)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.schema import Config, asha_grace, confirm_seeds, search_seeds, student_arch, tpe_startup_trials
from orchestrator.distill import registry
from orchestrator.sweep.search.space import SearchSpace, load_space, paper_points, possible_configs
from orchestrator.config.objectives import budget_of, is_multi_objective, resolve


@dataclass
class Plan:
    """What a sweep will do, computed before anything starts."""

    cfg: Config
    space: SearchSpace
    num_train: int
    trial_cpu: float
    trial_gpu: float
    mode_text: str

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial trains: the largest ``train.epochs`` the space can sample, else the config's
        (ASHA's max_t, the teacher view cache's length)."""
        return largest_epochs(self.space, self.cfg)

    def describe(self) -> str:
        c = self.cfg
        return "\n".join(
            [
                self.space.table(),
                "",
                *self._goal(),
                f"trials: {c.sweep.num_samples} ({self._search()}, seed {c.seed}, random until "
                f"{tpe_startup_trials(c.sweep)} have finished; {self._stopping()}, "
                f"grace {asha_grace(c)} epoch(s), reduction x{c.sweep.asha.reduction_factor})",
                f"each trial: {self._epochs()} of {self.num_train} training images, student {self._student()}, "
                f"teacher {c.teacher.checkpoint or c.model.teacher + ' (trained once, cached)'}",
                f"each trial needs: {self.trial_cpu:g} CPU, {self.trial_gpu:g} GPU ({self.mode_text})",
                f"every trial trains with seeds {search_seeds(c)} (common random numbers: trials differ only by config)",
                *self._objectives(),
                *self._points(),
                self._confirmation(),
            ]
        )

    def _goal(self) -> list[str]:
        """What the search optimises (``sweep.objectives``) and the budget it keeps to (``sweep.budget``)."""
        objectives = resolve(self.cfg)
        budget = budget_of(self.cfg)
        named = ", ".join(f"{k} ({m})" for k, m in objectives.items())
        lines = [f"search objectives: {named} (multi-objective: an accuracy-vs-cost front)" if len(objectives) > 1
                 else f"search objective: {named}"]
        if budget is not None:
            lines.append(f"budget: {budget}: the most accurate student within it; a trial whose student is over it "
                         "is never trained (one result 'over budget', the worst value for Optuna)")
        return lines

    def _search(self) -> str:
        return "Optuna multi-objective TPE" if is_multi_objective(self.cfg) else "Optuna TPE"

    def _stopping(self) -> str:
        if is_multi_objective(self.cfg):
            return "successive halving on Pareto rank of the objectives (ParetoHalving)"
        return f"ASHA on {self.cfg.sweep.metric} ({self.cfg.sweep.mode})"

    def _epochs(self) -> str:
        p = next((p for p in self.space.params if p.key == "train.epochs"), None)
        if p is None:
            return f"{self.max_epochs} epochs"
        values = p.choices if p.type == "categorical" else [int(p.low), int(p.high)]
        return (f"its sampled train.epochs ({', '.join(map(str, values))}; its learning-rate schedule spans "
                f"them; early stopping's max_t {self.max_epochs + 1})")

    def _student(self) -> str:
        sampled = [p.key for p in self.space.params if p.key.startswith("model.student")]
        return f"sampled ({', '.join(sampled)}: see 'students' below)" if sampled else student_arch(self.cfg.model)

    def _objectives(self) -> list[str]:
        """Each objective the space can choose and what its terms read (from the objective registry)."""
        methods = dict.fromkeys(c.distill.method for c in possible_configs(self.space, self.cfg))
        lines = ["objectives (terms: weight key; what each reads from the teacher; knobs as given, before sampling):"]
        for method in methods:
            lines.append(f"  {method} = {'+'.join(registry.method_terms(method))}")
            lines += [f"  {line}" for line in registry.describe(method, self.cfg.distill).splitlines()]
        return lines

    def _points(self) -> list[str]:
        if not self.cfg.sweep.paper_defaults:
            return ["paper defaults: not evaluated (sweep.paper_defaults=false)"]
        return ["first trials, the paper defaults:"] + [f"  {p.describe()}" for p in paper_points(self.space, self.cfg)]

    def _confirmation(self) -> str:
        c = self.cfg.sweep
        alone = " and the student alone" if c.baseline else ""
        if c.confirm.top_k == 0:
            return (f"confirmation: off (sweep.confirm.top_k=0); the result will be UNCONFIRMED"
                    f"{', the student alone trained on the search seeds' if c.baseline else ''}")
        seeds = f"fresh seeds {confirm_seeds(self.cfg)}"
        objectives, budget = resolve(self.cfg), budget_of(self.cfg)
        if budget is not None:
            return (f"confirmation: the most accurate completed trial within {budget}, with its architecture "
                    f"trained alone, re-trained on {seeds}; test mean ± sd, the paired gain with a "
                    f"{100 * c.confirm.level:g}% interval")
        if len(objectives) > 1:
            cost = list(objectives)[1]
            return (f"confirmation: the Pareto front of the completed trials over {', '.join(objectives)}, at most "
                    f"{c.confirm.top_k} points spread along {cost}, each with its architecture trained alone, "
                    f"re-trained on {seeds}; per point: cost, test mean ± sd, the paired gain with a "
                    f"{100 * c.confirm.level:g}% interval")
        return (f"confirmation: the top {c.confirm.top_k} configs, the best paper default{alone} re-trained on "
                f"{seeds}; chosen by mean {c.metric}; test mean ± sd, "
                f"paired gains with {100 * c.confirm.level:g}% intervals")


def largest_epochs(space: SearchSpace, cfg: Config) -> int:
    """The largest ``train.epochs`` a trial of ``space`` trains (categorical choices or an int range)."""
    p = next((p for p in space.params if p.key == "train.epochs"), None)
    if p is None:
        return int(space.fixed.get("train.epochs", cfg.train.epochs))
    return int(max(p.choices) if p.type == "categorical" else p.high)


def make_plan(cfg: Config, num_train: int) -> Plan:
    """The plan; ConfigError if the space is invalid or the storage folder is full or read-only."""
    from orchestrator.run.launcher import trial_resources
    from orchestrator.config.schema import in_process
    from orchestrator.run.preflight import check_storage

    check_storage(cfg.sweep.storage_path or "runs")
    space = load_space(cfg.sweep.search_space, cfg, num_train)
    res = trial_resources(cfg)
    tr = cfg.train
    if in_process(cfg):
        mode = "Ray Train in-process: one worker inside the trial process"
    else:
        mode = f"Ray Train worker group: {tr.num_workers} DDP worker(s) x {tr.cpus_per_worker} CPU" + (
            ", 1 GPU each (NCCL)" if tr.use_gpu else " (gloo)"
        )
    return Plan(cfg, space, num_train, res["CPU"], res["GPU"], mode)
