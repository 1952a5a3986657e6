"""Every sampler and pruner params.yaml offers, under the pipeline's protocol: a study grown or
resumed equals one run in one go, whole-trial workers (Dask's way) equal the fold threads, and
the configurations to try first (tune.enqueue, a warm start) are what the first trials take."""

from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pytest
import test_tuning
from conftest import dvc, tiered, trial_records
from optuna.trial import TrialState
from test_tuning import TUNE, _records, make_runner

from hpo.config import Params, PrunerParams, SamplerParams, load_params
from hpo.errors import PipelineError
from hpo.search.evaluation import TrainingData, evaluate_trial
from hpo.search.space import make_sampler
from hpo.search.trial import TrialOutcome, TrialTask
from hpo.storage import studies

# test_tuning's slice of the data, and its studies in SQLite files of its own.
data, _studies_in = test_tuning.data, test_tuning._studies_in
SPACE = "model.families.xgboost.search_space"
NO_PRUNING = TUNE.pruner.model_copy(update={"name": "none"})
# Each sampler's settings for a 14-trial study that gets past its start-up phase.
SAMPLERS: dict[str, dict[str, Any]] = {
    "tpe": {},
    "gp": {},
    "cmaes": {"cmaes": {"popsize": 4}},  # trials 5-8 a generation, told when trial 12 is asked
    "qmc": {},
    "random": {},
}
# Each pruner's settings for a study of 4 folds where it prunes.
PRUNERS: dict[str, dict[str, Any]] = {
    "median": {},
    "percentile": {"percentile": {"percentile": 50.0}},
    "successive_halving": {"successive_halving": {"min_resource": 10, "reduction_factor": 2}},
    "wilcoxon": {"wilcoxon": {"p_threshold": 0.5, "n_startup_steps": 1}},
    "none": {},
}


def _sampler(name: str) -> SamplerParams:
    raw = {**TUNE.sampler.model_dump(), "name": name, "n_startup_trials": 2, **SAMPLERS[name]}
    return SamplerParams.model_validate(raw)


def _pruner(name: str) -> PrunerParams:
    raw = {**TUNE.pruner.model_dump(), "name": name, "n_startup_trials": 2, **PRUNERS[name]}
    return PrunerParams.model_validate(raw)


class WholeTrials:
    """Whole trials on a thread pool, as a Dask worker runs them (hpo.execution.dask)."""

    def __init__(self, data: TrainingData) -> None:
        self._data, self._pool = data, ThreadPoolExecutor(2)
        self.tags: dict[str, str] = {}

    def submit(self, task: TrialTask) -> Future[TrialOutcome]:
        return self._pool.submit(evaluate_trial, task, self._data, 1)

    def shutdown(self, cancel: bool = False) -> None:
        self._pool.shutdown(cancel_futures=cancel)


@pytest.mark.parametrize(
    "name", tiered([pytest.param(n, id=n) for n in SAMPLERS], default={"tpe", "cmaes"})
)
def test_each_sampler_grows_and_resumes_into_the_uninterrupted_study(data, name: str) -> None:
    sampler = partial(make_sampler, _sampler(name))
    unpruned = dataclasses.replace(data, pruner=NO_PRUNING)
    run = partial(make_runner, unpruned, make_sampler=sampler)
    whole = run(n_trials=14)
    whole.run()
    first = run(n_trials=13)
    first.run()
    grown = run(n_trials=14, study=first.study)
    grown.run()

    assert _records(grown.study) == _records(whole.study)
    assert [t.system_attrs for t in grown.study.trials] == [
        t.system_attrs for t in whole.study.trials
    ]
    if name == "cmaes":  # its state went through the store: the grown trial 13 read it there
        assert any(k.startswith("cma:optimizer") for k in whole.study.trials[12].system_attrs)


