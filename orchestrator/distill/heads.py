"""Projection heads of the contrastive terms (SEED, SupCon): "linear" or the SimCLR/MoCo-v2 "mlp"."""

from __future__ import annotations

from torch import nn

from orchestrator.distill.checks import check_choice, check_count

HEADS = ("mlp", "linear")


def projection_head(in_dim: int, out_dim: int, kind: str) -> nn.Module:
    """(B, in_dim) -> (B, out_dim): "linear", or "mlp" = Linear(in, in), ReLU, Linear(in, out)."""
    check_choice("head", kind, HEADS)
    in_dim, out_dim = check_count("head input size", in_dim), check_count("head output size", out_dim)
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))
