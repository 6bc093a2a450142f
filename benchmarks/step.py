"""Images/s of one training step: student alone, KD, CRD, CRD+KD, as ratios, in one process.

    python benchmarks/step.py                 # the table + a CRD step broken down (a few minutes)
    python benchmarks/step.py --quick         # tiny sizes (seconds)
    python benchmarks/step.py --accuracy      # exact vs shared negatives on Fashion-MNIST (val acc1)
    python benchmarks/step.py --augmented     # augmented steps: live vs view-cached teacher (+ cache build)
    python benchmarks/step.py --topk-accuracy # top-k view caches: KD loss error and val acc1 (digits)
    python benchmarks/step.py --append        # also append the tables to docs/BENCHMARKS.md

Every variant is a real :class:`orchestrator.run.learner.Learner` (default teacher ``cnn_teacher``,
student ``cnn_student_tiny``, batch 128, Fashion-MNIST shapes: N = 54,000 memory-bank rows,
1x28x28 random images) whose ``train_one_epoch`` runs over a few prepared batches: the timed
code is the Learner's own step (forward, loss terms, NaN guard, backward, optimiser, loss bookkeeping).
The per-phase breakdown runs the same step with the Learner's
:class:`~orchestrator.run.step_timer.StepTimer` attached (CRD's pieces timed by wrapping them).
Variants alternate round by round; each figure is the median over rounds, and reported as a
ratio to the student-alone (CE) step and to the KD step with the same teacher mode:

- teacher ``live``: the frozen teacher runs on every batch (what ``data.augment=true`` needs);
- teacher ``cached``: its outputs were precomputed once (what the sweep does when
  ``data.augment=false``, the default), so a step does no teacher forward at all.

``impl``: ``now`` is the code as it is; ``before`` the CRD loss as it was before the fused
NCE path (autograd through ``contrast_scores`` + ``nce_loss``, a (B, K+1, d) gather in exact
mode), with negatives drawn on the host (on a GPU they are now drawn on the device); ``reference`` is ``before`` plus negatives drawn per sample with NumPy, as the
reference implementation's dataset does (RepDistiller, ``np.random.choice`` per item).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# ---------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    method: str  # ce | kd | crd | crd_kd
    k: int | None = None
    mode: str | None = None  # exact | shared
    teacher: str | None = None  # live | cached
    impl: str = "now"  # now | before | reference
    memory: str = "bank"  # bank | queue (distill.crd.memory)

    @property
    def name(self) -> str:
        parts = [self.method]
        if self.k:
            parts.append(f"K={self.k}")
        if self.mode:
            parts.append(self.mode)
        if self.teacher:
            parts.append(self.teacher)
        if self.memory != "bank":
            parts.append(self.memory)
        if self.impl != "now":
            parts.append(f"[{self.impl}]")
        return " ".join(parts)


def default_variants(ks: list[int], before: bool, kd_ks: list[int]) -> list[Variant]:
    out = [Variant("ce")]
    for teacher in ("live", "cached"):
        out.append(Variant("kd", teacher=teacher))
        for mode in ("shared", "exact"):
            out += [Variant("crd", k, mode, teacher) for k in ks]
            out += [Variant("crd_kd", k, mode, teacher) for k in kd_ks]
    if before:  # the slowest (exact, before) only where it says something new
        for teacher in ("live", "cached"):
            out += [Variant("crd", k, "shared", teacher, "before") for k in ks]
            exact_ks = [k for k in ks if k != min(ks)] if teacher == "live" else [k for k in ks if k == sorted(ks)[len(ks) // 2]]
            out += [Variant("crd", k, "exact", teacher, "before") for k in exact_ks]
        out += [Variant("crd", k, "exact", "live", "reference") for k in ks if k != min(ks)]
    return out


# ---------------------------------------------------------------- the CRD loss as it was


def legacy_crd_forward(self, student_emb, teacher_emb, indices, negatives, positives=None):
    """``CRDLoss.forward`` before the fused path (commit 4a94b01): autograd through the reference
    functions ``contrast_scores`` and ``nce_loss``, which are unchanged (a bank, exact positives)."""
    import torch

    from orchestrator.distill import nce

    if positives is not None:
        raise ValueError("the CRD loss before the fused path has no relaxed positives")

    if negatives.shape[-1] >= self.n_data:
        raise ValueError(f"nce_k ({negatives.shape[-1]}) must be smaller than N ({self.n_data})")
    mem = self.memory
    if self.training:
        mem.sync()
    v_s = self.embed_s(student_emb).float()
    v_t = self.embed_t(teacher_emb.detach()).float()
    idx = indices.to(mem.bank_s.device, torch.long)
    negatives = negatives.to(mem.bank_s.device, torch.long)
    with torch.autocast(device_type=v_s.device.type, enabled=False):
        out_s = nce.contrast_scores(v_s, mem.bank_t, idx, negatives, self.tau)
        out_t = nce.contrast_scores(v_t, mem.bank_s, idx, negatives, self.tau)
        z_s, z_t = mem.normalisers(out_s, out_t, update=self.training)
        loss = nce.nce_loss(out_s / z_s, self.n_data) + nce.nce_loss(out_t / z_t, self.n_data)
    if self.training:
        mem.update(idx, v_s, v_t)
    return loss


class ReferenceNegatives:
    """Per-sample ``np.random.choice(other-class indices, K, replace=True)``, as the reference's
    ``CIFAR100InstanceSample.__getitem__`` (class negatives, exact mode)."""

    def __init__(self, labels, k: int, seed: int = 0):
        import numpy as np

        y = labels.numpy()
        self.k = k
        self.pools = [np.where(y != c)[0] for c in range(int(y.max()) + 1)]
        self.rng = np.random.default_rng(seed)
        self.np = np

    def __call__(self, distiller, indices, labels):
        import torch

        np = self.np
        rows = [np.random.choice(self.pools[int(c)], self.k, replace=True) for c in labels.cpu().tolist()]
        return torch.from_numpy(np.stack(rows))


@contextlib.contextmanager
def implementation(variant: Variant, reference: ReferenceNegatives | None) -> Iterator[None]:
    """Swap in the CRD loss (and sampler) of ``variant.impl`` for the duration of its steps."""
    from orchestrator.distill.crd import CRD, CRDLoss

    if variant.impl == "now":
        yield
        return
    saved = CRDLoss.forward, CRD.draw_negatives
    CRDLoss.forward = legacy_crd_forward
    if variant.impl == "reference" and reference is not None:
        CRD.draw_negatives = lambda self, indices, labels: reference(self, indices, labels)
    else:  # drawn on the host, as before the sampler drew on the bank's device
        CRD.draw_negatives = lambda self, indices, labels: saved[1](self, indices.cpu(), labels)
    try:
        yield
    finally:
        CRDLoss.forward, CRD.draw_negatives = saved


# ---------------------------------------------------------------- building and timing


@dataclass
class Setup:
    data: object
    teacher: object
    cache: object
    batches: list
    device: str
    teacher_arch: str
    student_arch: str


def make_setup(n: int, batch: int, device: str, teacher: str, student: str, channels: int = 1, size: int = 28,
               classes: int = 10, n_batches: int = 8, materialise: bool = True, cache: bool = True) -> Setup:
    import torch

    from orchestrator.teacher_outputs import CachedTeacherOutputs
    from orchestrator.models.base import freeze
    from orchestrator.models import build_model

    data = common.synthetic_bundle(n, channels, size, classes, materialise=materialise)
    torch.manual_seed(0)
    teacher_model = freeze(build_model(teacher, classes, channels))
    outputs = None
    if cache:  # (N, C + D) floats: the memory benchmark's live-teacher runs skip them (15 GB at N = 14M)
        outputs = CachedTeacherOutputs(logits=torch.randn(n, classes),
                                       embedding=torch.randn(n, teacher_model.embedding_dim))
    batches = common.first_batches(data.train, batch, n_batches)
    return Setup(data, teacher_model, outputs, batches, device, teacher, student)


def make_trainer(setup: Setup, v: Variant, batch: int, extra: list[str] = ()):
    from orchestrator.config.schema import load_config
    from orchestrator.distill import registry
    from orchestrator.run.learner import Learner

    overrides = [
        f"distill.method={v.method}", f"data.batch_size={batch}", "train.scheduler=none",
        f"model.teacher={setup.teacher_arch}", f"model.student={setup.student_arch}", *extra,
    ]
    if v.k:
        overrides += [f"distill.crd.nce_k={v.k}", f"distill.crd.negatives_mode={v.mode}"]
    if v.memory != "bank":
        overrides.append(f"distill.crd.memory={v.memory}")
    cfg = load_config(None, overrides)
    reads_teacher = registry.needs_teacher(cfg.distill)
    live = reads_teacher and v.teacher == "live"
    cached = reads_teacher and v.teacher == "cached"
    return Learner(
        cfg, setup.data, [setup.teacher] if live else [], device=setup.device,
        teacher_outputs=[setup.cache] if cached else None,
    )


def step_runner(trainer, setup: Setup, v: Variant, steps: int, budget_s: float,
                reference: ReferenceNegatives | None) -> Callable[[], float]:
    """A callable running ``steps`` engine steps (fewer for slow variants) and returning s/step."""
    sync = common.Sync(setup.device)
    state = {"steps": steps, "next": 0}

    def run() -> float:
        k = state["steps"]
        start_at = state["next"]
        chosen = [setup.batches[(start_at + i) % len(setup.batches)] for i in range(k)]
        state["next"] = (start_at + k) % len(setup.batches)
        trainer.train_loader = chosen  # train_one_epoch iterates it; set_epoch is a no-op on a list
        with implementation(v, reference):
            sync()
            t0 = time.perf_counter()
            trainer.train_one_epoch()
            sync()
            per_step = (time.perf_counter() - t0) / k
        state["steps"] = max(1, min(steps, int(budget_s / max(per_step, 1e-9))))  # slow variants: fewer steps
        return per_step

    return run


def measure_steps(setup: Setup, variants: list[Variant], batch: int, repeats: int, steps: int, budget_s: float,
                  extra: list[str] = ()) -> dict[Variant, list[float]]:
    """Interleaved s/step of each variant (medians are taken by the caller)."""
    trainers, runners = {}, {}
    refs: dict[int, ReferenceNegatives] = {}
    for v in variants:
        trainers[v] = make_trainer(setup, v, batch, extra)
        ref = None
        if v.impl == "reference":
            ref = refs.setdefault(v.k, ReferenceNegatives(setup.data.train_labels, v.k))
        runners[v.name] = step_runner(trainers[v], setup, v, steps, budget_s, ref)
    times = common.interleave(
        runners, repeats, warmup=1,
        on_round=lambda r: print(f"  round {r + 1}/{repeats} done ({common.load_text()})", flush=True),
    )
    return {v: times[v.name] for v in variants}


# ---------------------------------------------------------------- the step broken down


class Clock:
    """Accumulates seconds per phase (synchronising an accelerator around each)."""

    def __init__(self, device: str):
        self.sync = common.Sync(device)
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed


@contextlib.contextmanager
def instrument(clock: Clock) -> Iterator[None]:
    """Time the pieces of the CRD loss (both implementations) by wrapping them."""
    from orchestrator.distill import crd as crd_mod
    from orchestrator.distill import memory as mem_mod
    from orchestrator.distill import nce as nce_mod

    patched = [
        (crd_mod.Embed, "forward", "CRD heads (2 x Linear + L2 norm)"),
        (crd_mod.CRD, "draw_negatives", "negatives: sampling"),
        (mem_mod.ContrastMemory, "update", "memory-bank update"),
        (mem_mod.ContrastMemory, "normalisers", "NCE: Z"),
        (crd_mod, "nce_loss_and_grad", "NCE: loss + its gradient (fused)"),
        (nce_mod, "contrast_scores", "scores: gather/matmul + exp"),
        (nce_mod, "nce_loss", "NCE: loss (autograd graph)"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patched]
    original_dots = crd_mod.contrast_dots

    def timed_dots(*args, **kwargs):
        with clock("scores: gather/matmul"):
            dots, back = original_dots(*args, **kwargs)
        return dots, clock.wrap("NCE: gradient matmul (d/d anchor)", back)

    try:
        for owner, attr, label in patched:
            setattr(owner, attr, clock.wrap(label, getattr(owner, attr)))
        crd_mod.contrast_dots = timed_dots
        yield
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
        crd_mod.contrast_dots = original_dots


# The rows of the table: the Learner's step phases (StepTimer) each row sums, below the loader row.
STEP_ROWS = {
    "data: batch to device": ("to_device",),
    "teacher forward (live) / cache lookup": ("teacher",),
    "student forward": ("student",),
    "distiller forward (all terms)": ("objective",),
    "backward": ("backward",),
    "optimiser step": ("optimizer",),
    "loss bookkeeping (.item(), isfinite)": ("check", "bookkeeping"),
}


def timed_step(trainer, batch, clock: Clock) -> None:
    """One batch step of the real ``Learner.train_one_epoch``, its phases timed by the Learner's own
    :class:`~orchestrator.run.step_timer.StepTimer`; ``clock`` gets a row per entry of ``STEP_ROWS`` and the total."""
    from orchestrator.run.step_timer import StepTimer

    timer = trainer.step_timer = StepTimer(trainer.device)
    trainer.train_loader = [batch]
    try:
        trainer.train_one_epoch()
    finally:
        trainer.step_timer = None
    rows = {row: sum(timer.totals[p] for p in phases) for row, phases in STEP_ROWS.items()}
    for row, seconds in [*rows.items(), ("total", sum(rows.values()))]:
        clock.totals[row] = clock.totals.get(row, 0.0) + seconds


SUB_PHASES = (
    "CRD heads (2 x Linear + L2 norm)",
    "negatives: sampling",
    "scores: gather/matmul",
    "scores: gather/matmul + exp",
    "NCE: Z",
    "NCE: loss + its gradient (fused)",
    "NCE: gradient matmul (d/d anchor)",
    "NCE: loss (autograd graph)",
    "memory-bank update",
)
TOP_PHASES = ("data: batch from the loader", *STEP_ROWS)


def breakdown(setup: Setup, variants: list[Variant], batch: int, repeats: int, extra: list[str] = ()) -> common.Table:
    """Median ms per phase of one step, variants interleaved."""
    import torch

    from orchestrator.data.loaders import collate

    trainers = {v: make_trainer(setup, v, batch, extra) for v in variants}
    per_round: dict[Variant, list[dict[str, float]]] = {v: [] for v in variants}
    perm = torch.randperm(len(setup.data.train))
    for r in range(repeats + 1):  # round 0 is warm-up
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            clock = Clock(setup.device)
            with clock("data: batch from the loader"):  # what the DataLoader does for one batch
                start = (r * batch) % max(1, len(perm) - batch)
                collate(setup.data.train.__getitems__(perm[start : start + batch].tolist()))
            b = setup.batches[r % len(setup.batches)]
            with implementation(v, None), instrument(clock):
                timed_step(trainers[v], b, clock)
            if r:
                per_round[v].append(dict(clock.totals))
    table = common.Table(
        f"One step broken down: median ms per phase (batch {batch}, {common.load_text()})",
        ["phase", *[v.name for v in variants]],
    )

    def med(v: Variant, phase: str) -> float:
        return common.median([t.get(phase, 0.0) for t in per_round[v]])

    for phase in TOP_PHASES:
        table.add(phase, *[common.fmt_ms(med(v, phase)) for v in variants])
        if phase == "distiller forward (all terms)":
            for sub in SUB_PHASES:
                if any(med(v, sub) > 0 for v in variants):
                    table.add(f"  of which {sub}", *[common.fmt_ms(med(v, sub)) if med(v, sub) else "-" for v in variants])
            others = [med(v, phase) - sum(med(v, s) for s in SUB_PHASES) for v in variants]
            table.add("  of which other (CE/KD terms, exp, glue)", *[common.fmt_ms(max(o, 0.0)) for o in others])
    table.add("total (instrumented step)", *[common.fmt_ms(med(v, "total")) for v in variants])
    table.notes.append(
        "`now`: the NCE gradient is computed in the distiller forward (fused), so `backward` holds only the "
        "student and the heads; `before`: the NCE graph is differentiated by autograd inside `backward`."
    )
    return table


# ---------------------------------------------------------------- augmented steps: live vs view-cached teacher


@dataclass(frozen=True)
class AugVariant:
    label: str
    method: str  # ce | kd | crd
    augment: bool
    teacher: str | None = None  # live | views | views-topK


def aug_variants(k: int, topk: int) -> list[AugVariant]:
    return [
        AugVariant("student alone (CE), plain data", "ce", False),
        AugVariant("student alone (CE), augmented", "ce", True),
        AugVariant("KD, augmented, live teacher", "kd", True, "live"),
        AugVariant("KD, augmented, view cache", "kd", True, "views"),
        AugVariant(f"KD, augmented, view cache top-{topk}", "kd", True, f"views-top{topk}"),
        AugVariant(f"CRD K={k} shared, augmented, live teacher", "crd", True, "live"),
        AugVariant(f"CRD K={k} shared, augmented, view cache", "crd", True, "views"),
    ]


class LoaderSlice:
    """``steps`` batches at a time from a real DataLoader (augmentation and all), epoch 0's views over and over."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps, self._it = loader, steps, iter(loader)

    def set_epoch(self, epoch: int) -> None:  # the views of epoch 0 only (the view cache holds one epoch)
        pass

    def __iter__(self):
        for _ in range(self.steps):
            try:
                yield next(self._it)
            except StopIteration:
                self._it = iter(self.loader)
                yield next(self._it)


