"""What a sweep will do, computed and checked before anything starts: :class:`Plan` (:func:`make_plan`)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import Config, asha_grace, confirm_seeds, search_seeds, student_arch, tpe_startup_trials
from orchestrator.distill import registry
from orchestrator.search import SearchSpace, load_space, paper_points, possible_configs


@dataclass
class Plan:
    """What a sweep will do, computed before anything starts."""

    cfg: Config
    space: SearchSpace
    num_train: int
    trial_cpu: float
    trial_gpu: float
    mode_text: str

    def describe(self) -> str:
        c = self.cfg
        return "\n".join(
            [
                self.space.table(),
                "",
                f"trials: {c.sweep.num_samples} (Optuna TPE, seed {c.seed}, random until {tpe_startup_trials(c.sweep)} "
                f"have finished; ASHA on {c.sweep.metric} ({c.sweep.mode}), "
                f"grace {asha_grace(c)} epoch(s), reduction x{c.sweep.asha.reduction_factor})",
                f"each trial: {c.train.epochs} epochs of {self.num_train} training images, student {self._student()}, "
                f"teacher {c.teacher.checkpoint or c.model.teacher + ' (trained once, cached)'}",
                f"each trial needs: {self.trial_cpu:g} CPU, {self.trial_gpu:g} GPU ({self.mode_text})",
                f"every trial trains with seeds {search_seeds(c)} (common random numbers: trials differ only by config)",
                *self._objectives(),
                *self._points(),
                self._confirmation(),
            ]
        )

    def _student(self) -> str:
        sampled = [p.key for p in self.space.params if p.key.startswith("model.student")]
        return f"sampled ({', '.join(sampled)}: see 'students' below)" if sampled else student_arch(self.cfg.model)

    def _objectives(self) -> list[str]:
        """Each objective the space can choose and what its terms read (from the objective registry)."""
        methods = dict.fromkeys(c.distill.method for c in possible_configs(self.space, self.cfg))
        lines = ["objectives (terms: weight key; what each reads from the teacher):"]
        for method in methods:
            lines.append(f"  {method} = {'+'.join(registry.method_terms(method))}")
            lines += [f"  {line}" for line in registry.describe(method).splitlines()]
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
        return (f"confirmation: the top {c.confirm.top_k} configs, the best paper default{alone} re-trained on "
                f"fresh seeds {confirm_seeds(self.cfg)}; chosen by mean {c.metric}; test mean ± sd, "
                f"paired gains with {100 * c.confirm.level:g}% intervals")


def make_plan(cfg: Config, num_train: int) -> Plan:
    """The plan; ConfigError if the space is invalid or the storage folder is full or read-only."""
    from orchestrator.launcher import in_process, trial_resources
    from orchestrator.preflight import check_storage

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
