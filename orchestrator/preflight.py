"""Resources a trial needs, checked before anything starts (also in ``--dry-run``).

Without ``--address`` the local machine is the cluster: a trial's workers must fit
its CPU cores (``ray.num_cpus`` when given) and, with ``train.use_gpu``, its GPUs.
With an address the check runs against the cluster (``cluster.check_fits``).
"""

from __future__ import annotations

import os

from orchestrator import cluster
from orchestrator.config import Config, ConfigError


def check_local(cfg: Config, trial_cpu: float, in_process: bool) -> None:
    """Raise ConfigError naming the key, what a trial needs and what this machine has."""
    tr = cfg.train
    workers = tr.num_workers * tr.cpus_per_worker
    if cfg.ray.num_cpus:  # the local Ray gets exactly this many logical CPUs
        need, have = trial_cpu, f"ray.num_cpus={cfg.ray.num_cpus}"
        fits = trial_cpu <= cfg.ray.num_cpus
    else:  # the local Ray gets max(cores, trial_cpu) CPUs: only the workers compute
        need, have = workers, f"{os.cpu_count() or 1} CPU core(s) on this machine"
        fits = workers <= (os.cpu_count() or 1)
    if not fits:
        raise ConfigError(
            "train.num_workers", tr.num_workers,
            f"a count whose trial fits {have}; one trial needs {need:g} CPUs ({tr.num_workers} worker(s) x "
            f"{tr.cpus_per_worker} CPU{'' if need == workers else ' + 1 for the trial process'}). Lower "
            "train.num_workers or train.cpus_per_worker, or run on a cluster with --address",
        )
    if tr.use_gpu:
        import torch

        gpus = torch.cuda.device_count()
        if gpus < tr.num_workers:
            raise ConfigError(
                "train.use_gpu", True,
                f"false here: a trial needs {tr.num_workers} GPU(s), this machine has {gpus}; "
                "or run on a GPU cluster with --address",
            )


def check_cluster(address: str, trial: dict[str, float], cfg: Config) -> None:
    """Connect to ``address`` (or use the Ray already up) and raise ClusterError if a trial can never run there."""
    import ray

    started = cluster.connect(address)
    try:
        cluster.check_fits(trial, cfg.train.cpus_per_worker, cfg.train.use_gpu, cfg.train.num_workers)
    finally:
        if started:
            ray.shutdown()
