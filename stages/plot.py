"""Stage plot: optimisation history and parameter importance, as PNGs and as DVC plot data."""

import optuna

from hpo import paths
from hpo.config import load_params
from hpo.errors import REBUILD, PipelineError, file_error, read_json, run_stage
from hpo.figures import (
    history_figure,
    history_table,
    importance_evaluator,
    importance_figure,
    importance_table,
    save_png,
)
from hpo.storage.studies import close_storage, open_storage


def main() -> None:
    params = load_params().plot
    study_name = read_json(paths.TUNE_SUMMARY)["study_name"]
    if not paths.STUDY_DB.exists():
        raise file_error(paths.STUDY_DB, FileNotFoundError(), REBUILD)
    storage = open_storage(paths.STUDY_DB)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # an empty file opens as a new, empty storage
            raise PipelineError(
                f"{paths.STUDY_DB}: holds no study {study_name}; {REBUILD}"
            ) from None
        paths.PLOT_DATA.mkdir(parents=True, exist_ok=True)
        history_table(study).to_csv(paths.HISTORY_CSV, index=False)
        evaluator = importance_evaluator(params.importance_evaluator, params.importance_seed)
        importances = importance_table(study, evaluator)
        importances.to_csv(paths.IMPORTANCE_CSV, index=False)
        save_png(history_figure(study), paths.HISTORY_PNG)
        save_png(importance_figure(importances, params.importance_evaluator), paths.IMPORTANCE_PNG)
    finally:
        close_storage(storage)
    print(f"wrote {paths.HISTORY_PNG} and {paths.IMPORTANCE_PNG}")


if __name__ == "__main__":
    run_stage(main)
