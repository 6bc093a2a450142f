"""``evaluate(..., identity_parts=True)``: the learnable parts a loss formula lacks become identities, and the term
equals the reference formula on plain tensors.

The formulas are written here as HobbitLong/RepDistiller (b84f547) writes them: ``distiller_zoo/CC.py``
(``Correlation``), ``FitNet.py`` (``HintLoss`` = ``nn.MSELoss``), ``AB.py`` (``ABLoss``, summed over stages as
``helper/loops.py`` does) and ``FT.py`` (``FactorTransfer`` with p1 = 2, p2 = 1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orchestrator.distill import evaluate
from orchestrator.models.base import ModelOutput

B = 8


def _output(seed: int, *shapes: tuple[int, ...], dim: int = 12) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)
    return ModelOutput([torch.randn(B, *s, generator=g) for s in shapes], torch.randn(B, dim, generator=g),
                       torch.randn(B, 10, generator=g))


def correlation(f_s, f_t):  # RepDistiller's Correlation.forward
    delta = torch.abs(f_s - f_t)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def ab_reference(g_s, g_t, margin=1.0):  # RepDistiller's ABLoss.forward, then sum(loss_group)
    def criterion_alternative_l2(source, target):
        loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).float() +
                (source - margin) ** 2 * ((source <= margin) & (target > 0)).float())
        return torch.abs(loss).sum()

    w = [2 ** (i - len(g_s) + 1) for i in range(len(g_s))]
    return sum(wi * criterion_alternative_l2(s, t) / g_s[0].shape[0] / 1000 * 3 for wi, s, t in zip(w, g_s, g_t))


def factor_transfer(f_s, f_t):  # RepDistiller's FactorTransfer(p1=2, p2=1).factor_loss
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))

    def factor(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    return (factor(f_s) - factor(f_t)).abs().mean()


def test_cc_with_identity_heads_is_the_correlation_of_the_embeddings():
    s, t = _output(0, (4, 8, 8)), _output(1, (4, 8, 8))
    value = evaluate("cc", s, t, identity_parts=True)
    torch.testing.assert_close(value, correlation(s.embedding, t.embedding))
    assert not torch.allclose(evaluate("cc", s, t), value)  # the heads were there before
    with pytest.raises(ValueError, match="CC: identity heads need embeddings of one size, got student 12 and "
                                         "teacher 20"):
        evaluate("cc", s, _output(1, (4, 8, 8), dim=20), identity_parts=True)


def test_fitnet_with_an_identity_connector_is_the_mse_of_the_hint_maps():
    s, t = _output(0, (4, 8, 8), (8, 4, 4)), _output(1, (4, 8, 8), (8, 4, 4))
    value = evaluate("fitnet", s, t, identity_parts=True)  # the default hint: stage2
    torch.testing.assert_close(value, torch.nn.MSELoss()(s.features[1], t.features[1]))
    with pytest.raises(ValueError, match=r"FitNet: an identity connector needs hint maps of one shape, got student "
                                         r"\(8, 4, 4\) and teacher \(16, 4, 4\)"):
        evaluate("fitnet", s, _output(1, (4, 8, 8), (16, 4, 4)), identity_parts=True)


def test_ab_with_identity_connectors_is_the_boundary_loss_of_the_maps():
    s, t = _output(0, (4, 8, 8), (8, 4, 4), (8, 2, 2)), _output(1, (4, 8, 8), (8, 4, 4), (8, 2, 2))
    for stages, picked in (("1:", slice(1, None)), ("0:", slice(None))):
        value = evaluate("ab", s, t, identity_parts=True, stages=stages, margin=0.5)
        torch.testing.assert_close(value, ab_reference(s.features[picked], t.features[picked], margin=0.5))
    with pytest.raises(ValueError, match="AB: an identity connector needs maps of one shape"):
        evaluate("ab", s, _output(1, (4, 8, 8), (8, 4, 4), (16, 2, 2)), identity_parts=True)


def test_ft_with_identity_paraphraser_and_translator_is_the_factor_loss_of_the_maps():
    """Any channel counts and sizes: the factor averages channels and the larger map is pooled."""
    s, t = _output(0, (4, 8, 8), (8, 4, 4)), _output(1, (6, 8, 8), (16, 2, 2))
    value = evaluate("ft", s, t, identity_parts=True)  # the default stage: the last
    torch.testing.assert_close(value, factor_transfer(s.features[-1], t.features[-1]))


def test_terms_without_parts_are_unchanged_and_a_methods_own_parts_are_refused():
    s, t = _output(0, (4, 8, 8), (8, 4, 4)), _output(1, (4, 8, 8), (8, 4, 4))
    torch.testing.assert_close(evaluate("kd", s, t, identity_parts=True), evaluate("kd", s, t))
    torch.testing.assert_close(evaluate("at", s, t, identity_parts=True), evaluate("at", s, t))
    with pytest.raises(ValueError, match="VID's learnable parts have no identity replacement"):
        evaluate("vid", s, t, identity_parts=True)
