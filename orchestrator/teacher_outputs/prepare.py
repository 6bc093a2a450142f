"""The teacher outputs a sweep (or a pipeline stage) precomputes once: the fields every objective it can choose reads.

Without augmentation: on the un-augmented train split (cached by content across sweeps). With
``data.augment``: per augmented view, for every seed trials train with (:mod:`.choice`),
built before the first trial by one Ray task per teacher (on a GPU when the cluster has one), or in
this process when trials run in-process on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from orchestrator.config.schema import Config, from_dict, in_process, to_dict
from orchestrator.data import DataBundle, build_data
from orchestrator.distill import registry
from orchestrator.infra import storage
from orchestrator.teacher_outputs.cache import RUNS_LIVE, ensure_views, teacher_outputs_file
from orchestrator.teacher_outputs.choice import TeacherInputs, choose, views_bytes
from orchestrator.teacher_outputs.views import TeacherViews
from orchestrator.teacher.checkpoint import load_teacher


def outputs_for(teachers: list[str], cfg: Config, configs: list[Config], max_epochs: int, data: DataBundle,
                tracking_uri: str | None = None, inputs: str = "") -> list[str]:
    """Precompute, once, what every objective of ``configs`` (every config the space can draw) reads from
    ``teachers``, views for ``max_epochs`` epochs (the longest trial's): output files (one
    per teacher) or view cache folders (one per teacher and seed); [] when the teachers run live. ``inputs``:
    the sweep's storage URI for trial inputs (:mod:`orchestrator.infra.storage`), where Ray tasks put the views.

    When every field and feature stage they read would exceed ``teacher.cache_max_gb`` on the un-augmented
    split, only the vector fields (logits, embedding) are cached: trials whose objective reads no feature map
    use them, the others run the teacher live (each trial checks, :meth:`CachedTeacherOutputs.covers`)."""
    choice = choose(cfg, configs)
    if choice.kind == "cached":
        vectors_next = bool(choice.needs.stages and choice.needs.fields)
        too_big = "trying the vector fields alone" if vectors_next else RUNS_LIVE
        paths = [teacher_outputs_file(t, cfg, data, choice.needs, too_big) for t in teachers]
        if None in paths and vectors_next:  # feature maps too big: vectors only
            vectors = registry.Needs(choice.needs.fields)
            paths = [teacher_outputs_file(t, cfg, data, vectors) for t in teachers]
            if None not in paths:
                live = sorted({c.distill.method for c in configs if registry.teacher_needs(c.distill).stages})
                print(f"cached the teacher's {', '.join(sorted(vectors.fields))} only: trials of {', '.join(live)} "
                      "read feature maps and run the teacher live", flush=True)
        return [] if None in paths else [str(p) for p in paths]
    if choice.kind == "views":  # as many epochs as the longest trial trains
        longest = replace(cfg, train=replace(cfg.train, epochs=max_epochs))
        return shared_views(teachers, longest, data, choice, tracking_uri, inputs=inputs)
    if choice.kind == "live" and cfg.data.augment:
        print(f"teacher outputs: live, on every batch of every trial ({choice.reason})", flush=True)
    return []


def shared_views(teachers: list[str], cfg: Config, data: DataBundle, choice: TeacherInputs,
                 tracking_uri: str | None, readers: str = "every trial", inputs: str = "") -> list[str]:
    """Build (or find) the view caches of every teacher for ``choice.seeds``; print what they hold and who reads
    them (``readers``: the sweep's trials, or the ensemble pipeline's distillation stages). With ``inputs`` (a
    storage URI) a Ray task, on whichever node, gets the teacher from there and puts its views there."""
    import ray

    gpu = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1
    start = time.perf_counter()
    if gpu or not in_process(cfg):
        cpus = max(1, int(cfg.train.cpus_per_worker * cfg.train.num_workers))
        task = ray.remote(num_cpus=0 if gpu else cpus, num_gpus=1 if gpu else 0)(build_teacher_views)
        where = f"{len(teachers)} Ray task(s), one per teacher, on {'a GPU' if gpu else f'{cpus} CPU(s)'}"
        sources = storage.publish(teachers, inputs) if inputs else teachers
        results = ray.get([task.remote(t, to_dict(cfg), choice, tracking_uri, gpu, cpus, inputs=inputs)
                           for t in sources])
    else:
        where = "in this process (one CPU worker per run)"
        results = [build_teacher_views(t, cfg, choice, None, False, None, data) for t in teachers]
    seconds = time.perf_counter() - start
    if any(r is None for r in results):
        return []
    folders = [f for folders, _, _ in results for f in folders]
    built = sum(b for _, b, _ in results)
    per_epoch = results[0][2]
    total = sum(b for _, _, b in results) * cfg.train.epochs * len(choice.seeds)
    what = f"uploaded to {inputs}" if storage.is_uri(folders[0]) else TeacherViews(folders[0]).meta.stored()
    how = f"built {built} epoch(s) of views in {seconds:.1f} s, {where}" if built else "found in the cache"
    print(f"teacher outputs: shared view cache ({what}), seeds {list(choice.seeds)} x {cfg.train.epochs} epochs x "
          f"{len(data.train)} views, {per_epoch / 2**20:.2f} MiB per epoch per seed per teacher, "
          f"{total / 2**20:.1f} MiB in all; {how}; {readers} reads it -> {folders[0].rsplit('-seed', 1)[0]}-seed*",
          flush=True)
    return folders


def build_teacher_views(teacher: str, cfg, choice: TeacherInputs, tracking_uri: str | None, gpu: bool,
                        threads: int | None, data: DataBundle | None = None,
                        inputs: str = "") -> tuple[list[str], int, int] | None:
    """One teacher's view caches for ``choice.seeds``: (folders, epochs built now, bytes per epoch), or None when
    they would exceed ``teacher.cache_max_gb`` (the teacher then runs live). Runs in a Ray task or in process;
    with ``inputs`` (a storage URI) the teacher is read from there and the folders returned are their uploads."""
    cfg = from_dict(cfg) if isinstance(cfg, dict) else cfg
    if threads:
        torch.set_num_threads(threads)
    if tracking_uri:  # runs:/ and models:/ teachers resolve against the sweep's store
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    data = data or build_data(cfg.data, cfg.seed)
    model = load_teacher(storage.fetch_under([teacher], inputs)[0], data.num_classes, data.in_channels, data.image_size)
    per_epoch = views_bytes(cfg, choice, len(data.train), data.num_classes, int(model.embedding_dim))
    total = per_epoch * cfg.train.epochs * len(choice.seeds)
    if total > cfg.teacher.cache_max_gb * 2**30:
        print(f"teacher views would take {total / 2**30:.1f} GiB (> teacher.cache_max_gb="
              f"{cfg.teacher.cache_max_gb:g}): {RUNS_LIVE}", flush=True)
        return None
    folders, built = ensure_views(model, cfg, data, choice.needs, choice.seeds, device="cuda" if gpu else "cpu")
    folders = [str(f) for f in folders]
    return (storage.publish(folders, inputs) if inputs else folders), built, per_epoch