@pytest.mark.parametrize(
    "name",
    tiered([pytest.param(n, id=n) for n in PRUNERS], default={"wilcoxon", "successive_halving"}),
)
def test_each_pruner_gives_the_same_trials_on_fold_threads_whole_trials_and_resumed(
    data, name: str
) -> None:
    four_folds = dataclasses.replace(data, pruner=_pruner(name), n_folds=4)
    threads = make_runner(four_folds, n_trials=10)
    threads.run()
    whole = make_runner(four_folds, n_trials=10, executor=WholeTrials(four_folds))
    whole.run()
    first = make_runner(four_folds, n_trials=6)
    first.run()
    grown = make_runner(four_folds, n_trials=10, study=first.study)
    grown.run()

    assert _records(whole.study) == _records(threads.study) == _records(grown.study)
    pruned = [t for t in threads.study.trials if t.state == TrialState.PRUNED]
    assert bool(pruned) == (name != "none")
    if name == "wilcoxon":  # its trials report whole folds, by fold index
        assert all(set(t.intermediate_values) <= set(range(4)) for t in threads.study.trials)
    if name == "successive_halving":  # the rungs each trial passed, kept as in a live study
        assert all("completed_rung_0" in t.system_attrs for t in threads.study.trials)


def test_enqueued_configurations_are_the_first_trials_the_rest_sampled(data) -> None:
    first = [{"max_depth": 4, "learning_rate": 0.1}, {"n_estimators": 33, "gamma": 0.25}]
    runner = make_runner(data, n_trials=4, first=first)
    runner.run()
    trials = runner.study.trials

    for config, trial in zip(first, trials, strict=False):
        assert config.items() <= trial.params.items()
        assert set(trial.params) == set(runner.distributions)
    again = make_runner(data, n_trials=4, first=first)
    again.run()
    assert _records(again.study) == _records(runner.study)


@pytest.mark.parametrize(
    ("folds", "p_threshold", "prunes"),
    [(5, 0.1, True), (4, 0.1, False), (3, 0.3, True), (2, 0.5, False)],
)
def test_tune_warns_when_the_wilcoxon_pruner_cannot_prune_on_the_folds(
    folds: int, p_threshold: float, prunes: bool
) -> None:
    """Its smallest p-value over n folds is 1 / 2**n: 4 folds (3 compared) never reach 0.1."""
    raw = load_params().model_dump(mode="json")
    raw["tune"]["cv_folds"] = folds
    raw["tune"]["pruner"]["wilcoxon"]["p_threshold"] = p_threshold
    why = Params.model_validate(raw).why_wilcoxon_cannot_prune()

    assert (why is None) == prunes
    if not prunes:
        assert f"can never prune with tune.cv_folds {folds}" in why


def test_configurations_to_try_first_take_each_dimension_s_own_type() -> None:
    """An enqueued 1 in a float dimension is 1.0, as a stored trial reads back (a resumed run
    must hold what an uninterrupted one did); an earlier study's 3.0 in a new int one is 3."""
    space = {
        "subsample": optuna.distributions.FloatDistribution(0.5, 1.0),
        "n_estimators": optuna.distributions.IntDistribution(50, 300),
        "booster": optuna.distributions.CategoricalDistribution(["gbtree", "dart"]),
    }
    config = {"subsample": 1, "n_estimators": 100.0, "booster": "dart", "gone": 1, "x": None}

    taken = studies.in_space(config, space)

    assert taken == {"subsample": 1.0, "n_estimators": 100, "booster": "dart"}
    assert [type(v) for v in taken.values()] == [float, int, str]
    assert studies.in_space({"n_estimators": 400, "booster": "gblinear"}, space) == {}


