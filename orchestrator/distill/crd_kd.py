"""CRD + KD: the combination that is best in the CRD paper's tables."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from orchestrator.distill.ce import check_weight
from orchestrator.distill.crd import PAPER_DEFAULTS as CRD_PAPER_DEFAULTS
from orchestrator.distill.crd import CRDDistiller
from orchestrator.distill.kd import check_temperature

# The paper's settings (CRD+KD: -a 1 -b 0.8; see kd.PAPER_DEFAULTS for the source), as config keys.
PAPER_DEFAULTS = {**CRD_PAPER_DEFAULTS, "distill.alpha": 1.0, "distill.kd.temperature": 4.0}


class CRDKDDistiller(CRDDistiller):
    """``{"ce": gamma * CE, "kd": alpha * KD(T), "crd": beta * CRD}``.

    Same arguments as :class:`CRDDistiller` plus ``alpha`` (KD weight) and
    ``temperature`` (KD temperature T).
    """

    use_kd = True

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        train_labels: Tensor,
        *,
        alpha: float = 1.0,
        temperature: float = 4.0,
        **crd_kwargs: Any,
    ):
        super().__init__(student_dim, teacher_dim, train_labels, **crd_kwargs)
        self.alpha = check_weight("alpha", alpha)
        self.temperature = check_temperature(temperature)
