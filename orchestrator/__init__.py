"""Distil teachers into a small student, tuned and confirmed: entry points here, one package per job below.

- ``python -m orchestrator.sweep`` (:mod:`.sweep`), ``orchestrator.compare``, ``orchestrator.export``,
  ``orchestrator.predict``: the commands;
- :mod:`.run` the run core (one Ray Train run down to a batch step), :mod:`.teacher` and :mod:`.teacher_outputs`
  the teacher side, :mod:`.config`, :mod:`.infra` (Ray, MLflow, storage, files), :mod:`.deploy` (ONNX, cost),
  :mod:`.report`; plain PyTorch in :mod:`.distill`, :mod:`.models` and :mod:`.data`.
"""
