"""Peak memory of a CRD training step as the dataset (N) and the negatives (K) grow, bank vs queue, against KD.

    python benchmarks/memory.py            # N = 60k, 1.28M, 14M; K = 4096 and 16384 (a few minutes)
    python benchmarks/memory.py --quick    # small N and K (seconds)
    python benchmarks/memory.py --append   # also append the table to docs/BENCHMARKS.md

Every variant runs in a fresh Python process (so one variant's freed memory cannot hide
another's peak) with ``MALLOC_MMAP_THRESHOLD_`` fixed, so that glibc returns large freed
blocks to the system and the resident set follows the live tensors. The process builds a
real :class:`~orchestrator.run.learner.Learner` (``cnn_teacher`` live -> ``cnn_student_tiny``, batch
128, random 1x28x28 images generated per batch: nothing is stored per image, so N = 1.28M
costs only the banks), runs one warm-up step, then resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``) and runs ``--steps`` steps. Reported:

- ``state``: resident memory the trainer (student, distiller, optimiser) adds, measured after the
  warm-up step (for bank CRD mostly the two memory banks, 2 x N x d x 4 bytes; for queue CRD,
  ``distill.crd.memory=queue`` with Q = K, two K x d queues whatever N);
- ``step peak``: the peak resident memory during a step above that (the step's temporaries);
- the CRD loss ``now`` and ``before`` the fused NCE path (``benchmarks/step.py`` explains both).

Banks larger than ``--max-bank-gb`` (default 4: N = 14M needs 2 x 14M x 128 x 4 B = 14.3 GB, more
than a shared 24 GiB machine should give one benchmark) are not allocated: their rows give the banks'
size, computed, and are marked ``analytic``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def child(spec: dict) -> dict:
    """Runs in the subprocess: build, warm up, measure; returns numbers in bytes/seconds."""
    import torch

    import step as step_bench

    common.set_threads(spec["threads"])
    setup = step_bench.make_setup(
        spec["n"], spec["batch"], "cpu", spec["teacher"], spec["student"], n_batches=spec["steps"] + 1,
        materialise=False, cache=False,  # live teacher: no N-row output cache
    )
    rss0 = _status_kib("VmRSS")  # imports, teacher, batches: the same for every variant
    v = step_bench.Variant(spec["method"], spec.get("k"), spec.get("mode"), "live" if spec["method"] != "ce" else None,
                           spec.get("impl", "now"), spec.get("memory", "bank"))
    trainer = step_bench.make_trainer(setup, v, spec["batch"])
    run = step_bench.step_runner(trainer, setup, v, 1, 1e9, None)
    run()  # warm-up step: first-batch Z, optimiser state, allocator pools
    state = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = [run() for _ in range(spec["steps"])]
    peak = _status_kib("VmHWM")
    memory = 0
    for name, buf in trainer.objective.named_buffers():
        if name.endswith(("bank_s", "bank_t", "queue_s.rows", "queue_t.rows")):
            memory += buf.numel() * buf.element_size()
    del torch
    return {
        "state": (state - rss0) * 1024, "step_peak": (peak - state) * 1024, "memory": memory,
        "s_per_step": common.median(times),
    }


def run_child(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               OMP_NUM_THREADS=str(spec["threads"]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def variants(ns: list[int], ks: list[int], before: bool) -> list[dict]:
    out = [{"method": "ce"}, {"method": "kd"}]
    for n in ns:
        for k in ks:
            for mode in ("shared", "exact"):
                for impl in ("now", "before") if before else ("now",):
                    out.append({"method": "crd", "n": n, "k": k, "mode": mode, "impl": impl})
            out.append({"method": "crd", "n": n, "k": k, "mode": "shared", "memory": "queue"})
    return out


def bank_bytes(n: int, feat_dim: int = 128) -> int:
    """Two (N, d) fp32 banks."""
    return 2 * n * feat_dim * 4


def label(spec: dict) -> str:
    if spec["method"] in ("ce", "kd"):
        return {"ce": "student alone (CE)", "kd": "KD (live teacher)"}[spec["method"]]
    if spec.get("memory") == "queue":
        return "CRD queue (Q = K)"
    tail = "" if spec.get("impl", "now") == "now" else " [before]"
    return f"CRD bank, {spec['mode']}{tail}"


def build_parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", help="dataset sizes N (default 60,000 1,280,000 14,000,000; "
                   "--quick: 3,000)")
    p.add_argument("--ks", type=int, nargs="+", help="negatives K (default 4,096 16,384; --quick: 256 1,024)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="measured steps per variant")
    p.add_argument("--no-before", action="store_true", help="skip the CRD loss as it was before the fused path")
    p.add_argument("--max-bank-gb", type=float, default=4.0,
                   help="larger banks are not allocated: their rows are analytic (the banks' size)")
    p.add_argument("--teacher", default="cnn_teacher")
    p.add_argument("--student", default="cnn_student_tiny")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one variant, in a subprocess
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if not Path("/proc/self/clear_refs").exists():
        print("this benchmark needs Linux (/proc/self/clear_refs, VmHWM)", file=sys.stderr)
        return 2
    if args.quick:  # small defaults; --ns and --ks given are kept
        args.ns, args.ks, args.batch_size, args.steps = args.ns or [3000], args.ks or [256, 1024], 32, 1
    args.ns, args.ks = args.ns or [60_000, 1_280_000, 14_000_000], args.ks or [4096, 16384]
    base = {"batch": args.batch_size, "steps": args.steps, "threads": args.threads, "teacher": args.teacher,
            "student": args.student}
    specs = variants(args.ns, args.ks, not args.no_before)
    table = common.Table(
        f"Peak memory of one training step ({args.teacher} live -> {args.student}, batch {args.batch_size}, "
        f"feat_dim 128; each variant in a fresh process)",
        ["variant", "N", "K", "trainer state", "of which banks/queues", "step peak above state",
         "s/step (indicative)"],
    )
    analytic = False
    for spec in specs:
        spec = {**base, "n": spec.get("n", min(args.ns)), **spec}
        if spec["method"] == "crd" and spec.get("memory", "bank") == "bank" \
                and bank_bytes(spec["n"]) > args.max_bank_gb * 1e9:
            if spec.get("impl", "now") == "now":
                analytic = True
                banks = common.fmt_bytes(bank_bytes(spec["n"]))
                table.add(label(spec), f"{spec['n']:,}", spec["k"], f">= {banks} (analytic)", f"{banks} (analytic)",
                          "not run", "not run")
            continue
        t0 = time.perf_counter()
        res = run_child(spec)
        print(f"  {label(spec)} N={spec['n']} K={spec.get('k', '-')}: "
              f"{res if 'error' in res else 'done'} ({time.perf_counter() - t0:.0f} s, {common.load_text()})", flush=True)
        if "error" in res:
            table.add(label(spec), spec["n"], spec.get("k", "-"), "error", "", res["error"][:60], "")
            continue
        table.add(label(spec), f"{spec['n']:,}", spec.get("k", "-"), common.fmt_bytes(res["state"]),
                  common.fmt_bytes(res["memory"]) if res["memory"] else "-", common.fmt_bytes(res["step_peak"]),
                  f"{res['s_per_step']:.2f}")
    table.notes += [
        "CE/KD rows: no memory bank; their N only sizes the (unstored) dataset",
        "CRD queue: distill.crd.memory=queue, queue length Q = K, negatives shared by the batch; its N is only "
        "the NCE noise 1/N (and the N labels of the dataset)",
        *([f"analytic rows: banks over {args.max_bank_gb:g} GB (2 x N x 128 x 4 B) are not allocated on this "
           "machine; the step's temporaries do not grow with N (shared) or grow as B (K+1) d (exact)"]
          if analytic else []),
        f"{common.load_text()}; torch threads {args.threads}",
    ]
    table.print()
    common.report([table], append=args.append, title="memory.py: peak memory of a CRD step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
