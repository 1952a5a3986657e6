"""Stage tune: Optuna search over the search space, every trial recorded in MLflow."""

import json
import sys

import optuna

from hpo import paths
from hpo.config import PARAMS_FILE, load_params
from hpo.errors import PipelineError, run_stage
from hpo.session import open_tune_session
from hpo.storage.settings import from_environment
from hpo.trial.data import read_split
from hpo.trial.model import check_search_space
from hpo.waits import StopSignal


def main() -> None:
    params = load_params()
    problems = check_search_space(params.tune.search_space)
    if problems:
        raise PipelineError("\n".join(f"{PARAMS_FILE}: {problem}" for problem in problems))
    backends = from_environment()
    x_train, y_train = read_split(paths.TRAIN_CSV)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Ctrl-C, and SIGTERM from `docker stop` or a scheduler, end the stage within seconds.
    stop = StopSignal()
    stop.install()
    with open_tune_session(params, backends, x_train, y_train, stop) as session:
        progress = session.run()
        if not progress.last_session:
            print(
                "another tune process is still running this study: the last one to finish "
                "writes the outputs and closes the MLflow study run",
                file=sys.stderr,
            )
            return
        session.write_study_file(progress)
    summary = session.finish(progress)
    paths.TUNE_SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_stage(main)