def augmented_steps(args, repeats: int) -> list[common.Table]:
    """Steps through the real loader (views cropped/flipped per batch): student alone, KD and CRD with a live
    or a view-cached teacher; the view caches' build time and size per epoch."""
    import tempfile

    import torch

    from orchestrator.config.schema import load_config
    from orchestrator.data.transforms import IN_MEMORY_AUGMENT
    from orchestrator.distill.registry import LOGITS, OUTPUTS, Needs
    from orchestrator.run.learner import Learner
    from orchestrator.models.base import freeze
    from orchestrator.models import build_model
    from orchestrator.teacher_outputs import build_views

    k, topk = args.aug_k, args.aug_topk
    aug = common.synthetic_bundle(args.n, augment=IN_MEMORY_AUGMENT["fashion_mnist"])
    plain = common.synthetic_bundle(args.n)
    torch.manual_seed(0)
    teacher = freeze(build_model(args.teacher, 10, 1))
    folder = Path(tempfile.mkdtemp(prefix="views-bench-"))
    build = common.Table(
        f"View cache build: {args.teacher} on {args.n} augmented 1x28x28 views (one epoch), batch 512, "
        f"{args.threads} torch thread(s), {args.device}",
        ["stores", "build s/epoch", "views/s", "MiB per epoch", "bytes per view"])
    caches = {}
    for name, needs, top in (("views", OUTPUTS, 0), (f"views-top{topk}", Needs(frozenset({LOGITS})), topk)):
        t0 = time.perf_counter()
        caches[name] = build_views(teacher, aug.train, 0, 1, needs, folder / name, topk=top, device=args.device)
        seconds = time.perf_counter() - t0
        size = (folder / name / "epoch-00000.pt").stat().st_size
        build.add(caches[name].meta.stored(), f"{seconds:.1f}", f"{args.n / seconds:,.0f}", f"{size / 2**20:.2f}",
                  f"{size / args.n:.0f}")

    variants = aug_variants(k, topk)
    runners = {}
    for v in variants:
        overrides = [f"distill.method={v.method}", f"data.batch_size={args.batch_size}", "train.scheduler=none",
                     "train.epochs=1", f"model.teacher={args.teacher}", f"model.student={args.student}",
                     f"distill.crd.nce_k={k}", "distill.crd.negatives_mode=shared"]
        cfg = load_config(None, overrides)
        data = aug if v.augment else plain
        trainer = Learner(cfg, data, [teacher] if v.teacher == "live" else [], device=args.device,
                          teacher_outputs=[caches[v.teacher]] if v.teacher and v.teacher != "live" else None)
        trainer.train_loader = LoaderSlice(trainer.train_loader, args.steps)
        runners[v.label] = aug_runner(trainer, args.device, args.steps)
    times = common.interleave(
        runners, repeats, warmup=1,
        on_round=lambda r: print(f"  augmented round {r + 1}/{repeats} done ({common.load_text()})", flush=True))
    med = {label: common.median(t) for label, t in times.items()}
    alone_aug, alone = med[variants[1].label], med[variants[0].label]
    live = {v.method: med[v.label] for v in variants if v.teacher == "live"}
    table = common.Table(
        f"Augmented training step incl. the data loader (crop+flip per batch), {args.teacher} -> {args.student}, "
        f"batch {args.batch_size}, N={args.n}, {args.threads} torch thread(s), {args.device}: median of {repeats} "
        "interleaved rounds",
        ["variant", "ms/step", "img/s", "x student alone, augmented", "x student alone, plain", "x live (same term)",
         "noise"])
    for v in variants:
        m = med[v.label]
        table.add(v.label, common.fmt_ms(m), f"{args.batch_size / m:.0f}", common.fmt_ratio(m / alone_aug),
                  common.fmt_ratio(m / alone), common.fmt_ratio(m / live[v.method]) if v.method in live else "-",
                  f"±{100 * common.spread(times[v.label]):.0f}%")
    table.notes.append("views: the teacher's fp16 logits + embedding of each view (seed, epoch, index), built once "
                       "(table above); live: the teacher runs on every augmented batch")
    return [build, table]


