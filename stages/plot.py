"""Stage plot: the search's history and parameter importance, and the test split, as PNGs
and as DVC plot data."""

import logging

import optuna
import pandas as pd

from hpo import figures, paths
from hpo.config import load_params
from hpo.errors import REBUILD, PipelineError, file_error, read_json
from hpo.stage import run_stage
from hpo.storage.studies import close_storage, open_storage


def main() -> None:
    params = load_params()
    study_name = read_json(paths.TUNE_SUMMARY)["study_name"]
    try:
        predictions, curve = pd.read_csv(paths.PREDICTIONS_CSV), pd.read_csv(paths.CURVE_CSV)
    except (OSError, ValueError) as exc:
        raise file_error(paths.PREDICTIONS_CSV, exc, REBUILD) from None
    if not paths.STUDY_COPY.exists():
        raise file_error(paths.STUDY_COPY, FileNotFoundError(), REBUILD)
    storage = open_storage(paths.STUDY_COPY)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # an empty file opens as a new, empty storage
            raise PipelineError(
                f"{paths.STUDY_COPY}: holds no study {study_name}; {REBUILD}"
            ) from None
        figures.history_table(study).to_csv(paths.HISTORY_CSV, index=False)
        name, seed = params.plot.importance_evaluator, params.plot.importance_seed
        importances = figures.importance_table(study, figures.importance_evaluator(name, seed))
        importances.to_csv(paths.IMPORTANCE_CSV, index=False)
        figures.save_png(figures.history_figure(study), paths.HISTORY_PNG)
        figures.save_png(figures.importance_figure(importances, name), paths.IMPORTANCE_PNG)
    finally:
        close_storage(storage)
    figures.save_png(figures.holdout_figure(params.data.task, predictions, curve), paths.TEST_PNG)
    logging.getLogger("hpo.plot").info(
        f"wrote {paths.HISTORY_PNG}, {paths.IMPORTANCE_PNG} and {paths.TEST_PNG}"
    )


if __name__ == "__main__":
    run_stage(main)
