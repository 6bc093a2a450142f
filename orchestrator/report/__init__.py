"""Sweep report from MLflow: leaderboard (CSV, HTML), PNG plots, cross-sweep comparison, and the numbers a
reported gain rests on (:mod:`.stats`: mean ± sd over seeds, paired t-intervals).

Reads what the sweep logs (DESIGN.md, MLflow layout): a parent run per sweep
(tag ``orchestrator.kind=sweep``) and one child run per trial (tag
``orchestrator.kind=trial``, ``mlflow.parentRunId``, ``trial_number``,
``orchestrator.outcome``; params ``sampled.<key>``; per-epoch metrics with
``step=epoch``). Works against any tracking URI (SQLite, ``mlflow server``).

Used by ``python -m orchestrator.compare`` and at the end of every sweep
(:func:`orchestrator.report.write.write_report`)::

    report = write_report(client, [parent_run_id], out_dir, log_to=parent_run_id)

Plots are drawn on plain :class:`matplotlib.figure.Figure` objects (Agg
canvas), so no pyplot state or backend is touched.
"""
