"""The kernels a CRD step cannot avoid, timed alone: its floor on this machine.

    python benchmarks/kernels.py              # B = 128, K = 16384, d = 128 (under a minute)
    python benchmarks/kernels.py --quick      # small shapes (seconds)
    python benchmarks/kernels.py --append     # also append the table to docs/BENCHMARKS.md

A shared-negatives CRD step needs, per anchor direction (student anchors vs the teacher bank,
teacher anchors vs the student bank): one gather of K bank rows, one (K, d) x (d, B) product for
the scores, exp over the (B, K+1) scores, log over them (for the loss value), and one
(B, K) x (K, d) product for the gradient. This script times each alone on random data,
interleaved, and sums them for the two directions: no implementation of the step can be
faster in fp32 on this device, whatever it fuses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def kernels(b: int, k: int, d: int, n: int, device: str) -> dict[str, tuple[Callable[[], object], float]]:
    """{name: (call, GFLOP per call or 0)} on random tensors of the CRD shapes."""
    import torch

    anchor = torch.randn(b, d, device=device)
    bank = torch.randn(n, d, device=device)
    negatives = torch.randperm(n, device=device)[:k]
    rows = torch.index_select(bank, 0, negatives)
    scores_t = torch.empty(k + 1, b, device=device)
    grad_t = torch.rand(k + 1, b, device=device)
    positive = torch.rand(k + 1, b, device=device) + 1  # log's fast path: positive inputs
    out = torch.empty(k + 1, b, device=device)
    gflop = 2 * b * k * d / 1e9
    return {
        "gather K bank rows": (lambda: torch.index_select(bank, 0, negatives, out=rows), 0.0),
        "scores: rows (K,d) x anchors^T": (lambda: torch.mm(rows, anchor.t(), out=scores_t[1:]), gflop),
        "scores: anchors x rows^T (other orientation)": (lambda: torch.mm(anchor, rows.t()), gflop),
        "gradient: g^T (B,K) x rows": (lambda: torch.mm(grad_t[1:].t(), rows), gflop),
        "exp over (B, K+1)": (lambda: torch.exp(scores_t, out=out), 0.0),
        "log over (B, K+1)": (lambda: torch.log(positive, out=out), 0.0),
        "one cheap pass (mul_) over (B, K+1)": (lambda: out.mul_(1.0), 0.0),
        "two fresh (B, K+1) tensors alive at once, filled": (lambda: fresh_pair(k + 1, b, device), 0.0),
    }


def fresh_pair(rows: int, cols: int, device: str) -> None:
    """What a step without reused buffers does: allocate temporaries while others are alive."""
    import torch

    first = torch.empty(rows, cols, device=device).fill_(1.0)
    torch.empty(rows, cols, device=device).fill_(1.0)
    del first


def build_parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, default=16384)
    p.add_argument("--feat-dim", type=int, default=128)
    p.add_argument("--n", type=int, default=54_000)
    p.add_argument("--calls", type=int, default=5, help="calls per variant per round")
    return p


FLOOR = ("gather K bank rows", "scores: rows (K,d) x anchors^T", "gradient: g^T (B,K) x rows", "exp over (B, K+1)",
         "log over (B, K+1)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.set_threads(args.threads)
    if args.quick:
        args.batch_size, args.k, args.feat_dim, args.n, args.calls = 16, 256, 32, 2000, 2
    repeats = args.repeats or (2 if args.quick else 15)
    sync = common.Sync(args.device)
    calls = kernels(args.batch_size, args.k, args.feat_dim, args.n, args.device)

    def timed(fn):
        def run() -> float:
            sync()
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            sync()
            return (time.perf_counter() - start) / args.calls

        return run

    times = common.interleave({name: timed(fn) for name, (fn, _) in calls.items()}, repeats)
    table = common.Table(
        f"CRD kernels alone: B={args.batch_size}, K={args.k}, d={args.feat_dim}, N={args.n}, "
        f"{args.threads} torch thread(s), {args.device}: median of {repeats} interleaved rounds",
        ["kernel", "ms", "GFLOP/s", "noise"],
    )
    for name, (_, gflop) in calls.items():
        ms = common.median(times[name])  # seconds
        table.add(name, f"{ms * 1e3:.3f}", f"{gflop / ms:.0f}" if gflop else "-", f"±{100 * common.spread(times[name]):.0f}%")
    floor = 2 * sum(common.median(times[name]) for name in FLOOR)
    table.add("floor of one step (2 directions x the 5 needed)", f"{floor * 1e3:.3f}", "-", "-")
    table.notes.append(common.load_text())
    table.print()
    common.report([table], append=args.append, title="kernels.py: the CRD step's floor", device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
