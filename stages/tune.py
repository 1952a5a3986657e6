"""Stage tune: Optuna search over the chosen family's search space, every trial in MLflow."""

import json

from hpo.stage import run_stage


def main() -> None:
    # Imported here: the writer process (spawned) reruns this file's top level, needing none of it.
    import optuna

    from hpo import paths
    from hpo.config import PARAMS_FILE, load_params
    from hpo.data import read_split
    from hpo.errors import PipelineError
    from hpo.models import load_family
    from hpo.session import open_tune_session
    from hpo.waits import StopSignal

    params = load_params()
    split = read_split(paths.TRAIN, params.data)
    family, chosen = load_family(params.model.family), params.model.chosen
    problems = family.problems(params.setup(split.n_classes), chosen.search_space)
    if problems:
        prefix = f"{PARAMS_FILE}: model.families.{params.model.family}."
        raise PipelineError("\n".join(prefix + problem for problem in problems))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = StopSignal()  # Ctrl-C, and SIGTERM from `docker stop`, end the stage within seconds
    stop.install()
    with open_tune_session(params, split, stop) as session:
        summary = session.finish(session.run())
    summary["search"] = {"sampler": params.tune.sampler.name, "pruner": params.tune.pruner.name}
    paths.TUNE_SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_stage(main)