def aug_runner(trainer, device: str, steps: int) -> Callable[[], float]:
    sync = common.Sync(device)

    def run() -> float:
        trainer.epoch = 0  # epoch 0's views (what the caches hold); no scheduler, no pre-stage here
        sync()
        t0 = time.perf_counter()
        trainer.train_one_epoch()
        sync()
        return (time.perf_counter() - t0) / steps

    return run


# ---------------------------------------------------------------- top-k views: what is lost


def topk_accuracy(args) -> common.Table:
    """Augmented KD on digits (tiny_teacher -> tiny_student, same seed) fed the live teacher, the fp16 view cache
    and top-k view caches: the KD loss's error on the same batches and the student's validation accuracy."""
    import tempfile

    import torch

    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.distill.kd import kd_loss
    from orchestrator.distill.registry import LOGITS, Needs
    from orchestrator.run.epochs import run_epochs
    from orchestrator.run.learner import Learner
    from orchestrator.teacher_outputs import build_views
    from orchestrator.run.alone import train_alone

    epochs = args.topk_epochs
    cfg = load_config(None, ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student",
                             "data.batch_size=64", "train.lr=0.1", "distill.method=kd", "data.augment=true",
                             f"train.epochs={epochs}"])
    data = build_data(cfg.data, cfg.seed)
    teacher, tm = train_alone(cfg, data, "tiny_teacher", 6, 0.1, label="teacher")
    folder = Path(tempfile.mkdtemp(prefix="views-topk-"))
    temperature = cfg.distill.kd.temperature
    table = common.Table(
        f"Top-k view caches: augmented KD on digits, tiny_teacher (test acc1 {tm['test/acc1']:.3f}) -> tiny_student, "
        f"T={temperature:g}, {epochs} epochs, seed {cfg.seed}, {len(data.train)} train / {len(data.val)} val images",
        ["teacher outputs", "bytes per view", "KD loss rel. error (median, max over batches)", "val acc1",
         "val acc1 - live", "final train/loss_kd"])
    runs: dict[str, float] = {}
    for label, topk in (("live teacher", None), ("view cache, fp16 logits", 0), *[
            (f"view cache, top-{k} logits", k) for k in args.topk_ks]):
        views = None
        if topk is not None:
            views = build_views(teacher, data.train, cfg.seed, epochs, Needs(frozenset({LOGITS})), folder / f"top{topk}",
                                topk=topk)
        errors = []
        if views is not None:  # the KD loss of an untrained student's logits against the stored vs exact logits
            torch.manual_seed(0)
            probe = Learner(cfg, data, teacher_outputs=[views])
            for images, _, indices in probe.train_loader:
                with torch.no_grad():
                    s = probe.student(images).logits
                    exact = kd_loss(s, teacher(images).logits, temperature)
                    stored = kd_loss(s, views.rows(indices, torch.device("cpu"), 0).logits, temperature)
                errors.append(abs(float(stored - exact)) / float(exact))
        trainer = Learner(cfg, data, [teacher] if views is None else [], teacher_outputs=[views] if views else None)
        last = run_epochs([trainer])
        acc = last["val/acc1"]
        runs[label] = acc
        size = views.meta.bytes_per_epoch() / len(data.train) if views else 0
        table.add(label, f"{size:.0f}" if views else "-",
                  f"{100 * common.median(errors):.3f}%, {100 * max(errors):.3f}%" if errors else "-",
                  f"{acc:.4f}", f"{acc - runs['live teacher']:+.4f}", f"{last.get('train/loss_kd', 0):.4f}")
        print(f"  {label}: val acc1 {acc:.4f}", flush=True)
    table.notes.append("top-k: the k largest logits (fp16) and the log-sum-exp of all (fp32); the other logits are "
                       "filled so that softmax at T=1 keeps the top-k probabilities and spreads the rest evenly")
    return table


