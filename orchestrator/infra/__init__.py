"""What every run stands on: the Ray cluster and a trial's resources, MLflow tracking, storage, safe file reads and writes."""
