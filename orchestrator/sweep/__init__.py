"""The sweep: ``python -m orchestrator.sweep`` (:mod:`.cli`) and what runs it, one job per module.

- :mod:`.cli`             parse, resolve the config, validate, ``--dry-run``; hands a plan to :mod:`.run`
- :mod:`.run`             SweepRunner: Ray, the teacher, the parent MLflow run, the steps below in order
- :mod:`.plan`            what the sweep will do, computed and checked before anything starts
- :mod:`.folder`          the sweep folder: created or found for ``--resume``, its state file
- :mod:`.driver_copy`     with a storage URI, the folder's resume files copied there (a resume from the bucket alone)
- :mod:`.search`          the Tune search: the space, Optuna TPE (paper-default points first), ASHA / ParetoHalving
- :mod:`.trial`           one Tune trial (or confirmation job) = one Ray Train run and one MLflow child run
- :mod:`.confirm`         the confirmation: candidates x fresh seeds, the verdict, the confirmed front
- :mod:`.tune_runs`       Tune plumbing shared by the search and the stages (resources, run config, job grids)
- :mod:`.leaderboard`     Tune results -> one row per trial
- :mod:`.progress`        the per-epoch progress lines
- :mod:`.register`        the chosen student: copied, logged, registered, version-tagged, exported
- :mod:`.summary`         the headline numbers (MLflow metrics, version tags) and the printed summary
"""
