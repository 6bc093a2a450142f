"""A teacher model from its checkpoint: a file of this tool's format, a plain state_dict, TorchScript or an MLflow
URI, imported, checked against the data and loaded frozen (:mod:`.checkpoint`). Imports no training code: a
teacher trained here is trained by the run core (:mod:`orchestrator.run.alone`)."""
