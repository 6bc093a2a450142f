"""The objective registry: declarations, method grammar, config sections, features reaching terms, the
teacher-output cache storing exactly what terms read, and the pre-stage mechanism."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from distill_helpers import distill_config
from orchestrator.config.schema import ConfigError, Config, apply_overrides, load_config
from orchestrator.distill import Term, registry
from orchestrator.distill.checks import check_weight
from orchestrator.run.learner import Learner
from orchestrator.teacher_outputs import compute_teacher_outputs
from orchestrator.models import build_model
from orchestrator.models.base import probe_shapes
from orchestrator.sweep.search.space import SearchSpace, Param, possible_configs


def test_presets_are_term_lists_with_paper_defaults():
    assert registry.method_terms("crd_kd") == ("ce", "kd", "crd")
    assert registry.method_terms("kd+crd") == ("kd", "crd")
    assert registry.paper_defaults("kd")["distill.ce.weight"] == 0.1
    merged = registry.paper_defaults("ce+dkd")  # a term list merges its terms' paper values
    assert merged["distill.dkd.beta"] == 8.0 and "distill.ce.weight" not in merged
    for bad in ("nope", "ce+nope", "kd+kd", "ce+"):
        with pytest.raises(ValueError, match="allowed"):
            registry.method_terms(bad)


def test_declarations_drive_cache_and_teacher_decisions():
    kd, ce, crd = (distill_config(m) for m in ("kd", "ce", "crd"))
    assert registry.teacher_needs(kd).fields == {"logits"} and registry.needs_teacher(kd)
    assert not registry.needs_teacher(ce) and registry.teacher_needs(ce).labels
    assert registry.teacher_needs(crd).fields == {"embedding"}
    assert registry.teacher_needs(distill_config("crd_kd")).fields == {"logits", "embedding"}
    assert registry.cacheable(crd)
    assert registry.supports_teachers(kd, 3) is None
    assert "dkd" in registry.supports_teachers(distill_config("dkd"), 2)
    text = registry.describe("crd_kd")
    # its default knobs (shared negatives) read no labels; class negatives per anchor do (test_distill_crd_memory.py)
    assert "crd: weight distill.crd.weight; reads embedding;" in text and "memory banks" in text


def test_config_sections_come_from_the_terms_knobs():
    cfg = load_config(None, ["distill.method=ce+kd", "distill.kd.temperature=2", "distill.dkd.warmup=0"])
    assert cfg.distill.kd.temperature == 2.0 and cfg.distill.dkd.warmup == 0
    for override, key in (("distill.kd.temperature=0", "distill.kd.temperature"),
                          ("distill.crd.z_mode=running", "distill.crd.z_mode"),
                          ("distill.dkd.warmup=-1", "distill.dkd.warmup"),
                          ("distill.method=ce+nope", "distill.method")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])


def test_possible_configs_cover_every_method_the_space_can_choose():
    space = SearchSpace("t", params=[Param("distill.method", "categorical", choices=["ce", "kd", "crd_kd"]),
                                Param("distill.crd.nce_k", "categorical", choices=[64, 256],
                                      when={"distill.method": ["crd_kd"]})], fixed={})
    configs = possible_configs(space, Config())
    needs = registry.Needs()
    for c in configs:
        needs = needs | registry.teacher_needs(c.distill)
    assert {c.distill.method for c in configs} == {"ce", "kd", "crd_kd"}
    assert needs.fields == {"logits", "embedding"}
    assert {c.distill.crd.nce_k for c in configs if c.distill.method == "crd_kd"} == {64, 256}


def test_probe_shapes_names_stages_and_changes_no_batchnorm_statistic():
    model = build_model("cnn_student_tiny", 10, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = probe_shapes(model, 1, 28)
    assert shapes.embedding == model.embedding_dim and list(shapes.stages)[0] == "stage1"
    assert all(len(s) == 3 for s in shapes.stages.values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and model.training


def test_cache_stores_exactly_the_fields_and_stages_asked_for(digits):
    _, data, teacher = digits
    only_stage = registry.Needs(frozenset(), ("stage2",))
    cache = compute_teacher_outputs(teacher, data.train_eval, 256, needs=only_stage)
    assert cache.logits is None and cache.embedding is None and list(cache.features) == ["stage2"]
    names = cache.stage_names
    rows = cache.rows(torch.tensor([3, 1]), torch.device("cpu"))
    assert len(rows.features) == len(names) and rows.logits.numel() == 0
    live = teacher.eval()(torch.stack([data.train_eval[i][0] for i in (3, 1)]))
    torch.testing.assert_close(rows.features[names.index("stage2")], live.features[names.index("stage2")])
    assert cache.shapes().stages["stage2"] == tuple(live.features[names.index("stage2")].shape[1:])
    with pytest.raises(ValueError, match="no stage"):
        compute_teacher_outputs(teacher, data.train_eval, 256, needs=registry.Needs(frozenset(), ("stage9",)))


@dataclass
class ToyKnobs:
    stage: str = "stage2"
    weight: float = 1.0
    init_epochs: int = 1

    def __post_init__(self):
        check_weight("weight", self.weight)


class ToyFeatureTerm(Term):
    """MSE between a 1x1-conv connector of the student's stage and the teacher's (a FitNet-like hint)."""

    def __init__(self, ctx, knobs):
        super().__init__()
        names = list(ctx.student.stages)
        self.s_index, self.t_index = names.index(knobs.stage), list(ctx.teachers[0].stages).index(knobs.stage)
        c_s, c_t = ctx.student.stages[knobs.stage][0], ctx.teachers[0].stages[knobs.stage][0]
        self.connector = torch.nn.Conv2d(c_s, c_t, 1)
        self.pre_batches = 0

    def forward(self, batch):
        return F.mse_loss(self.connector(batch.student.features[self.s_index]), batch.teachers[0].features[self.t_index])

    def pre_stage_loss(self, batch):
        self.pre_batches += 1
        return self.forward(batch)


@pytest.fixture
def toy_term():
    spec = registry.register_term(registry.TermSpec(
        name="toy", build=ToyFeatureTerm, knobs=ToyKnobs, needs=lambda k: registry.Needs(frozenset(), (k.stage,)),
        pre_stage="init_epochs", parts=("connector",)))
    yield spec
    del registry._TERMS["toy"]


@pytest.mark.parametrize("cached", [False, True])
def test_a_feature_term_trains_from_live_and_cached_teachers_with_its_pre_stage(toy_term, digits, cached):
    cfg = apply_overrides(Config(), {"data.dataset": "digits", "model.student": "tiny_student", "data.batch_size": 64,
                                     "distill.method": "ce+toy", "train.epochs": 1})
    _, data, teacher = digits
    needs = registry.teacher_needs(cfg.distill)
    assert needs.stages == ("stage2",) and not needs.fields
    caches = [compute_teacher_outputs(teacher, data.train_eval, 256, needs=needs)] if cached else None
    trainer = Learner(cfg, data, [] if cached else [teacher], teacher_outputs=caches)
    metrics = trainer.train_one_epoch()
    term = trainer.objective.terms["toy"]
    assert term.pre_batches == len(trainer.train_loader)  # one pre-stage epoch, then distillation
    assert metrics["prestage/epochs"] == 1 and metrics["prestage/loss_toy"] > 0 and metrics["train/loss_toy"] > 0
    assert term.connector.weight.grad is not None


def test_every_term_names_its_paper_and_the_code_it_is_checked_against():
    """Each term says either what it is checked against (``reference``) or why nothing can be (``no_reference``);
    only a term that says it has no reference code may skip the pinned values and the rest."""
    unclear = [name for name in registry.term_names()
               if bool(registry.term(name).reference) == bool(registry.term(name).no_reference)]
    assert not unclear, f"terms with neither or both of reference and no_reference: {unclear}"


def test_objectives_doc_lists_exactly_the_registered_terms_and_presets():
    """docs/OBJECTIVES.md is generated from the declarations (``python benchmarks/objectives.py``, seconds): each of
    its rows is what the term declares now; every term with reference code has one (a term without may have none)."""
    import re
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import objectives

    doc = (root / "docs" / "OBJECTIVES.md").read_text()
    presets_part, terms_part = doc.split("**Terms**", 1)
    terms_part = terms_part.split("**Step cost", 1)[0]
    rows = lambda text: set(re.findall(r"^\| `([a-z_0-9]+)`", text, flags=re.M))  # noqa: E731
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    generated = {row[0].strip("`"): row for row in objectives.term_rows()}
    documented = {name: line for line in terms_part.splitlines() for name in rows(line)}
    assert set(documented) <= set(generated), "rows of terms that are not registered"
    assert set(registry.term_names()) - set(documented) <= {n for n in generated if registry.term(n).no_reference}
    stale = [n for n, line in documented.items() if cells(line) != generated[n]]
    assert not stale, f"docs/OBJECTIVES.md rows differ from the declarations of {stale}: run python benchmarks/objectives.py"
    assert rows(presets_part) == set(registry.method_names())
