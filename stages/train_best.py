"""Stage train_best: refit the best trial's params on the whole training split; register it."""

import json

from hpo import paths
from hpo.config import load_params
from hpo.errors import read_json, run_stage
from hpo.storage import tracking
from hpo.trial import model
from hpo.trial.data import read_split


def main() -> None:
    params = load_params()
    summary = read_json(paths.TUNE_SUMMARY)
    x_train, y_train = read_split(paths.TRAIN_CSV)
    client, experiment_id = tracking.connect()  # a bad MLFLOW_TRACKING_URI stops us here
    booster = model.train_final(params.model, summary["best_params"], x_train, y_train)
    model.save_model(booster, paths.MODEL)
    model_info = tracking.log_final_model(
        client,
        experiment_id,
        booster,
        x_train,
        {"model": params.model.model_dump(), "best_params": summary["best_params"]},
        study_run_id=summary["mlflow_parent_run_id"],
        study_name=summary["study_name"],
    )
    paths.MODEL_INFO.write_text(json.dumps(model_info, indent=2) + "\n")
    print(
        f"model saved to {paths.MODEL}, registered as {model_info['registered_model']} "
        f"version {model_info['registered_model_version']}"
    )


if __name__ == "__main__":
    run_stage(main)
