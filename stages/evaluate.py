"""Stage evaluate: the tuned model and a default-params baseline, judged once on the test split."""

import json
import logging

from hpo import paths
from hpo.config import load_params
from hpo.data import read_split
from hpo.errors import REBUILD, file_error, read_json
from hpo.figures import holdout_tables
from hpo.models import load_family
from hpo.stage import run_stage
from hpo.tasks import HEADLINE, holdout_report
from hpo.tracking import mlflow as tracking


def main() -> None:
    params = load_params()
    summary = read_json(paths.TUNE_SUMMARY)
    model_info = read_json(paths.MODEL_INFO)
    train, test = read_split(paths.TRAIN, params.data), read_split(paths.TEST, params.data)
    task, family = params.data.task, load_family(params.model.family)
    # A bad MLFLOW_TRACKING_URI stops us here, before anything is written.
    client, _ = tracking.connect(tracking.names(params.model.family, params.data.path))
    model_file = paths.MODEL / family.MODEL_FILE
    try:
        model = family.load(model_file)
    except (OSError, ValueError) as exc:
        raise file_error(model_file, exc, REBUILD) from None
    predicted = family.predict(model, test.x)
    tuned = holdout_report(task, test.y, predicted)
    tested = {f"test_{k}": v for k, v in tuned.items()}
    baseline_model = family.baseline(params.setup(train.n_classes), train.x, train.y)
    baseline = holdout_report(task, test.y, family.predict(baseline_model, test.x))
    headline = HEADLINE[task]
    quality = {
        **tested,
        **{f"baseline_{k}": v for k, v in baseline.items()},
        f"best_cv_{summary['metric']}": summary["best_value"],
        "trials": summary["n_trials"],
    }
    results = {
        "task": task,
        "family": params.model.family,
        "best_params": summary["best_params"],
        **quality,
        f"{headline}_improvement_over_baseline": 1 - tuned[headline] / baseline[headline],
        "optimization_time_seconds": summary["optimization_time_seconds"],
        "best_trial_number": summary["best_trial_number"],
        "study_name": summary["study_name"],
        "search": summary["search"],
        "mlflow": {
            "study_run_id": summary["mlflow_parent_run_id"],
            "model_run_id": model_info["mlflow_run_id"],
            "registered_model": model_info["registered_model"],
            "registered_model_version": model_info["registered_model_version"],
        },
    }
    paths.METRICS.write_text(json.dumps(quality, indent=2) + "\n")
    paths.RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    predictions, curve = holdout_tables(task, test.y, predicted, test.classes)
    paths.PREDICTIONS_CSV.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(paths.PREDICTIONS_CSV, index=False)
    curve.to_csv(paths.CURVE_CSV, index=False)
    tracking.log_metrics(client, model_info["mlflow_run_id"], tested)
    logging.getLogger("hpo.evaluate").info(
        f"test {headline} {tuned[headline]:.4f} (baseline {baseline[headline]:.4f})"
    )


if __name__ == "__main__":
    run_stage(main)
