"""Stage train_best: refit the best trial's params on the whole training split; register it."""

import json
import logging

from hpo import paths
from hpo.config import load_params
from hpo.data import read_split
from hpo.errors import read_json
from hpo.models import load_family
from hpo.stage import run_stage
from hpo.tracking import mlflow as tracking
from hpo.tracking.served import as_input, model_config, served_frame


def main() -> None:
    params = load_params()
    summary = read_json(paths.TUNE_SUMMARY)
    train = read_split(paths.TRAIN, params.data)
    family_name = params.model.family
    family = load_family(family_name)
    # A bad MLFLOW_TRACKING_URI stops us here, before anything is written.
    client, experiment_id = tracking.connect(tracking.names(family_name, params.data.path))
    model = family.fit(params.setup(train.n_classes), summary["best_params"], train.x, train.y)
    paths.MODEL.mkdir(parents=True, exist_ok=True)
    model_file = paths.MODEL / family.MODEL_FILE
    family.save(model, model_file)
    config = model_config(family_name, params.data.task, train.classes, train.x)
    distributions = ["mlflow", "numpy", "pandas", "scipy", *family.SERVING]
    settings = {"family": family_name, "seed": params.model.seed,
                "fixed": params.model.chosen.fixed}  # fmt: skip
    model_info = tracking.log_final_model(
        client,
        experiment_id,
        model_file,
        (config, distributions),
        (as_input(config, train.x), served_frame(config, family.predict(model, train.x.head(5)))),
        {"model": settings, "best_params": summary["best_params"]},
        study_run_id=summary["mlflow_parent_run_id"],
        study_name=summary["study_name"],
    )
    paths.MODEL_INFO.write_text(json.dumps(model_info, indent=2) + "\n")
    logging.getLogger("hpo.train_best").info(
        f"model saved to {model_file}, registered as {model_info['registered_model']} "
        f"version {model_info['registered_model_version']}"
    )


if __name__ == "__main__":
    run_stage(main)
