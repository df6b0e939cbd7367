"""Stage plumbing: the stage skeleton, MLflow tracking, preflight checks and parallel runs."""
