"""What the teachers cost per training step: live forward passes vs cached outputs (and the student's own step)."""

from __future__ import annotations

import math
import statistics
import time

import torch

from orchestrator.config.schema import Config, student_arch


@torch.no_grad()
def measure_teacher_cost(models, caches, data, cfg: Config, threads: int, repeats: int = 10) -> dict:
    """ms per training batch of the M teachers' outputs: live forward (no grad, eval) vs cached lookup.

    Also the student's own training step (forward + backward with the ensemble KD loss) for scale.
    """
    from orchestrator.data import make_loader
    from orchestrator.distill.kd import ensemble_kd_loss
    from orchestrator.models import build_model

    loader = make_loader(data.train, cfg.data.batch_size, shuffle=True, seed=cfg.seed)
    images, labels, indices = next(iter(loader))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return 1000.0 * statistics.median(samples)

    try:
        for m in models:
            m.eval()
        live = timed(lambda: [m(images) for m in models])
        per_teacher = [timed(lambda m=m: m(images)) for m in models]
        cached = None
        if caches:
            cached = timed(lambda: [c.rows(indices, torch.device("cpu")) for c in caches])
        student = build_model(student_arch(cfg.model), data.num_classes, data.in_channels)
        student.train()
        teacher_logits = [m(images).logits for m in models]

        def step():
            with torch.enable_grad():
                logits = student(images).logits
                loss = torch.nn.functional.cross_entropy(logits, labels) + ensemble_kd_loss(logits, teacher_logits, 4.0)
                student.zero_grad(set_to_none=True)
                loss.backward()

        student_step = timed(step)
    finally:
        torch.set_num_threads(saved)
    steps = math.ceil(len(data.train) / cfg.data.batch_size)
    out = {
        "batch_size": cfg.data.batch_size, "threads": threads, "steps_per_epoch": steps,
        "live_ms_per_batch": live, "per_teacher_live_ms": per_teacher, "student_step_ms": student_step,
        "live_s_per_epoch": live * steps / 1000.0,
    }
    if cached is not None:
        out.update(cached_ms_per_batch=cached, cached_s_per_epoch=cached * steps / 1000.0,
                   speedup=live / max(cached, 1e-9))
    return out
