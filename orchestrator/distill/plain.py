"""A registered term on plain tensors, without a model, a config or a training loop (checks, notebooks).

    >>> import torch
    >>> from orchestrator.distill import evaluate
    >>> evaluate("kd", torch.randn(8, 10), torch.randn(8, 10), temperature=4.0)  # logits (B, C) each
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orchestrator.distill.base import Batch, TermContext
from orchestrator.distill.registry import term as term_spec
from orchestrator.models.base import ModelOutput, Shapes

Outputs = ModelOutput | Tensor


def as_output(out: Outputs) -> ModelOutput:
    """A ModelOutput as given, or logits (B, C) as one with no embedding and no features."""
    if isinstance(out, ModelOutput):
        return out
    return ModelOutput([], out.new_zeros(out.shape[0], 0), out)


def shapes_of(out: ModelOutput) -> Shapes:
    """Shapes read off one output: its embedding width and its features as stage1..stageN."""
    return Shapes(int(out.embedding.shape[1]), {f"stage{i + 1}": tuple(f.shape[1:]) for i, f in enumerate(out.features)})


def evaluate(name: str, student: Outputs, teachers: Outputs | Sequence[Outputs] = (), labels: Tensor | None = None,
             teacher_weights: Sequence[float] | None = None, seed: int = 0, identity_parts: bool = False,
             **knobs) -> Tensor:
    """The unweighted value of registered term ``name`` (a scalar) on one batch.

    student, teachers: ModelOutputs, or logits (B, C) alone; one teacher or several.
    labels: (B,) class indices, needed by terms that read labels (ce, dkd, ...).
    knobs: the term's ``distill.<name>.*`` settings (checked as in a config; e.g. ``temperature=4.0``).
    Built with torch's seed ``seed`` (learnable parts such as heads or connectors start from it) and the batch
    as the whole training set (memory banks hold B rows).
    identity_parts: replace the learnable parts the loss formula lacks (CC's heads, FitNet's and AB's
    connectors, FT's paraphraser and translator) by identities, so the value is the bare formula on the given
    tensors (``Term.use_identity_parts``; ValueError where the shapes do not allow it or the parts are the
    method's own, e.g. CRD's heads).
    """
    spec = term_spec(name)
    s = as_output(student)
    t = [as_output(o) for o in ([teachers] if isinstance(teachers, (ModelOutput, Tensor)) else list(teachers))]
    batch_size = s.logits.shape[0]
    if labels is None and spec.needs_for(spec.knobs(**knobs) if spec.knobs else None).labels:
        raise ValueError(f"term '{name}' reads labels: pass labels=(B,) class indices")
    labels = torch.zeros(batch_size, dtype=torch.long) if labels is None else labels
    weights = tuple(teacher_weights or [1.0] * len(t))
    ctx = TermContext(int(s.logits.shape[1]), shapes_of(s), tuple(shapes_of(o) for o in t),
                      tuple(w / sum(weights) for w in weights) if t else (), labels, seed)
    torch.manual_seed(seed)
    built = spec.build(ctx, spec.knobs(**knobs) if spec.knobs else None)
    if identity_parts:
        built.use_identity_parts()
    return built(Batch(s, t, labels, torch.arange(batch_size)))
