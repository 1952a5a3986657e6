"""Stage evaluate: tuned model and default-params baseline, judged once on the test split."""

import json

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from hpo import paths
from hpo.config import load_params
from hpo.errors import REBUILD, file_error, read_json, run_stage
from hpo.storage import tracking
from hpo.trial import model
from hpo.trial.data import read_split


def main() -> None:
    params = load_params()
    summary = read_json(paths.TUNE_SUMMARY)
    model_info = read_json(paths.MODEL_INFO)
    x_train, y_train = read_split(paths.TRAIN_CSV)
    x_test, y_test = read_split(paths.TEST_CSV)
    client, _ = tracking.connect()  # a bad MLFLOW_TRACKING_URI stops us before any write

    try:
        booster = model.load_model(paths.MODEL)
    except (OSError, ValueError) as exc:
        raise file_error(paths.MODEL, exc, REBUILD) from None
    predicted = model.predict(booster, x_test)
    tuned = regression_metrics(y_test, predicted)
    baseline = regression_metrics(
        y_test, model.train_baseline(params.model, x_train, y_train).predict(x_test)
    )

    quality = {
        **{f"test_{k}": v for k, v in tuned.items()},
        **{f"baseline_{k}": v for k, v in baseline.items()},
        "best_cv_mse": summary["best_cv_mse"],
        "trials": summary["n_trials"],
    }
    results = {
        "best_params": summary["best_params"],
        **quality,
        "rmse_improvement_over_baseline": 1 - tuned["rmse"] / baseline["rmse"],
        "optimization_time_seconds": summary["optimization_time_seconds"],
        "best_trial_number": summary["best_trial_number"],
        "study_name": summary["study_name"],
        "mlflow": {
            "study_run_id": summary["mlflow_parent_run_id"],
            "model_run_id": model_info["mlflow_run_id"],
            "registered_model": model_info["registered_model"],
            "registered_model_version": model_info["registered_model_version"],
        },
    }
    paths.METRICS.write_text(json.dumps(quality, indent=2) + "\n")
    paths.RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    paths.PLOT_DATA.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": y_test, "predicted": predicted}).to_csv(
        paths.PREDICTIONS_CSV, index=False
    )

    tracking.log_metrics(
        client, model_info["mlflow_run_id"], {f"test_{k}": v for k, v in tuned.items()}
    )
    print(f"test RMSE {tuned['rmse']:.4f} (baseline {baseline['rmse']:.4f}), R2 {tuned['r2']:.4f}")


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """MSE, RMSE, MAE and R2 of one set of predictions, as plain floats for JSON and MLflow."""
    mse = float(mean_squared_error(y_true, y_pred))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


if __name__ == "__main__":
    run_stage(main)
