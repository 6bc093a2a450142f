"""Scaling: the same trial with 1 and 2 Ray Train workers; on a GPU, absolute images/s of a CIFAR-size pair.

    python benchmarks/scaling.py                      # 1 vs 2 DDP workers (CPU, gloo), a few minutes
    python benchmarks/scaling.py --device cuda        # + resnet32x4 -> resnet8x4 img/s on the GPU
    python benchmarks/scaling.py --quick              # tiny sizes, CPU
    python benchmarks/scaling.py --append             # also append the tables to docs/BENCHMARKS.md

Part 1 runs the project's Ray Train trial (``orchestrator.run.launcher.launch``: ``run_worker`` in a
``TorchTrainer`` worker group, gloo, one CPU and ``--threads`` torch threads per worker, teacher
outputs precomputed as the sweep does) with 1 and then 2 workers, alternating, and reports the
training throughput (all workers together, last epoch) and the wall time of ``fit()``.

Part 2 (``--cifar-pair``, on by default with ``--device cuda``) measures one training step, as
``benchmarks/step.py`` does, for the CRD paper's CIFAR-100 shapes: teacher ``resnet32x4``,
student ``resnet8x4``, random 3x32x32 images, 100 classes, N = 50,000, batch 64, and reports
absolute images/s for the student alone, KD and CRD (K = 16384, exact and shared negatives).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


# ---------------------------------------------------------------- part 1: Ray Train workers


def trial_overrides(args) -> list[str]:
    if args.dataset == "digits":
        data = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64"]
    else:
        data = [f"data.dataset={args.dataset}", f"data.train_subset={args.train_subset}"]
    return [
        *data, "distill.method=crd_kd", f"distill.crd.nce_k={args.k}", f"distill.crd.negatives_mode={args.mode}",
        f"train.epochs={args.epochs}", "train.in_process=false", "train.cpus_per_worker=1",
        f"train.torch_threads={args.threads}",
    ]


def prepare(args, folder: Path) -> tuple[list[str], str, str]:
    """Config overrides, an (untrained) teacher checkpoint and its precomputed outputs on the train split."""
    import torch

    from orchestrator.config.schema import load_config
    from orchestrator.data import DatasetNotFoundError, build_data
    from orchestrator.teacher_outputs import compute_teacher_outputs
    from orchestrator.models.base import freeze
    from orchestrator.models import build_model
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    overrides = trial_overrides(args)
    cfg = load_config(None, overrides)
    try:
        data = build_data(cfg.data, cfg.seed)
    except DatasetNotFoundError as exc:
        print(f"{exc}; using digits instead", flush=True)
        args.dataset, args.k = "digits", min(args.k, 256)
        return prepare(args, folder)
    torch.manual_seed(0)
    teacher = freeze(build_model(cfg.model.teacher, data.num_classes, data.in_channels))
    ckpt = folder / "teacher.pt"
    save_model_checkpoint(ckpt, teacher, cfg.model.teacher, data, {})
    out = compute_teacher_outputs(teacher, data.train_eval, cfg.data.eval_batch_size)
    outputs = folder / "teacher-outputs.pt"
    torch.save({"logits": out.logits, "embedding": out.embedding}, outputs)
    return overrides, str(ckpt), str(outputs)


def fit_once(workers: int, overrides: list[str], teacher: str, outputs: str, storage: Path) -> dict:
    """One trial through the run core's launcher (as a Ray task would start it: no Tune), no retries."""
    from orchestrator.config.schema import load_config
    from orchestrator.run.launcher import launch

    cfg = load_config(None, [*overrides, f"train.num_workers={workers}", "train.max_failures=0"])
    loop_config = {"teachers": [teacher], "teacher_outputs": [outputs], "tracking_uri": None, "mlflow_run_id": None}
    t0 = time.perf_counter()
    result = launch(cfg, loop_config, name=f"scaling-{workers}w-{int(time.time() * 1000)}", storage_path=str(storage),
                    in_tune=False)
    wall = time.perf_counter() - t0
    m = result.metrics or {}
    return {"wall": wall, "img_s": m.get("throughput/train_img_s", float("nan")),
            "epoch_s": m.get("time/epoch_s", float("nan")), "acc": m.get("val/acc1", float("nan"))}


