"""Logit standardisation (Sun et al., CVPR 2024, arXiv 2403.01427), an option of every logit term.

Each row of logits is z-scored, ``Z(z) = (z - mean(z)) / std(z)``, before the temperature softmax, so
the student matches the teacher's logit *relations* rather than their range. The term's temperature then
acts as the paper's base temperature (the effective temperature of a row is ``std(z) * T``).

The standard deviation is the unbiased one (divisor C - 1), with 1e-7 added to it, as in the authors'
code (sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``, ``normalize``); the paper's
formula divides by C, which only rescales the base temperature by sqrt((C - 1) / C).
"""

from __future__ import annotations

from torch import Tensor

STD_EPS = 1e-7


def z_score(logits: Tensor) -> Tensor:
    """(B, C) -> (B, C): each row minus its mean, over its unbiased standard deviation (+ 1e-7)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + STD_EPS)


def tempered(logits: Tensor, temperature: float, standardize: bool = False) -> Tensor:
    """What a logit term feeds its softmax: ``logits / T``, or ``z_score(logits) / T`` when ``standardize``.

    (B, C) -> (B, C), in the dtype of ``logits`` (callers cast first).
    """
    return (z_score(logits) if standardize else logits) / temperature
