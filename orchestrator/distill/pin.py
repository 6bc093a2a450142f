"""Pin a term's values: ``python -m orchestrator.distill.pin <method> --reference <repo@commit>``.

A pinned case (``tests/data/pinned/<case>.json``, checked by ``tests/test_pinned_terms.py``) holds the
terms of an objective on two training steps of fixed inputs (:func:`fixed_inputs`), so that no refactor
changes a value silently. The values come from the reference code:

1. ``python -m orchestrator.distill.pin ce+mine --inputs inputs.pt`` writes the fixed inputs (tensors);
2. run the reference code (``repo@commit``) on them and write its values of each step as JSON,
   ``[{"mine": 0.123}, {"mine": 0.118}]`` (terms the reference lacks, such as ce, may be left out);
3. ``python -m orchestrator.distill.pin ce+mine --reference repo@commit --values values.json`` checks that
   this project's terms give those values and writes the case (exit 1, nothing written, if they differ).

Without ``--values`` the case pins this project's own values (say in ``--reference`` what they were checked
against). Options: ``--set mine.temperature=2`` (knobs, dotted under ``distill.``), ``--teachers 0..2``,
``--teacher-weights 0.7,0.3``, ``--case <file stem>`` (default: the method), ``--dir`` (default
tests/data/pinned). Plug-in terms: ``--plugins my_pkg.mine``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.models.base import ModelOutput, Shapes

BATCH, CLASSES, N = 8, 10, 64
STUDENT = Shapes(12, {"stage1": (4, 8, 8), "stage2": (8, 4, 4)})
TEACHERS = [Shapes(16, {"stage1": (6, 8, 8), "stage2": (12, 4, 4)}),
            Shapes(20, {"stage1": (5, 8, 8), "stage2": (10, 4, 4)})]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # reference code may sum in another order (float32)


class PinnedNet(nn.Module):
    """(B, 1, 8, 8) -> ModelOutput with STUDENT's shapes: stage1 (4, 8, 8), stage2 (8, 4, 4), embedding 12
    (what a term that trains networks of its own, e.g. peers, builds)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.embed, self.fc = nn.Linear(8, STUDENT.embedding), nn.Linear(STUDENT.embedding, CLASSES)

    def forward(self, x):
        f1 = F.relu(self.conv1(x))
        f2 = F.relu(self.conv2(f1))
        emb = self.embed(f2.mean(dim=(2, 3)))
        return ModelOutput([f1, f2], emb, self.fc(emb))


def _features(shapes: Shapes, g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(BATCH, *shape, generator=g) for shape in shapes.stages.values()]


def fixed_inputs():
    """Train labels (N,) and two steps of (indices (B,), labels (B,), student ModelOutput, two teacher
    ModelOutputs, images (B, 1, 8, 8)); B = 8, C = 10 classes, N = 64."""
    g = torch.Generator().manual_seed(2024)
    g_features = torch.Generator().manual_seed(2025)  # its own stream: the vector inputs stay as first pinned
    g_images = torch.Generator().manual_seed(2026)
    train_labels = torch.arange(N) % CLASSES
    steps = []
    for _ in range(2):
        idx = torch.randperm(N, generator=g)[:BATCH]
        s_logits = torch.randn(BATCH, CLASSES, generator=g) * 2
        t_logits = [torch.randn(BATCH, CLASSES, generator=g) * 2 for _ in range(2)]
        s_emb = torch.randn(BATCH, STUDENT.embedding, generator=g)
        t_emb = [torch.randn(BATCH, t.embedding, generator=g) for t in TEACHERS]
        student = ModelOutput(_features(STUDENT, g_features), s_emb, s_logits)
        teachers = [ModelOutput(_features(t, g_features), e, lo) for t, e, lo in zip(TEACHERS, t_emb, t_logits)]
        images = torch.randn(BATCH, 1, 8, 8, generator=g_images)
        steps.append((idx, train_labels[idx], student, teachers, images))
    return train_labels, steps


def case_values(case: dict[str, Any]) -> list[dict[str, float]]:
    """This project's terms of ``case`` (method, config, teachers, teacher_weights) on the two fixed steps.
    Terms are built right after ``torch.manual_seed(1)`` (heads and connectors draw from the global RNG)."""
    from orchestrator.config.schema import Config, apply_overrides
    from orchestrator.distill.objective import build_objective

    overrides = {"distill.method": case["method"], **{f"distill.{k}": v for k, v in case["config"].items()}}
    cfg = apply_overrides(Config(), overrides).distill
    train_labels, steps = fixed_inputs()
    torch.manual_seed(1)
    objective = build_objective(cfg, num_classes=CLASSES, student=STUDENT, teachers=TEACHERS[: case["teachers"]],
                                train_labels=train_labels, teacher_weights=case["teacher_weights"],
                                seed=3, make_student=PinnedNet)
    objective.train()
    out = []
    for idx, y, student, teachers, images in steps:
        terms = objective(student, teachers[: case["teachers"]], y, idx, images=images)
        out.append({name: float(value.detach()) for name, value in terms.items()})
    return out


