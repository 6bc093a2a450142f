"""MLflow: where runs go, the sweep parent run, trial child runs, artifacts, registry.

Layout (DESIGN.md): experiment = sweep name; tag ``orchestrator.kind`` is
``sweep`` (parent), ``trial`` (nested child, plus ``trial_id``), ``teacher``,
``pipeline`` or ``stage``. Metrics are logged per epoch with ``step=epoch``.
Children are created and closed through ``MlflowClient`` with an explicit run
id, so any process (a Tune trial, a Ray Train worker) can write to them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

KIND = "orchestrator.kind"
OUTCOME = "orchestrator.outcome"
ERROR = "orchestrator.error"
PARENT = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000
CHECKPOINT_ARTIFACT = "checkpoint.pt"  # a model logged by log_checkpoint: <name>/checkpoint.pt (tensors only)


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be reached or an experiment/run does not exist."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if "://" not in uri:  # a bare folder or file path
        return f"sqlite:///{Path(uri).resolve() / 'mlflow.db'}" if Path(uri).is_dir() else uri
    return uri


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a store on this machine's disk (a SQLite file, a file store path), not a server
    (``http(s)://``, ``databricks``)."""
    return uri != "databricks" and urlparse(uri).scheme in ("sqlite", "file", "")


def ui_command(uri: str) -> str:
    """The command a user runs to browse the runs of ``uri``."""
    if is_local(uri):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser"


@contextlib.contextmanager
def _fail_fast_http() -> Iterator[None]:
    """No long retry loop while probing a server (MLflow retries for minutes by default)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_connection(uri: str) -> MlflowClient:
    """A client for ``uri``; raise TrackingError with one clear message if it cannot be reached."""
    client = MlflowClient(tracking_uri=uri)
    with _fail_fast_http():
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - every failure means the same to the user
            raise TrackingError(
                f"cannot reach the MLflow tracking store at {uri} ({type(exc).__name__}: {str(exc)[:200]}); "
                "start the server or pass another --tracking-uri"
            ) from exc
    return client


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Id of experiment ``name``, created (with an absolute artifact root for local stores) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if is_local(uri):
        location = (Path.cwd() / "mlruns").resolve().as_uri()
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    kind: str,
    *,
    parent_id: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict | None = None,
) -> str:
    """Create a RUNNING run with the kind tag (nested under ``parent_id`` if given); returns its id."""
    all_tags = {KIND: kind, **(tags or {})}
    if parent_id:
        all_tags[PARENT] = parent_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    if params:
        log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(str(k), str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


RETRY_S = float(os.environ.get("DISTILL_TRACKING_RETRY_S", 300))  # how long a run's end waits for the server
_PENDING: dict[str, list[list[Metric]]] = {}  # run id -> metric batches not sent yet (server unreachable), in order


def unreachable(exc: BaseException) -> bool:
    """``exc`` says the tracking server could not be reached (refused, timed out, or a 5xx while it restarts)."""
    import requests

    text = str(exc)
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)) or (
        "API request to" in text and ("failed with exception" in text or "failed with error code 5" in text)
    )


def _send_pending(client: MlflowClient, run_id: str) -> None:
    """Send ``run_id``'s buffered batches in order, one try each; stop at the first failure (kept)."""
    batches = _PENDING.get(run_id, [])
    with _fail_fast_http():
        while batches:
            client.log_batch(run_id, metrics=batches[0])
            batches.pop(0)
    _PENDING.pop(run_id, None)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log one step's numbers. If the tracking server cannot be reached they are buffered in this process
    (in order) and sent with the next call or by :func:`flush_metrics`: training never waits for the server."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    first = run_id not in _PENDING
    _PENDING.setdefault(run_id, []).append(items)
    try:
        _send_pending(client, run_id)
    except Exception as exc:  # noqa: BLE001 - only an unreachable server is buffered
        if not unreachable(exc):
            raise
        if first:
            print(f"warning: MLflow tracking server unreachable ({str(exc)[:160]}); metrics of run {run_id} are "
                  "buffered and sent when it is back", file=sys.stderr, flush=True)


def flush_metrics(client: MlflowClient, run_id: str, wait_s: float | None = None) -> None:
    """Send ``run_id``'s buffered metrics, retrying for up to ``wait_s`` (default ``RETRY_S``,
    ``$DISTILL_TRACKING_RETRY_S``); TrackingError (how many steps are lost) if the server stays away."""
    deadline = time.monotonic() + (RETRY_S if wait_s is None else wait_s)
    while True:
        try:
            _send_pending(client, run_id)
            return
        except Exception as exc:  # noqa: BLE001
            if not unreachable(exc):
                raise
            if time.monotonic() >= deadline:
                lost = sorted({m.step for batch in _PENDING.pop(run_id, []) for m in batch})
                raise TrackingError(
                    f"the MLflow tracking server {client.tracking_uri} stayed unreachable for "
                    f"{RETRY_S if wait_s is None else wait_s:.0f} s; run {run_id} could not log steps {lost} "
                    f"({str(exc)[:160]})"
                ) from exc
            time.sleep(2)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def tag_model_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
    """Close a run unless it is already closed (FINISHED, FAILED or KILLED), with ``tags`` set first."""
    if client.get_run(run_id).info.status == "RUNNING":
        if tags:
            set_tags(client, run_id, tags)
        client.set_terminated(run_id, status)


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """RUNNING again (a resumed trial, stage or sweep), without the outcome its last close recorded."""
    tags = client.get_run(run_id).data.tags
    client.update_run(run_id, status="RUNNING")
    for key in (OUTCOME, ERROR):
        if key in tags:
            client.delete_tag(run_id, key)


