"""The sweep: ``python -m orchestrator.sweep`` (:mod:`.cli`) and what runs it, one job per module.

- :mod:`.cli`             parse, resolve the config, validate, ``--dry-run``; hands a plan to :mod:`.run`
- :mod:`.run`             SweepRunner: Ray, the teacher, the parent MLflow run, the steps below in order
- :mod:`.folder`          the sweep folder: created or found for ``--resume``, its state file
- :mod:`.teacher_outputs` which teacher outputs the space's objectives read, precomputed once
- :mod:`.search_stage`    the Tune search (Optuna TPE, paper-default points first, ASHA)
- :mod:`.confirm_stage`   the confirmation (or baseline) stage: candidates x seeds as nested stage runs
- :mod:`.tune_runs`       Tune plumbing shared by the search and the stages (resources, run config, job grids)
- :mod:`.progress`        the per-epoch progress lines
- :mod:`.register`        the chosen student: copied, logged, registered, version-tagged, exported
- :mod:`.summary`         the headline numbers (MLflow metrics, version tags) and the printed summary
"""
