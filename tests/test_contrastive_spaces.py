"""The search spaces of the contrastive and label-free terms load, and their first points are the paper values."""

from __future__ import annotations

import pytest

from orchestrator.config.schema import load_config
from orchestrator.distill import paper_defaults
from orchestrator.sweep.search.space import load_space, paper_points


@pytest.mark.parametrize("name", ["seed", "supcon", "crd_queue", "cacr"])
def test_space_loads_and_its_paper_point_has_no_deviation(name):
    cfg = load_config(None, [])
    (point,) = paper_points(load_space(name, cfg, num_train_samples=54_000), cfg)
    assert point.method == ("crd" if name == "crd_queue" else f"ce+{name}") and point.deviations == {}
    for key, value in paper_defaults(point.method).items():
        if key in point.params:
            assert point.params[key] == value
