"""Where runs are recorded: MLflow (its store, the study run, the served model)."""