def test_a_warm_start_takes_the_earlier_study_s_best_cut_to_the_new_space(
    data, tmp_path, monkeypatch
) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'store.db'}")
    earlier = optuna.create_study(storage=storage, study_name="earlier")
    for depth, value in [(3, 0.5), (9, 0.1), (5, 0.3), (9, 0.2), (6, 0.05)]:
        earlier.add_trial(optuna.trial.create_trial(
            params={"max_depth": depth, "old": 1.0}, value=value,
            distributions={"max_depth": optuna.distributions.IntDistribution(3, 10),
                           "old": optuna.distributions.FloatDistribution(0, 2)},
        ))  # fmt: skip
    earlier.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    url = studies.storage_url_from_environment  # the store named as OPTUNA_STORAGE
    monkeypatch.setenv(studies.STORAGE_VAR, f"sqlite:///{tmp_path / 'store.db'}")
    eta = optuna.distributions.FloatDistribution(0.01, 0.3, log=True)  # new: left to the sampler
    space = {"max_depth": optuna.distributions.IntDistribution(3, 8), "eta": eta}

    best = studies.best_configurations(url(), "earlier", 3, space)

    # Best first: 6 (0.05); the two 9s are outside the new bound, nothing of them is left; 5, 3.
    assert best == [{"max_depth": 6}, {"max_depth": 5}, {"max_depth": 3}]
    with pytest.raises(PipelineError, match=r"no study 'earlyer'.*did you mean earlier"):
        studies.best_configurations(url(), "earlyer", 3, space)


def _exp_run_twice(tiny_run: Path, tmp_path: Path, *settings: str) -> tuple[Path, Path]:
    """`dvc exp run -S ...` with `settings` in two copies of the tiny run's project."""
    projects = []
    for name in ("a", "b"):
        project = shutil.copytree(tiny_run, tmp_path / name, symlinks=True)
        dvc(project, "exp", "run", *(arg for s in settings for arg in ("-S", s)))
        projects.append(project)
    return projects[0], projects[1]


def _same_study_and_model(first: Path, second: Path) -> list[tuple]:
    records = trial_records(first)
    assert records == trial_records(second)
    model = "outputs/model/model.ubj"
    assert (first / model).read_bytes() == (second / model).read_bytes()
    return records


def test_enqueue_and_a_warm_start_with_a_widened_bound_rerun_identically(
    tiny_run: Path, tmp_path: Path
) -> None:
    """The tiny run's study warm-starts a new one whose max_depth bound is cut to 4 (the earlier
    best configurations keep their other values), after one enqueued configuration; CMA-ES
    (its state in the stored trials) and successive halving (its rungs) run it, twice alike."""
    earlier = json.loads((tiny_run / "outputs/tune_summary.json").read_text())["study_name"]
    first, second = _exp_run_twice(
        tiny_run, tmp_path,
        f"tune.warm_start.study={earlier}", "tune.warm_start.n_best=2",
        "tune.enqueue=[{max_depth: 2, gamma: 0.3}]",
        f"{SPACE}.max_depth.low=2", f"{SPACE}.max_depth.high=4",
        "tune.sampler.name=cmaes", "tune.pruner.name=successive_halving",
    )  # fmt: skip

    records = _same_study_and_model(first, second)
    summary = json.loads((first / "outputs/tune_summary.json").read_text())
    assert summary["study_name"] != earlier
    params = [record[2] for record in records]
    assert (params[0]["max_depth"], params[0]["gamma"]) == (2, 0.3)
    store = optuna.storages.RDBStorage(f"sqlite:///{first / 'outputs/optuna_store.db'}")
    old = optuna.load_study(study_name=earlier, storage=store)
    ranked = sorted(old.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    kept = [{k: v for k, v in t.params.items() if k != "max_depth" or v <= 4} for t in ranked]
    assert params[1].items() >= kept[0].items()
    assert params[2].items() >= kept[1].items()


@pytest.mark.exhaustive
@pytest.mark.parametrize(
    ("sampler", "pruner"),
    [("gp", "percentile"), ("qmc", "wilcoxon"), ("random", "none"), ("tpe", "median")],
)
def test_each_sampler_and_pruner_through_dvc_exp_run_reruns_identically(
    tiny_run: Path, tmp_path: Path, sampler: str, pruner: str
) -> None:
    first, second = _exp_run_twice(
        tiny_run, tmp_path, f"tune.sampler.name={sampler}", f"tune.pruner.name={pruner}",
        # The Wilcoxon pruner compares the folds before the last: on 3, p < 0.3 is reachable.
        "tune.cv_folds=3", "tune.pruner.wilcoxon.p_threshold=0.3",
    )  # fmt: skip
    _same_study_and_model(first, second)
