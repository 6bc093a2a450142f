"""A Tune driver for tests/test_driver_kill.py: the sweep's Tune setup (JournalSearch over an Optuna journal,
experiment state saved before a trial starts) around a trivial trainable.

    python tune_driver.py ROOT fresh|resume RAY_TEMP_DIR

Each trial appends ``<trial id> <trial folder>`` to ROOT/starts.log when its function starts; trial 2 then
creates ROOT/paused and sleeps (once), so that the test can SIGKILL the driver while a started trial is
not yet in any state Tune saved on its own (it saves at trial checkpoints and every >= 10 s).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402

from orchestrator.infra.ray_compat import JournalSearch, save_state_before_trials_start  # noqa: E402
from orchestrator.sweep.folder import optuna_storage  # noqa: E402

ROOT, MODE, RAY_TEMP = sys.argv[1], sys.argv[2], sys.argv[3]  # Ray's socket paths must stay short
FOLDER = os.path.join(ROOT, "runs", "exp")
ITERATIONS = 2


def trainable(config):
    ctx = tune.get_context()
    name = os.path.basename(ctx.get_trial_dir())
    with open(os.path.join(ROOT, "starts.log"), "a") as f:
        f.write(f"{ctx.get_trial_id()} {name}\n")
    if "_2_" in name and not os.path.exists(os.path.join(ROOT, "paused")):
        open(os.path.join(ROOT, "paused"), "w").close()
        time.sleep(300)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = json.load(open(os.path.join(folder, "i.json")))
    for i in range(start + 1, ITERATIONS + 1):
        with tempfile.TemporaryDirectory() as folder:
            json.dump(i, open(os.path.join(folder, "i.json"), "w"))
            tune.report({"score": config["x"] * i}, checkpoint=tune.Checkpoint.from_directory(folder))


def space(trial):
    trial.suggest_float("x", 0.0, 1.0)


if __name__ == "__main__":
    save_state_before_trials_start()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=RAY_TEMP)
    if MODE == "resume":
        tuner = tune.Tuner.restore(FOLDER, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        os.makedirs(FOLDER)
        searcher = JournalSearch(space=space, metric="score", mode="max", study_name="exp",
                                 sampler=optuna.samplers.TPESampler(seed=0),
                                 storage=optuna_storage(Path(FOLDER), fresh=True))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=2, max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(name="exp", storage_path=os.path.dirname(FOLDER), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    results = tuner.fit()
    print("RESULTS", json.dumps(sorted(os.path.basename(r.path) for r in results)))
