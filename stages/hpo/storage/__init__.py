"""Where studies and runs are kept: the Optuna study store, the MLflow store, their settings."""