def ray_scaling(args) -> common.Table:
    import ray

    from orchestrator.infra import cluster
    folder = Path(tempfile.mkdtemp(prefix="distill-bench-scaling-"))
    os.environ.setdefault("DISTILL_RAY_TMPDIR", "/tmp/distill-ray-bench")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    overrides, teacher, outputs = prepare(args, folder)
    started = cluster.connect(None, num_cpus=max(3, os.cpu_count() or 1))
    results: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for r in range(args.repeats_ray):
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                print(f"  round {r + 1}: {workers} worker(s) ... ({common.load_text()})", flush=True)
                results[workers].append(fit_once(workers, overrides, teacher, outputs, folder / "runs"))
    finally:
        if started:
            ray.shutdown()
    med = {w: {k: common.median([x[k] for x in rs]) for k in rs[0]} for w, rs in results.items()}
    table = common.Table(
        f"The same trial with 1 and 2 Ray Train workers (gloo, 1 CPU + {args.threads} torch thread(s) each; "
        f"crd_kd K={args.k} {args.mode}, {args.dataset}"
        + (f" subset {args.train_subset}" if args.dataset != "digits" else "")
        + f", {args.epochs} epochs; median of {args.repeats_ray})",
        ["workers", "train img/s (last epoch, all workers)", "epoch s", "fit() wall s", "img/s vs 1 worker",
         "wall vs 1 worker"],
    )
    for w in (1, 2):
        table.add(w, f"{med[w]['img_s']:.0f}", f"{med[w]['epoch_s']:.2f}", f"{med[w]['wall']:.1f}",
                  common.fmt_ratio(med[w]["img_s"] / med[1]["img_s"]), common.fmt_ratio(med[w]["wall"] / med[1]["wall"]))
    table.notes.append(f"{common.load_text()} on {os.cpu_count()} cores: 2 workers need 2 free cores to scale")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return table


# ---------------------------------------------------------------- part 2: CIFAR-size pair, one step


def cifar_pair(args) -> common.Table:
    import step as step_bench

    n, batch, k = (2000, 4, 256) if args.quick else (50_000, args.cifar_batch, 16384)
    print(f"CIFAR-size pair: {args.cifar_teacher} -> {args.cifar_student}, N={n}, batch {batch}, K={k}, "
          f"device {args.device}", flush=True)
    setup = step_bench.make_setup(n, batch, args.device, args.cifar_teacher, args.cifar_student, channels=3, size=32,
                                  classes=100)
    V = step_bench.Variant
    variants = [V("ce"), V("kd", teacher="live"), V("kd", teacher="cached")]
    for teacher in ("live", "cached"):
        variants += [V("crd", k, "exact", teacher), V("crd", k, "shared", teacher)]
    variants.append(V("crd_kd", k, "exact", "live"))
    repeats = args.repeats or (1 if args.quick else 5)
    times = step_bench.measure_steps(setup, variants, batch, repeats, 1 if args.quick else 5,
                                     0.2 if args.quick else 2.0)
    table = step_bench.step_table(
        times, batch,
        f"CIFAR-size pair {args.cifar_teacher} -> {args.cifar_student}, 3x32x32 random data, 100 classes, "
        f"N={n}, batch {batch}, {args.device}: absolute img/s (median of {repeats} interleaved rounds)",
    )
    table.notes.append(common.load_text())
    return table


def build_parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda also runs the CIFAR-size pair)")
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    p.add_argument("--train-subset", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--k", type=int, default=1024, help="CRD negatives of the trial")
    p.add_argument("--mode", default="exact", choices=["exact", "shared"])
    p.add_argument("--repeats-ray", type=int, default=2, help="rounds of (1 worker, 2 workers)")
    p.add_argument("--no-ray", action="store_true", help="skip part 1 (Ray Train workers)")
    p.add_argument("--cifar-pair", action="store_true", help="run part 2 (default: only with --device cuda)")
    p.add_argument("--cifar-teacher", default="resnet32x4")
    p.add_argument("--cifar-student", default="resnet8x4")
    p.add_argument("--cifar-batch", type=int, default=64)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.set_threads(args.threads)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no GPU", file=sys.stderr)
            return 2
        args.cifar_pair = True
    if args.quick:
        args.dataset, args.epochs, args.repeats_ray = "digits", 1, 1
        args.k = min(args.k, 256)
    tables = []
    if not args.no_ray:
        table = ray_scaling(args)
        table.print()
        tables.append(table)
    if args.cifar_pair:
        table = cifar_pair(args)
        table.print()
        tables.append(table)
    common.report(tables, append=args.append, title="scaling.py", device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
