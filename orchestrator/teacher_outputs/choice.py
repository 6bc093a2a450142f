"""How a sweep's trials get their teacher's outputs, decided once from the config and the space.

- ``cached``: computed once on the un-augmented train split (:mod:`.cache`), read by every trial;
- ``views``: with ``data.augment``, computed once per view, (seed, epoch, index), for the search's
  seeds and the confirmation's, ``train.epochs`` epochs each (:mod:`.views`), read by every trial;
- ``live``: the teacher runs on every batch of every trial (``reason`` says why);
- ``none``: no objective the space can choose reads a teacher.

``--dry-run`` prints :func:`describe`; the sweep builds what :func:`choose` says
(``sweep/teacher_outputs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.schema import Config, confirm_seeds, search_seeds
from orchestrator.data.datasets import IN_MEMORY
from orchestrator.distill import registry
from orchestrator.config.schema import in_process
from orchestrator.teacher_outputs.views import bytes_per_epoch


@dataclass(frozen=True)
class TeacherInputs:
    kind: str  # cached | views | live | none
    needs: registry.Needs
    reason: str = ""  # live: why
    seeds: tuple[int, ...] = ()  # views: the training seeds whose views are built


def view_seeds(cfg: Config) -> tuple[int, ...]:
    """The seeds trials train with: the search's, then the confirmation's (when it runs)."""
    confirm = confirm_seeds(cfg) if cfg.sweep.confirm.top_k > 0 else []
    return tuple(dict.fromkeys([*search_seeds(cfg), *confirm]))


def choose(cfg: Config, configs) -> TeacherInputs:
    """What the trials of a sweep (``configs``: every config its space can reach) read from the teacher."""
    needs = registry.Needs()
    for c in configs:
        needs = needs | registry.teacher_needs(c.distill)
    if not needs.teacher:
        return TeacherInputs("none", needs)
    if not cfg.teacher.cache_outputs:
        return TeacherInputs("live", needs, "teacher.cache_outputs=false")
    if not cfg.data.augment:
        if all(registry.cacheable(c.distill) for c in configs):
            return TeacherInputs("cached", needs)
        return TeacherInputs("live", needs, "a term of the space does not accept precomputed teacher outputs")
    if cfg.data.dataset not in IN_MEMORY:
        return TeacherInputs("live", needs, f"data.augment on {cfg.data.dataset}: its views are not keyed by "
                                            "(seed, epoch, index) (in-memory datasets only)")
    live = sorted({n for c in configs for n in registry.live_with_views(c.distill)})
    if live:
        return TeacherInputs("live", needs, f"data.augment with term(s) {', '.join(live)}, which read augmented "
                                            "feature maps the view cache does not store")
    return TeacherInputs("views", needs, seeds=view_seeds(cfg))


def views_bytes(cfg: Config, choice: TeacherInputs, num_train: int, num_classes: int, embedding_dim: int) -> int:
    """Bytes of one epoch of one seed's views of one teacher."""
    return bytes_per_epoch(num_train, choice.needs.fields, cfg.teacher.view_topk, num_classes, embedding_dim)


def describe(cfg: Config, choice: TeacherInputs, num_train: int, num_classes: int, embedding_dim: int | None,
             readers: str = "trial") -> str:
    """One line for ``--dry-run``: where the ``readers``' (a sweep's trials, the ensemble pipeline's distillation
    stages) teacher outputs come from, and for views what and how much (per teacher)."""
    fields = " + ".join(sorted(choice.needs.fields) + [f"features[{s}]" for s in choice.needs.stages])
    if choice.kind == "none":
        return "teacher outputs: none (no objective of the space reads the teacher)"
    if choice.kind == "live":
        return f"teacher outputs: live, on every batch of every {readers} ({choice.reason})"
    if choice.kind == "cached":
        return f"teacher outputs: {fields} computed once on the un-augmented train split, shared by every {readers}"
    epochs = cfg.train.epochs
    size = ""
    if embedding_dim is not None:
        per_epoch = views_bytes(cfg, choice, num_train, num_classes, embedding_dim)
        size = (f", {per_epoch / 2**20:.2f} MiB per epoch per seed, "
                f"{per_epoch * epochs * len(choice.seeds) / 2**20:.1f} MiB in all")
    logits = f"top-{cfg.teacher.view_topk} logits" if 0 < cfg.teacher.view_topk < num_classes else "logits"
    stored = " + ".join(logits if f == registry.LOGITS else f
                        for f in (registry.LOGITS, registry.EMBEDDING) if f in choice.needs.fields)
    where = f"in this process, as {readers}s run in-process" if in_process(cfg) else "by one Ray task per teacher"
    return (f"teacher outputs: shared view cache: {stored} in fp16 of each augmented view (seed, epoch, index), "
            f"seeds {list(choice.seeds)} x {epochs} epochs x {num_train} images, built once before the first "
            f"{readers} ({where}; on a GPU if the cluster has one), read by every {readers}{size}")


def plan_line(cfg: Config, configs, data) -> str:
    """:func:`describe` for a sweep's ``--dry-run`` (sizes from the teacher's architecture, or its checkpoint)."""
    choice = choose(cfg, configs)
    dim = None
    if choice.kind == "views":
        from orchestrator.models import build_model
        from orchestrator.teacher.checkpoint import checked_teacher

        if cfg.teacher.checkpoint:  # built in memory: a dry run writes no imported copy
            model = checked_teacher(cfg.teacher.checkpoint, cfg.model.teacher, data, cfg.teacher.normalize)
        else:
            model = build_model(cfg.model.teacher, data.num_classes, data.in_channels)
        dim = int(model.embedding_dim)
    return describe(cfg, choice, len(data.train), data.num_classes, dim)