# ---------------------------------------------------------------- accuracy: exact vs shared


def accuracy(args) -> common.Table:
    """Train cnn_student_tiny with crd_kd, exact and shared negatives, same seed, same teacher."""
    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.run.epochs import run_epochs
    from orchestrator.run.learner import Learner
    from orchestrator.teacher_outputs import compute_teacher_outputs
    from orchestrator.run.alone import train_alone

    base = [
        "data.dataset=fashion_mnist", f"data.train_subset={args.acc_subset}", "distill.method=crd_kd",
        f"distill.crd.nce_k={args.acc_k}", f"train.epochs={args.acc_epochs}",
    ]
    cfg = load_config(None, base)
    data = build_data(cfg.data, cfg.seed)
    print(f"teacher: training {cfg.model.teacher} on {len(data.train)} images for {args.acc_teacher_epochs} epoch(s)")
    teacher, tmetrics = train_alone(cfg, data, cfg.model.teacher, args.acc_teacher_epochs, cfg.teacher.lr, label="teacher")
    outputs = compute_teacher_outputs(teacher, data.train_eval, cfg.data.eval_batch_size)
    table = common.Table(
        f"Exact vs shared negatives: crd_kd, {cfg.model.teacher} -> {cfg.model.student}, Fashion-MNIST "
        f"{len(data.train)} train / {len(data.val)} val images, K={args.acc_k}, {args.acc_epochs} epochs, "
        f"seed {cfg.seed} (teacher val acc1 {tmetrics['val/acc1']:.4f})",
        ["negatives_mode", *[f"val acc1 ep{e + 1}" for e in range(args.acc_epochs)], "s/epoch (median)", "final train/loss_crd"],
    )
    for mode in ("exact", "shared"):
        trainer = Learner(load_config(None, [*base, f"distill.crd.negatives_mode={mode}"]), data, teacher_outputs=[outputs])
        accs, secs = [], []

        def on_epoch(metrics: dict, _per_seed, mode=mode, accs=accs, secs=secs) -> None:
            secs.append(metrics["time/epoch_s"])
            accs.append(metrics["val/acc1"])
            print(f"  [{mode}] epoch {metrics['epoch']}: val acc1 {accs[-1]:.4f} ({secs[-1]:.1f} s)", flush=True)

        last = run_epochs([trainer], on_epoch=on_epoch)
        table.add(mode, *[f"{a:.4f}" for a in accs], f"{common.median(secs):.1f}", f"{last.get('train/loss_crd', 0):.4f}")
    table.notes.append(f"{common.load_text()}; torch threads {args.threads}")
    return table


