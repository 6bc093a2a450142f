"""Feature stages for feature-based terms: choosing them, pairing student and teacher maps, connectors.

Every stage knob uses the one :mod:`orchestrator.distill.stages` syntax (names, positions, ``last``, slices
such as ``1:``, joined by commas), so one knob value works for models whose stages have different names or
counts: ``-3,-2,-1`` pairs the last three stages of the student with the last three of the teacher
(RepDistiller's ``feat[1:-1]`` on its CIFAR ResNets, whose features are the stem and three stages), in the
order written; ``1:`` picks every stage but the first of each model, paired from the deepest. Terms declare their
selectors as teacher needs; the teacher-output cache resolves them (``stages.select_all``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term
from orchestrator.distill.checks import KnobError, check_choice, normalise_weights
from orchestrator.distill.registry import Needs
from orchestrator.distill.stages import ALLOWED, check_selector, select
from orchestrator.models.base import Shapes

CONNECTORS = ("auto", "none")  # auto: a 1x1 conv where channel counts differ; none: refuse unequal channels


def parse_stages(key: str, text: str, at_least: int = 1) -> tuple[str, ...]:
    """``"-3,-2,-1"`` -> ("-3", "-2", "-1"): distinct selectors in :mod:`orchestrator.distill.stages` syntax (names,
    positions, slices such as ``1:``), else KnobError naming ``key``. Without slices, at least ``at_least`` of
    them; with slices, the count is checked per model when the stages are resolved (:func:`positions`)."""
    selectors = tuple(s.strip() for s in str(text).split(",") if s.strip())
    allowed = f"{at_least} or more distinct stage selectors separated by commas ({ALLOWED})"
    if not selectors or len(set(selectors)) != len(selectors):
        raise KnobError(key, text, allowed)
    for selector in selectors:
        check_selector(key, selector)
    if len(selectors) < at_least and not any(":" in s for s in selectors):
        raise KnobError(key, text, allowed)
    return selectors


def feature_needs(selectors: Sequence[str]) -> Needs:
    """What a term reading these stages of every teacher needs."""
    return Needs(frozenset(), tuple(selectors))


def resolve(selector: str, names: Sequence[str]) -> int | None:
    """The position in ``names`` of the one stage ``selector`` picks (stages.py syntax), None if it picks none or several."""
    try:
        picked = select(selector, names)
    except ValueError:
        return None
    return list(names).index(picked[0]) if len(picked) == 1 else None


def positions(key: str, selectors: Sequence[str], stages: dict, who: str, at_least: int = 1) -> list[int]:
    """Positions in ``stages`` (a Shapes.stages dict) of what ``selectors`` pick, selector by selector in the
    order written (a slice in model order); ValueError naming ``key`` if a stage is missing, picked twice, or
    fewer than ``at_least`` are picked."""
    names, found = list(stages), []
    for selector in selectors:
        try:
            found += [names.index(n) for n in select(selector, names, f"the {who}")]
        except ValueError as exc:
            raise ValueError(f"{key}={','.join(selectors)}: {exc}") from None
    if len(set(found)) != len(found):
        raise ValueError(f"{key}={','.join(selectors)} chooses a stage of the {who} twice (its stages: {names})")
    if len(found) < at_least:
        raise ValueError(f"{key}={','.join(selectors)} picks {len(found)} stage(s) of the {who}, needs {at_least} "
                         f"or more (its stages: {names})")
    return found


def paired_positions(key: str, selectors: Sequence[str], student: Shapes, teachers: Sequence[Shapes],
                     at_least: int = 1) -> tuple[list[int], list[list[int]]]:
    """(student positions, per teacher positions) of the picked stages, paired from the deepest: when the
    models give different counts (a slice on a 4- and a 5-stage model), the last k of each are paired, k the
    smallest count (as :func:`orchestrator.distill.stages.pair`)."""
    s_pos = positions(key, selectors, student.stages, "student", at_least)
    t_pos = [positions(key, selectors, t.stages, f"teacher {m + 1}", at_least) for m, t in enumerate(teachers)]
    k = min([len(s_pos)] + [len(p) for p in t_pos])
    return s_pos[-k:], [p[-k:] for p in t_pos]


def at_least_fp32(x: Tensor) -> Tensor:
    """x in float32, or float64 if it is (half precision is too coarse for these sums)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_connectors(key: str, value: str) -> str:
    return check_choice(key, value, CONNECTORS)


def channel_connectors(key: str, mode: str, student_channels: Sequence[int], teacher_channels: Sequence[int],
                       what: str) -> nn.ModuleList:
    """One module per stage pair mapping student channels to teacher channels: identity where equal, a 1x1
    conv (no bias) where they differ if ``mode`` is "auto"; with "none", unequal channels are refused
    (``what`` says why the term needs them equal)."""
    check_connectors(key, mode)
    pairs = list(zip(student_channels, teacher_channels, strict=True))
    if mode == "none" and any(s != t for s, t in pairs):
        raise ValueError(f"{what} needs equal channel counts at each chosen stage, got student "
                         f"{list(student_channels)} and teacher {list(teacher_channels)}; set {key}=auto "
                         "(1x1 connectors) or choose other stages")
    return nn.ModuleList(nn.Identity() if s == t else nn.Conv2d(s, t, 1, bias=False) for s, t in pairs)


class ConnectedStages(Term):
    """Base of the terms that compare connected student stages with each teacher's stages:
    ``sum_m w_m loss(connectors_m(student stages), teacher_m stages)`` (AB, FSP, KDSVD).

    Args:
        student_positions, teacher_positions: the chosen stages' positions (per teacher for the latter).
        connectors: per teacher, one module per stage (identity where none is needed).
        teacher_weights: M weights (normalised to sum 1).
    """

    def __init__(self, student_positions: Sequence[int], teacher_positions: Sequence[Sequence[int]],
                 connectors: Sequence[nn.ModuleList], teacher_weights: Sequence[float]):
        super().__init__()
        self.s_pos, self.t_pos = list(student_positions), [list(p) for p in teacher_positions]
        self.connectors = nn.ModuleList(connectors)
        self.teacher_weights = normalise_weights(teacher_weights, len(self.t_pos))

    def stage_loss(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        """The term's loss for one teacher: connected student maps vs the teacher's maps."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.t_pos):
            raise ValueError(f"{type(self).__name__} was built for {len(self.t_pos)} teacher(s), got {len(batch.teachers)}")
        f_s = batch.student.features
        return sum(
            w * self.stage_loss([c(f_s[i]) for c, i in zip(conn, self.s_pos)], [t.features[j] for j in pos])
            for w, conn, pos, t in zip(self.teacher_weights, self.connectors, self.t_pos, batch.teachers)
        )
