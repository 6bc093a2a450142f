"""Two gloo processes: CRD memory banks and Z stay bitwise identical across ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill_helpers import build, distill_config
from orchestrator.distill.distributed import all_gather_rows
from orchestrator.models.base import ModelOutput

MODES = ("exact", "shared")
N_DATA, STEPS = 40, 4


def _make(seed: int, mode: str):
    cfg = distill_config("crd_kd", crd__feat_dim=4, crd__nce_k=5, crd__negatives_mode=mode)
    return build(cfg, student_dim=6, teacher_dims=[8], train_labels=torch.arange(N_DATA) % 4, seed=seed)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {"gathered": all_gather_rows(torch.arange(3 + 2 * rank) + 10 * rank)}
        for mode in MODES:
            d = _make(seed=rank, mode=mode)  # different seeds: the banks are synchronised from rank 0
            opt = torch.optim.SGD(d.parameters(), lr=0.5)  # heads drift apart per rank: banks must not
            g = torch.Generator().manual_seed(100 + rank)  # different data per rank
            batch = 5 if rank == 0 else 3  # unequal batch sizes
            seen = []
            for _ in range(STEPS):
                idx = torch.randperm(N_DATA, generator=g)[:batch]
                seen.append(idx)
                s = (torch.randn(batch, 6, generator=g), torch.randn(batch, 4, generator=g))
                t = (torch.randn(batch, 8, generator=g), torch.randn(batch, 4, generator=g))
                terms = d(ModelOutput([], *s), ModelOutput([], *t), idx % 4, idx)
                opt.zero_grad()
                sum(terms.values()).backward()
                opt.step()
            mem = d.terms['crd'].crds[0].memory
            result[mode] = {
                "bank_s": mem.bank_s.clone(),
                "bank_t": mem.bank_t.clone(),
                "z_s": mem.z_s.clone(),
                "z_t": mem.z_t.clone(),
                "seen": torch.cat(seen),
                "head": d.terms['crd'].crds[0].embed_s.linear.weight.detach().clone(),
            }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still uses it (a rank once aborted there)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: ~15 s on a busy 2-core machine
def test_two_rank_banks_and_z_identical(tmp_path):
    init_file = str(tmp_path / "init")
    mp.spawn(_worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    expected = torch.cat([torch.arange(3), torch.arange(5) + 10])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    for mode in MODES:
        a, b = r0[mode], r1[mode]
        assert not torch.equal(a["head"], b["head"])  # ranks really differed
        for key in ("bank_s", "bank_t", "z_s", "z_t"):
            assert torch.equal(a[key], b[key]), (mode, key)
        assert a["z_s"].item() > 0 and a["z_t"].item() > 0
        # every row seen by either rank was updated everywhere; all other rows are rank 0's initial ones
        init = _make(seed=0, mode=mode).terms['crd'].crds[0].memory
        touched = set(a["seen"].tolist()) | set(b["seen"].tolist())
        changed = {i for i in range(N_DATA) if not torch.equal(a["bank_s"][i], init.bank_s[i])}
        assert changed == touched
        norms = a["bank_t"][sorted(touched)].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