# ---------------------------------------------------------------- main


def build_parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--n", type=int, default=54_000, help="training-set size N (memory-bank rows)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ks", type=int, nargs="+", default=[1024, 4096, 16384], help="CRD negatives K")
    p.add_argument("--kd-ks", type=int, nargs="*", default=[4096, 16384], help="K of the CRD+KD rows")
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round (slow variants: fewer)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per variant per round, roughly")
    p.add_argument("--no-before", action="store_true", help="skip the 'before' and 'reference' CRD variants")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-phase table")
    p.add_argument("--teacher", default="cnn_teacher")
    p.add_argument("--student", default="cnn_student_tiny")
    p.add_argument("--accuracy", action="store_true", help="only the exact-vs-shared accuracy run (Fashion-MNIST)")
    p.add_argument("--acc-subset", type=int, default=20_000)
    p.add_argument("--acc-epochs", type=int, default=3)
    p.add_argument("--acc-teacher-epochs", type=int, default=2)
    p.add_argument("--acc-k", type=int, default=4096)
    p.add_argument("--augmented", action="store_true",
                   help="only the augmented steps: live vs view-cached teacher, and the view cache's build")
    p.add_argument("--aug-k", type=int, default=4096, help="CRD negatives K of the augmented rows")
    p.add_argument("--aug-topk", type=int, default=5, help="top-k of the top-k view cache row")
    p.add_argument("--topk-accuracy", action="store_true",
                   help="only the top-k view caches' loss of accuracy (augmented KD on digits)")
    p.add_argument("--topk-ks", type=int, nargs="+", default=[5, 2, 1])
    p.add_argument("--topk-epochs", type=int, default=8)
    return p