CHILD_OUTCOME = {"FINISHED": "early_stopped", "KILLED": "interrupted", "FAILED": "failed"}
OUTCOME_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


@contextlib.contextmanager
def run_scope(
    client: MlflowClient,
    run_id: str,
    *,
    close_children: bool = False,
    expected_epochs: int | None = None,
    on_finish: Callable[[], None] | None = None,
) -> Iterator[str]:
    """The lifecycle of run ``run_id`` (opened by :func:`start_run`, or reopened): on leaving, a run still
    RUNNING ends FINISHED (tag outcome ``completed``), FAILED on an exception (outcome ``failed``, tag
    ``orchestrator.error``) or KILLED on KeyboardInterrupt, which SIGTERM becomes (outcome ``interrupted``).
    A run stopped by Tune (SystemExit, e.g. ASHA) ends FINISHED: ``completed`` if it logged
    ``expected_epochs`` epochs, else ``early_stopped``. ``close_children``: children still RUNNING are
    closed first with the same status (outcome early_stopped / interrupted / failed). ``on_finish``: called
    before a successful end (after the children are closed); an error it raises fails the run. Nothing else
    ends a run this tool opened: models and artifacts are logged to it by id (:func:`log_model`), so its end
    time is after its last artifact and an error after registration still ends it FAILED."""
    status, tags = "FAILED", {}
    try:
        yield run_id
        flush_metrics(client, run_id)  # before the children close and on_finish reads the run
        if close_children:
            _close_children_of(client, run_id, "FINISHED")
        if on_finish is not None:
            on_finish()
        status, tags = "FINISHED", {OUTCOME: "completed"}
    except SystemExit:
        epochs = max((m.value for m in client.get_metric_history(run_id, "epoch")), default=0)
        done = expected_epochs is not None and epochs >= expected_epochs
        status, tags = "FINISHED", {OUTCOME: "completed" if done else "early_stopped"}
        raise
    except KeyboardInterrupt:
        status, tags = "KILLED", {OUTCOME: "interrupted"}
        raise
    except BaseException as exc:
        tags = {OUTCOME: "failed", ERROR: f"{type(exc).__name__}: {exc}"[:5000]}
        raise
    finally:
        flush_metrics(client, run_id)  # what an unreachable server could not take yet; raises if it stays away
        try:
            if close_children:
                _close_children_of(client, run_id, status)
        finally:
            end_run(client, run_id, status, tags)


def _close_children_of(client: MlflowClient, run_id: str, status: str) -> None:
    experiment_id = client.get_run(run_id).info.experiment_id
    close_open_children(client, experiment_id, run_id, status, CHILD_OUTCOME[status])


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str, tags: dict[str, str] | None = None,
               status: str | None = None) -> list:
    """The child runs of ``parent_id``; ``tags``: only those with these tag values, ``status``: only those in
    this state (``RUNNING``), both filtered by the store (a lookup of one child then reads one run, and the
    open children of a finished sweep none, not all of a 1,000-trial sweep's with their params and metrics)."""
    where = " and ".join([f"tags.`{PARENT}` = '{parent_id}'",
                          *(f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()),
                          *([f"attributes.status = '{status}'"] if status else [])])
    return client.search_runs([experiment_id], filter_string=where, max_results=10000)


def close_open_children(client: MlflowClient, experiment_id: str, parent_id: str, status: str, outcome: str) -> int:
    """End every child of ``parent_id`` still RUNNING (trials Tune stopped or killed) with ``status`` and
    ``outcome``; a child whose own scope had recorded its outcome (the tag is written before the status) but
    whose process died before the status (Tune ends a stopped trial's actor while it closes its run) ends
    with that outcome's status. Returns how many."""
    closed = 0
    for run in child_runs(client, experiment_id, parent_id, status=RunStatus.to_string(RunStatus.RUNNING)):
        decided = OUTCOME_STATUS.get(run.data.tags.get(OUTCOME, ""))
        if decided is None:
            set_tags(client, run.info.run_id, {OUTCOME: outcome})
        client.set_terminated(run.info.run_id, decided or status)
        closed += 1
    return closed