def save_inputs(path: Path, count: int) -> None:
    """The fixed inputs as plain tensors (``torch.load``): train_labels and, per step, indices, labels, images
    and the student's and each of the first ``count`` teachers' logits, embedding and features (stage maps)."""
    train_labels, steps = fixed_inputs()

    def plain(out: ModelOutput) -> dict:
        return {"logits": out.logits, "embedding": out.embedding, "features": list(out.features)}

    torch.save({"train_labels": train_labels, "steps": [
        {"indices": idx, "labels": y, "images": images, "student": plain(student),
         "teachers": [plain(t) for t in teachers[:count]]}
        for idx, y, student, teachers, images in steps]}, path)


def _differences(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> list[str]:
    out = []
    for step, (mine, ref) in enumerate(zip(ours, theirs, strict=True), start=1):
        for name, value in ref.items():
            if name not in mine:
                out.append(f"step {step}: the reference gives a term '{name}' the objective does not have")
                continue
            try:
                torch.testing.assert_close(torch.tensor(mine[name]), torch.tensor(float(value)), **TOLERANCE)
            except AssertionError:
                out.append(f"step {step} {name}: this project {mine[name]!r}, reference {value!r}")
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.distill.pin", description=__doc__.splitlines()[0])
    parser.add_argument("method", help="distill.method of the case, e.g. ce+mine or a preset")
    parser.add_argument("--reference", help="repo@commit of the reference code the values come from")
    parser.add_argument("--values", type=Path, help="JSON: the reference code's terms per step, [{term: value}, ...]")
    parser.add_argument("--inputs", type=Path, help="write the fixed inputs (torch.save) and stop")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="knobs, dotted under distill.")
    parser.add_argument("--teachers", type=int, default=1, choices=[0, 1, 2])
    parser.add_argument("--teacher-weights", default=None, help="e.g. 0.7,0.3 (default uniform)")
    parser.add_argument("--case", default=None, help="the case file's stem (default: the method, + as _)")
    parser.add_argument("--dir", type=Path, default=Path("tests/data/pinned"))
    parser.add_argument("--plugins", nargs="*", default=[], help="modules registering more terms (distill.plugins)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import yaml

    from orchestrator.distill.plugins import PluginError, import_plugins

    args = _parse(argv)
    try:
        import_plugins(args.plugins)
    except PluginError as exc:
        print(f"error: --plugins: {exc}", file=sys.stderr)
        return 2
    if args.inputs:
        save_inputs(args.inputs, args.teachers)
        print(f"wrote the fixed inputs to {args.inputs} (see orchestrator.distill.pin.save_inputs)")
        return 0
    if not args.reference or "@" not in args.reference:
        print("error: --reference: the reference code as repo@commit (e.g. HobbitLong/RepDistiller@b84f547)",
              file=sys.stderr)
        return 2
    config = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            print(f"error: --set {item!r}: KEY=VALUE, e.g. kd.temperature=4", file=sys.stderr)
            return 2
        config[key.strip()] = yaml.safe_load(raw)
    weights = [float(w) for w in args.teacher_weights.split(",")] if args.teacher_weights else None
    case = {"method": args.method, "config": config, "teachers": args.teachers, "teacher_weights": weights}
    try:
        ours = case_values(case)
    except ValueError as exc:  # a bad method or knob (ConfigError names the key)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.values:
        theirs = json.loads(args.values.read_text())
        if not isinstance(theirs, list) or len(theirs) != len(ours) or not all(isinstance(s, dict) for s in theirs):
            print(f"error: --values: a JSON list of {len(ours)} objects (term -> value per step)", file=sys.stderr)
            return 2
        problems = _differences(ours, theirs)
        if problems:
            print("this project's values differ from the reference's; nothing written:\n  " + "\n  ".join(problems))
            return 1
        expected = [{**mine, **{k: float(v) for k, v in ref.items()}} for mine, ref in zip(ours, theirs)]
        source = (f"{', '.join(sorted({k for s in theirs for k in s}))} computed by {args.reference} (the reference "
                  f"code) on orchestrator.distill.pin's fixed inputs; this project's equal them (commit {_commit()})")
    else:
        expected = ours
        source = f"computed by this project's objectives at commit {_commit()}, checked against {args.reference}"
    path = args.dir / f"{args.case or args.method.replace('+', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**case, "source": source, "expected": expected}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