def step_table(times: dict[Variant, list[float]], batch: int, title: str) -> common.Table:
    med = {v: common.median(t) for v, t in times.items()}
    ce = next((m for v, m in med.items() if v.method == "ce"), float("nan"))
    kd = {v.teacher: m for v, m in med.items() if v.method == "kd" and v.impl == "now"}
    table = common.Table(title, ["variant", "ms/step", "img/s", "x student alone (CE)", "x KD (same teacher)", "noise"])
    for v, m in med.items():
        ref = kd.get(v.teacher, float("nan")) if v.teacher else float("nan")
        table.add(v.name, common.fmt_ms(m), f"{batch / m:.0f}", common.fmt_ratio(m / ce),
                  common.fmt_ratio(m / ref) if v.method != "ce" else "-", f"±{100 * common.spread(times[v]):.0f}%")
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.set_threads(args.threads)
    if args.quick:
        args.n, args.batch_size, args.ks, args.kd_ks = 2000, 32, [64, 256], [256]
        args.steps, args.budget = 1, 0.2
        args.acc_subset, args.acc_epochs, args.acc_teacher_epochs, args.acc_k = 2000, 1, 1, 256
        args.aug_k = 256
        if args.augmented:  # the view caches' build is a teacher pass over N views each
            args.n = 600
        args.topk_epochs, args.topk_ks = 1, [2]
    repeats = args.repeats or (2 if args.quick else 5)
    tables: list[common.Table] = []
    if args.topk_accuracy:
        table = topk_accuracy(args)
        table.print()
        common.report([table], append=args.append, title="step.py --topk-accuracy: top-k view caches")
        return 0
    if args.augmented:
        tables = augmented_steps(args, repeats)
        for table in tables:
            table.print()
        common.report(tables, append=args.append, title="step.py --augmented: live vs view-cached teacher",
                      device=args.device)
        return 0
    if args.accuracy:
        table = accuracy(args)
        table.print()
        common.report([table], append=args.append, title="step.py --accuracy: exact vs shared negatives")
        return 0

    print(f"setting up: N={args.n}, batch {args.batch_size}, {args.teacher} -> {args.student}, "
          f"device {args.device}, torch threads {args.threads}", flush=True)
    setup = make_setup(args.n, args.batch_size, args.device, args.teacher, args.student)
    variants = default_variants(args.ks, not args.no_before, args.kd_ks)
    print(f"{len(variants)} variants x {repeats} rounds (interleaved)", flush=True)
    load_before = common.load_average()
    times = measure_steps(setup, variants, args.batch_size, repeats, args.steps, args.budget)
    table = step_table(
        times, args.batch_size,
        f"Training step, {args.teacher} -> {args.student}, batch {args.batch_size}, N={args.n}, "
        f"{args.threads} torch thread(s), {args.device}: median of {repeats} interleaved rounds "
        f"(load average before {load_before[0]:.2f}, after {common.load_average()[0]:.2f})",
    )
    tables.append(table)
    table.print()

    if not args.no_breakdown:
        k = max(args.ks)
        chosen = [Variant("kd", teacher="live"), Variant("crd", k, "shared", "live"), Variant("crd", k, "exact", "live")]
        if not args.no_before:
            chosen.append(Variant("crd", k, "shared", "live", "before"))
        bd = breakdown(setup, chosen, args.batch_size, max(3, repeats))
        tables.append(bd)
        bd.print()
    common.report(tables, append=args.append, title="step.py: one training step", device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
