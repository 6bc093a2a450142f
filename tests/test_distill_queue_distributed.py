"""Two gloo processes: the queues of queue-mode CRD and SEED stay identical across ranks and hold the global batches."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill_helpers import build, distill_config
from orchestrator.models.base import ModelOutput

QUEUE, STEPS = 11, 4  # 4 steps of 5 + 3 rows wrap the queue of 11 twice
BATCHES = (5, 3)


def _make(seed: int):
    cfg = distill_config("crd+seed", crd__memory="queue", crd__nce_k=QUEUE, crd__feat_dim=4,
                         seed__queue_size=QUEUE, seed__head="linear")
    return build(cfg, student_dim=6, teacher_dims=[8], train_labels=torch.arange(40) % 4, seed=seed)


def _queues(objective) -> dict[str, torch.Tensor]:
    crd, seed = objective.terms["crd"].crds[0].memory, objective.terms["seed"].losses[0]
    out = {}
    for name, queue in (("crd_s", crd.queue_s), ("crd_t", crd.queue_t), ("seed", seed.queue)):
        out[name], out[name + "_ptr"] = queue.rows.clone(), queue.ptr.clone()
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        objective = _make(seed=rank)  # different seeds: the queues are synchronised from rank 0
        opt = torch.optim.SGD(objective.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        teachers = []
        for _ in range(STEPS):
            b = BATCHES[rank]
            s = ModelOutput([], torch.randn(b, 6, generator=g), torch.zeros(b, 4))
            t = ModelOutput([], torch.randn(b, 8, generator=g), torch.zeros(b, 4))
            teachers.append(t.embedding)
            terms = objective(s, [t], torch.zeros(b, dtype=torch.long), torch.arange(b))
            opt.zero_grad()
            sum(terms.values()).backward()
            opt.step()
        torch.save({**_queues(objective), "teachers": torch.stack([x for x in teachers], 0).flatten(0, 1)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters
def test_two_rank_queues_identical_and_hold_the_global_batches(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("crd_s", "crd_t", "seed", "crd_s_ptr", "crd_t_ptr", "seed_ptr"):
        assert torch.equal(r0[key], r1[key]), key
    assert int(r0["seed_ptr"]) == STEPS * sum(BATCHES) % QUEUE
    # SEED's queue holds the teachers' normalised embeddings of the last 11 global rows, in rank order per step
    steps = [torch.cat([r["teachers"].view(STEPS, b, 8)[i] for r, b in zip((r0, r1), BATCHES)]) for i in range(STEPS)]
    last = torch.nn.functional.normalize(torch.cat(steps), dim=1)[-QUEUE:]
    ptr = int(r0["seed_ptr"])
    order = [(ptr + i) % QUEUE for i in range(QUEUE)]  # oldest first
    torch.testing.assert_close(r0["seed"][order], last)
