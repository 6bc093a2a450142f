"""A teacher model: imported from a checkpoint (file, TorchScript, MLflow URI; :mod:`.checkpoint`, no training code),
or trained once and cached (:mod:`.training`)."""