def sweep_run_of(client: MlflowClient, experiment_id: str, folder: str) -> str | None:
    """The first sweep run of ``experiment_id`` whose ``storage`` tag is ``folder`` (a sweep folder whose state
    file lost its parent's id, as an earlier version wrote it after the confirmation stage started), or None."""
    if "'" in folder:  # not expressible in a filter string
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KIND}` = 'sweep' and tags.storage = '{folder}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def close_runs_left_open(client: MlflowClient, experiment_id: str, parent_id: str) -> int:
    """On resume: every run under ``parent_id`` (its children and theirs, e.g. a stage's jobs) still RUNNING
    was left open by a driver that died (or by a tracking server that went away); end it KILLED, outcome
    ``interrupted``. A trial or stage that the resumed sweep continues reopens its own run. Returns how many."""
    closed = 0
    for run in child_runs(client, experiment_id, parent_id):
        closed += close_runs_left_open(client, experiment_id, run.info.run_id)
    return closed + close_open_children(client, experiment_id, parent_id, "KILLED", CHILD_OUTCOME["KILLED"])


def finish_ended_trials(client: MlflowClient, experiment_id: str, parent_id: str, ended: set[str],
                        expected_epochs: int) -> int:
    """After a resumed search: the runs of trials Tune has as ended (completed, or stopped by ASHA) that the
    resume closed KILLED (outcome ``interrupted``) because the killed driver's trial had not closed them yet
    end FINISHED, ``completed`` if they logged ``expected_epochs`` epochs, else ``early_stopped``: Tune does not
    run an ended trial again, so nothing else would. Returns how many."""
    finished = 0
    for run in child_runs(client, experiment_id, parent_id):
        tags = run.data.tags
        if tags.get("trial_id") in ended and run.info.status == "KILLED" and tags.get(OUTCOME) == "interrupted":
            epochs = max((m.value for m in client.get_metric_history(run.info.run_id, "epoch")), default=0)
            own = int(run.data.params.get("train.epochs", expected_epochs))  # its own when the space samples them
            set_tags(client, run.info.run_id, {OUTCOME: "completed" if epochs >= own else "early_stopped"})
            client.set_terminated(run.info.run_id, "FINISHED")
            finished += 1
    return finished


def log_text(client: MlflowClient, run_id: str, text: str, filename: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_text(text)
        client.log_artifact(run_id, str(path))


def log_file(client: MlflowClient, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client.log_artifact(run_id, str(path), artifact_path)


def pip_requirements() -> list[str]:
    """Explicit requirements for logged models (skips MLflow's slow inference of them)."""
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]


def log_checkpoint(client: MlflowClient, run_id: str, path: str | Path, name: str) -> str:
    """Log this tool's checkpoint file ``path`` (tensors only) as ``<name>/checkpoint.pt`` of run ``run_id``;
    returns its URI ``runs:/<run_id>/<name>``, which ``teachers.load_teacher`` reads without unpickling code."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / CHECKPOINT_ARTIFACT
        shutil.copyfile(path, target)
        client.log_artifact(run_id, str(target), name)
    return f"runs:/{run_id}/{name}"


def log_model(run_id: str, model, name: str, registered_model: str | None, *, example,
              metadata: dict[str, str] | None = None) -> str | None:
    """Log ``model`` under run ``run_id`` as ONNX through ``mlflow.onnx`` (images ``example`` (B, C, H, W) ->
    logits, with that input example and its signature); register it if a name is given. It loads with
    ``mlflow.pyfunc.load_model`` and predicts with only mlflow and onnxruntime installed. Returns the
    registered version number (as a string) or None. ``metadata``: ONNX metadata_props of the logged model (the
    preprocessing and labels, :func:`orchestrator.export.metadata`). (Teachers and unregistered students are logged
    with :func:`log_checkpoint`: no pickled module is ever logged.) The run is addressed by its id, never made the
    active run: it stays RUNNING, and only :func:`run_scope` ends it.
    """
    info = _log_onnx(run_id, model.cpu().eval(), name, registered_model, example, metadata)
    version = getattr(info, "registered_model_version", None)
    return None if version is None else str(version)


def _log_onnx(run_id: str, model, name: str, registered_model: str | None, example,
              metadata: dict[str, str] | None = None):
    import mlflow.onnx
    import onnx
    import onnxruntime

    from orchestrator.deploy.convert import to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model, example, Path(tmp) / "model.onnx", metadata)
        onnx_model = onnx.load(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"images": example[:2].numpy()})[0]
    run = mlflow.MlflowClient().get_run(run_id)  # the logged model goes to the run's experiment (no active run)
    logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, experiment_id=run.info.experiment_id,
                                            params=dict(run.data.params))
    return mlflow.onnx.log_model(
        onnx_model,
        name=name,
        input_example=example[:2].numpy(),
        signature=mlflow.models.infer_signature(example[:2].numpy(), {"logits": logits}),
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        registered_model_name=registered_model,
        run_id=run_id,  # passed through to Model.log: no mlflow.start_run, so the run is not ended here
        model_id=logged.model_id,  # finalized READY (or FAILED) by log_model
    )
