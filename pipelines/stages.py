"""Pipeline stages in MLflow, their reuse on rerun, and progress lines for Ray tasks.

A stage is one nested MLflow run (``orchestrator.kind=stage``, tag ``stage=<name>``)
under the pipeline's parent run (``orchestrator.kind=pipeline``). Its inputs are
hashed (``stage_hash``, stored as tag ``orchestrator.stage_hash``) and its result
written to ``<output_dir>/stages/<name>-<hash>.json``. On a rerun a stage whose
hash matches a FINISHED stage run and whose result file (and the files that
result names) still exist is *reused*: a new stage run is opened under the new
parent, tagged ``orchestrator.reused_from=<old run id>``, given the old metrics,
and closed FINISHED, without redoing the work. A stage's own child runs (one
student seed: ``orchestrator.kind=student``) are reused the same way, by kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.infra import tracking
from orchestrator.infra.atomic_files import write_json_atomic

STAGE_HASH = "orchestrator.stage_hash"
REUSED_FROM = "orchestrator.reused_from"


def stage_hash(payload: Any) -> str:
    """A short, stable hash of a JSON-able payload (the stage's inputs)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fingerprint(source: str) -> str:
    """Identity of a teacher: size and modification time of a checkpoint file (a URI stands for itself)."""
    path = Path(source)
    if ":/" in source or not path.is_file():
        return source
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def files_exist(paths: Iterable[str | None]) -> bool:
    return all(Path(p).is_file() for p in paths if p)


def numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Stages:
    """Opens, closes and reuses the stage runs of one pipeline run."""

    def __init__(self, client, experiment_id: str, parent_id: str, output_dir: Path):
        self.client, self.experiment_id, self.parent_id = client, experiment_id, parent_id
        self.folder = Path(output_dir) / "stages"
        self.reused: list[str] = []
        self.ran: list[str] = []

    def result_path(self, stage: str, digest: str) -> Path:
        return self.folder / f"{stage}-{digest}.json"

    # ------------------------------------------------------------------ reuse

    def lookup(self, stage: str, digest: str, still_valid: Callable[[dict], bool] | None = None,
               kind: str = "stage") -> dict | None:
        """The saved result of a FINISHED run of ``stage`` with this hash, if it is still valid
        (``still_valid(result)``: e.g. the files it names exist and are unchanged). ``kind``: the runs'
        ``orchestrator.kind`` (``student``: one seed's run inside a student stage)."""
        path = self.result_path(stage, digest)
        if not path.is_file():
            return None
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{tracking.KIND}` = '{kind}' and tags.stage = '{stage}' and "
                f"tags.`{STAGE_HASH}` = '{digest}' and attributes.status = 'FINISHED'"
            ),
            max_results=50,
        )
        if not runs:
            return None
        result = json.loads(path.read_text())
        if still_valid is not None and not still_valid(result):
            return None
        original = [r for r in runs if REUSED_FROM not in r.data.tags] or runs  # the run that did the work
        result["_run_id"] = original[0].info.run_id
        return result

    def reuse(self, stage: str, digest: str, result: dict, metrics: dict | None = None, kind: str = "stage",
              parent_id: str | None = None, log_files: Callable[[str], None] | None = None) -> str:
        """Record the reused stage under this pipeline run (or ``parent_id``; FINISHED at once, after
        ``log_files(run_id)`` logged what it keeps); returns its run id."""
        print(f"reusing stage {stage} (hash {digest}, from run {result.get('_run_id')})", flush=True)
        run_id = tracking.start_run(
            self.client, self.experiment_id, stage, kind, parent_id=parent_id or self.parent_id,
            tags={"stage": stage, STAGE_HASH: digest, REUSED_FROM: str(result.get("_run_id"))},
        )
        with tracking.run_scope(self.client, run_id):
            if metrics:
                tracking.log_metrics(self.client, run_id, numbers(metrics), step=0)
            if log_files is not None:
                log_files(run_id)
        self.reused.append(stage)
        return run_id

    # ------------------------------------------------------------------ fresh runs

    def begin(self, stage: str, digest: str, params: dict | None = None, kind: str = "stage",
              parent_id: str | None = None) -> str:
        """Open the run of ``stage`` (under this pipeline run, or ``parent_id``); close it with :meth:`scope`
        (or the caller's run scope)."""
        print(f"stage {stage}: running (hash {digest})", flush=True)
        return tracking.start_run(
            self.client, self.experiment_id, stage, kind, parent_id=parent_id or self.parent_id,
            tags={"stage": stage, STAGE_HASH: digest}, params=params,
        )

    @contextlib.contextmanager
    def run(self, stage: str, digest: str, params: dict | None = None) -> Iterator[str]:
        """A fresh run of ``stage`` inside its scope (FINISHED, FAILED or KILLED on leaving)."""
        with self.scope(self.begin(stage, digest, params)) as run_id:
            yield run_id

    def scope(self, run_id: str):
        return tracking.run_scope(self.client, run_id)

    def fail(self, run_id: str, exc: BaseException) -> None:
        """Close ``run_id`` as its scope closes a run that raised ``exc`` (a task's failure, seen by the driver)."""
        with contextlib.suppress(type(exc)), self.scope(run_id):
            raise exc

    def complete(self, stage: str, digest: str, run_id: str, result: dict, metrics: dict | None = None) -> dict:
        """Save the result file (then log it) and log metrics to the stage's run (its scope closes it)."""
        result = {k: v for k, v in result.items() if k != "_run_id"}
        path = self.result_path(stage, digest)
        write_json_atomic(path, result)
        if metrics:
            tracking.log_metrics(self.client, run_id, numbers(metrics), step=0)
        tracking.log_file(self.client, run_id, path)
        self.ran.append(stage)
        return {**result, "_run_id": run_id}


# ---------------------------------------------------------------- progress


def wait_with_progress(
    pending: dict,
    client,
    runs: dict[str, str],
    epochs: dict[str, int],
    *,
    queued: list[tuple[str, Callable[[], Any]]] = (),
    at_once: int | None = None,
    poll_s: float = 5.0,
    metric: str = "val/acc1",
) -> dict[str, Any]:
    """``ray.get`` every task of ``pending`` (ObjectRef -> label), printing each new epoch of each label's run.
    ``queued``: (label, submit) pairs, each ``submit()`` starting one more task (returning its ObjectRef), called
    in order whenever fewer than ``at_once`` tasks run (None: all at once); started tasks are added to ``pending``,
    so that the caller's :func:`cancel` of it reaches them.

    Ray tasks run with ``log_to_driver=False``; their epochs reach the driver through
    the MLflow runs they log to (which also works against a remote tracking server).
    Returns label -> result, or label -> the exception the task raised.
    """
    import ray

    seen = {label: 0 for label in runs}
    results: dict[str, Any] = {}
    left = dict(pending)
    waiting = list(queued)
    start = time.perf_counter()

    def fill() -> None:
        while waiting and (at_once is None or len(left) < at_once):
            label, submit = waiting.pop(0)
            ref = submit()
            pending[ref] = left[ref] = label

    def report() -> None:
        for label, run_id in runs.items():
            history = client.get_metric_history(run_id, metric)
            for m in sorted(history, key=lambda m: m.step):
                if m.step > seen[label]:
                    seen[label] = m.step
                    clock = int(time.perf_counter() - start)
                    print(f"  {clock // 60:3d}m{clock % 60:02d}s  {label:<28} epoch {m.step}/{epochs.get(label, '?')}  "
                          f"{metric} {m.value:.4f}", flush=True)

    fill()
    while left:
        done, _ = ray.wait(list(left), num_returns=1, timeout=poll_s)
        for ref in done:
            label = left.pop(ref)
            try:
                results[label] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - reported per task by the caller
                results[label] = exc
        fill()
        report()
    return results


def cpu_share(num_tasks: int, at_once: int | None = None) -> float:
    """Logical CPUs per task so that ``num_tasks`` one-thread tasks (at most ``at_once`` of them: the
    tasks :func:`wait_with_progress` runs at once) start together.

    On a machine with fewer CPUs than tasks (3 teachers on 2 cores) the tasks then share
    the cores instead of queueing: the total work is the same, but the longest task no
    longer waits for a free slot, which shortens the stage (e.g. 3 teachers on 2 cores:
    ~4.75 instead of 6 teacher-epoch units). With enough CPUs every task gets one.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    together = max(min(num_tasks, at_once or num_tasks), 1)
    share = math.floor(100 * total / together) / 100  # round down: 3 x 0.67 > 2 would leave one waiting
    return max(0.05, min(1.0, share))


def cancel(pending: Iterable) -> None:
    import ray

    for ref in pending:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
