"""Where each stage reads and writes; the same names appear in dvc.yaml."""

from pathlib import Path

PREPARED = Path("data/prepared")
TRAIN_CSV = PREPARED / "train.csv"
TEST_CSV = PREPARED / "test.csv"

OUTPUTS = Path("outputs")
# Every study tune has run, kept across runs and experiments (not a DVC output: DVC deletes
# or restores outputs); STUDY_DB, the stage's output, is a copy of this run's trials.
STUDY_STORE = OUTPUTS / "optuna_store.db"
STUDY_DB = OUTPUTS / "optuna_study.db"
TUNE_SUMMARY = OUTPUTS / "tune_summary.json"
MODEL = OUTPUTS / "model.ubj"
MODEL_INFO = OUTPUTS / "model_info.json"
RESULTS = OUTPUTS / "results.json"
METRICS = OUTPUTS / "metrics.json"
HISTORY_PNG = OUTPUTS / "optimization_history.png"
IMPORTANCE_PNG = OUTPUTS / "param_importance.png"
PLOT_DATA = OUTPUTS / "plots"
HISTORY_CSV = PLOT_DATA / "optimization_history.csv"
PREDICTIONS_CSV = PLOT_DATA / "test_predictions.csv"
IMPORTANCE_CSV = PLOT_DATA / "param_importance.csv"

MLFLOW_DB = OUTPUTS / "mlflow.db"
MLFLOW_ARTIFACTS = OUTPUTS / "mlruns"
