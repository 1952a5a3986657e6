"""The deterministic parallel ask/tell loop, on a small slice of the real data, with the study
in SQLite and the writes applied in this process (StoreWriter)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import REPO, evidence_of
from optuna.trial import FrozenTrial, TrialState

from hpo.config import load_params
from hpo.errors import PipelineError
from hpo.execution.local import FoldScheduler, LocalExecutor
from hpo.models import Setup
from hpo.protocol.runner import StudyRunner, TuningInterruptedError, summarize
from hpo.protocol.view import ProtocolView
from hpo.protocol.writes import CLOCK_ATTR, PENDING_ATTR
from hpo.search.evaluation import FoldPool, TrainingData, evaluate_trial
from hpo.search.space import distributions, make_sampler
from hpo.search.trial import TrialOutcome, TrialTask
from hpo.session import injected_faults
from hpo.storage import studies
from hpo.storage.writer import StoreWriter

PARAMS = load_params(REPO / "params.yaml")
TUNE = PARAMS.tune.model_copy(
    update={
        "pruner": PARAMS.tune.pruner.model_copy(
            update={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 10}
        ),
        "sampler": PARAMS.tune.sampler.model_copy(update={"n_startup_trials": 3}),
    }
)
STUDY_FILES: Iterator[Path] = iter(())


@pytest.fixture(scope="module", autouse=True)
def _studies_in(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Studies in SQLite files of this module's own; module scoped so that the module-scoped
    fixtures' studies land there too."""
    global STUDY_FILES
    folder = tmp_path_factory.mktemp("studies")
    STUDY_FILES = (folder / f"study-{n}.db" for n in itertools.count())


STORAGES: dict[str, optuna.storages.RDBStorage] = {}  # study name -> its storage


def new_study() -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{next(STUDY_FILES)}")
    study = optuna.create_study(storage=storage, direction="minimize")
    STORAGES[study.study_name] = storage
    return study


@pytest.fixture(scope="module")
def data() -> TrainingData:
    frame = pd.read_csv(REPO / "data/california_housing.csv.gz").iloc[:1500]
    x, y = frame.drop(columns="MedHouseVal"), frame["MedHouseVal"].to_numpy()
    setup = Setup("regression", 0, PARAMS.model.seed, {"max_bin": 256})
    return TrainingData(x, y, "xgboost", setup, "mse", 2, 0, TUNE.pruner)


class Collector:
    """A recorder (the tracking's part of the writer) that keeps what it was given."""

    def __init__(self) -> None:
        self.recorded: list[tuple[int, str]] = []
        self.outcomes: dict[int, TrialOutcome] = {}
        self.trials: dict[int, FrozenTrial] = {}

    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        assert trial.number == outcome.number
        self.recorded.append((trial.number, trial.state.name))
        self.outcomes[trial.number] = outcome
        self.trials[trial.number] = trial

    def recorded_numbers(self) -> set[int]:
        return {number for number, _ in self.recorded}


def make_runner(
    data: TrainingData,
    n_trials: int = 8,
    study: optuna.Study | None = None,
    recorder: Collector | None = None,
    **overrides,
) -> StudyRunner:
    study = study or new_study()
    space = distributions(PARAMS.model.chosen.search_space)
    space["n_estimators"] = optuna.distributions.IntDistribution(20, 60)
    settings = {
        "study": study,
        "distributions": space,
        "metric": "mse",
        "n_trials": n_trials,
        "window": 4,
        "make_sampler": partial(make_sampler, TUNE.sampler),
        "make_task": TrialTask,
        "executor": LocalExecutor(data, 2),
        "writer": StoreWriter(
            STORAGES[study.study_name], study.study_name, recorder or Collector()
        ),
    }
    return StudyRunner(**{**settings, **overrides})


def _records_of(trial: FrozenTrial) -> tuple:
    return (trial.number, trial.state, trial.params, trial.value, trial.intermediate_values)


def _records(study: optuna.Study) -> list[tuple]:
    return [_records_of(t) for t in study.trials]


def test_two_parallel_runs_give_identical_trials(data) -> None:
    first, second = make_runner(data), make_runner(data)
    first.run()
    second.run()
    assert _records(first.study) == _records(second.study)
    states = [t.state for t in first.study.trials]
    assert TrialState.PRUNED in states
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 8


def test_trials_are_recorded_once_each_in_number_order(data) -> None:
    runner = make_runner(data, n_trials=5)
    runner.run()
    assert [number for number, _ in runner.writer.recorder.recorded] == list(range(5))


def test_summary_takes_the_tuning_clock_of_the_last_trial(data) -> None:
    runner = make_runner(data, n_trials=5)
    summary = summarize(runner.study.study_name, runner.run())
    assert summary["n_trials"]["complete"] + summary["n_trials"]["pruned"] == 5
    clocks = [t.user_attrs[CLOCK_ATTR] for t in runner.study.trials]
    walls = [clock["wall_s"] for clock in clocks]
    assert walls == sorted(walls)  # told in number order, time goes on
    assert walls[0] > 0
    assert summary["optimization_time_seconds"] == clocks[-1]["wall_s"]
    assert summary["main_thread_seconds"] == clocks[-1]["main_s"] > 0
    assert summary["main_thread_cpu_seconds"] == clocks[-1]["main_cpu_s"] > 0
    best = min((t for t in runner.study.trials if t.value is not None), key=lambda t: t.value)
    assert (summary["best_trial_number"], summary["best_value"]) == (best.number, best.value)


def test_failing_trials_are_recorded_and_do_not_use_the_budget(data) -> None:
    runner = make_runner(data, n_trials=5, fault_hook=injected_faults("1,3"))
    progress = runner.run()
    failed = runner.study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [1, 3]
    assert all("injected fault" in t.user_attrs["error"] for t in failed)
    assert progress.finished == 5
    assert progress.failed == 2


def test_no_completed_trial_is_an_error(data) -> None:
    runner = make_runner(data, n_trials=3, fault_hook=injected_faults("all"))
    with pytest.raises(PipelineError, match=r"no trial completed .*; the last: .*injected fault"):
        runner.run()
    assert len(runner.study.trials) == 3  # stops after n_trials failures, does not loop forever


@pytest.fixture(scope="module")
def uninterrupted(data) -> list[tuple]:
    """A 7-trial study (8 with the failed trial 3) run in one go: what every other path must
    reproduce."""
    runner = make_runner(data, n_trials=7, fault_hook=injected_faults("3"))
    runner.run()
    return _records(runner.study)


def test_a_grown_study_equals_one_run_from_scratch(data, uninterrupted) -> None:
    first = make_runner(data, n_trials=3, fault_hook=injected_faults("3"))
    first.run()
    grown = make_runner(data, n_trials=7, study=first.study, fault_hook=injected_faults("3"))
    progress = grown.run()
    assert _records(grown.study) == uninterrupted
    assert progress.told_this_session == 8 - 3


def test_a_smaller_budget_takes_the_first_trials_without_running_any(data, uninterrupted) -> None:
    full = make_runner(data, n_trials=7, fault_hook=injected_faults("3"))
    full.run()
    progress = make_runner(data, n_trials=4, study=full.study).run()
    assert progress.told_this_session == 0
    # Trial 3 failed: four finished trials are the first five.
    assert [_records_of(t) for t in progress.trials] == uninterrupted[:5]
    alone = make_runner(data, n_trials=4, fault_hook=injected_faults("3"))
    summary = summarize("study", progress)
    timings = ("optimization_time_seconds", "main_thread_seconds", "main_thread_cpu_seconds")
    assert summary == summarize("study", alone.run()) | {key: summary[key] for key in timings}


def test_a_stopped_run_resumes_into_the_uninterrupted_trials(data, uninterrupted) -> None:
    runner = make_runner(data, n_trials=7, fault_hook=injected_faults("3"))
    recorder = runner.writer.recorder
    told = recorder.record

    def stop_after_trial_2(trial: FrozenTrial, outcome: TrialOutcome) -> None:
        told(trial, outcome)
        if trial.number == 2:
            runner.stop.set()

    recorder.record = stop_after_trial_2
    with pytest.raises(TuningInterruptedError):
        runner.run()
    finished = [t for t in runner.study.trials if t.state.is_finished()]
    assert len(finished) < len(uninterrupted)  # the rest left for the next run, not failed
    assert all(t.state != TrialState.FAIL or t.number == 3 for t in runner.study.trials)
    make_runner(data, n_trials=7, study=runner.study, fault_hook=injected_faults("3")).run()
    assert _records(runner.study) == uninterrupted


def test_a_trial_left_running_is_evaluated_again_with_its_params(data) -> None:
    runner = make_runner(data, n_trials=4)
    left_running = runner.study.ask(runner.distributions)  # as a killed process leaves it
    progress = runner.run()
    again = runner.study.trials[left_running.number]
    assert again.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert again.params == left_running.params
    assert progress.finished == 4
    assert len(runner.study.trials) == 4


def test_resume_continues_a_finished_study_without_new_trials(data) -> None:
    runner = make_runner(data, n_trials=4)
    runner.run()
    progress = make_runner(data, n_trials=4, study=runner.study).run()
    assert len(runner.study.trials) == 4
    assert progress.told_this_session == 0


def test_a_told_trial_whose_record_failed_is_recorded_once_by_the_next_run(data) -> None:
    class FailingOnce(Collector):
        failed = False

        def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
            if trial.number == 2 and not self.failed:
                self.failed = True
                raise RuntimeError("mlflow store unavailable")
            super().record(trial, outcome)

    recorder = FailingOnce()
    runner = make_runner(data, n_trials=4, recorder=recorder)
    with pytest.raises(RuntimeError, match="mlflow store unavailable"):
        runner.run()
    told = runner.study.trials[2]
    assert told.state in (TrialState.COMPLETE, TrialState.PRUNED)  # stored before its record
    assert 2 not in recorder.recorded_numbers()

    make_runner(data, n_trials=4, study=runner.study, recorder=recorder).run()
    assert [number for number, _ in recorder.recorded].count(2) == 1
    assert runner.study.trials[2].datetime_complete == told.datetime_complete


@pytest.fixture(scope="module")
def told_by_state(data) -> dict[TrialState, tuple[TrialOutcome, FrozenTrial]]:
    """One trial of each final state: its outcome as the scheduler produced it, as told."""
    runner = make_runner(data, n_trials=8, fault_hook=injected_faults("1"))
    runner.run()
    recorder = runner.writer.recorder
    by_state = {t.state: (recorder.outcomes[n], t) for n, t in recorder.trials.items()}
    assert set(by_state) == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    return by_state


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_outcome_survives_a_json_round_trip(told_by_state, state) -> None:
    outcome, _ = told_by_state[state]
    assert TrialOutcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_resume_tells_a_saved_outcome_instead_of_recomputing(data, told_by_state, state) -> None:
    saved, told = told_by_state[state]
    runner = make_runner(data, n_trials=2)
    orphan = runner.study.ask(runner.distributions)  # finished, saved, then the process died
    outcome = dataclasses.replace(saved, number=orphan.number)
    orphan.set_user_attr(PENDING_ATTR, outcome.to_json())
    runner.run()
    recovered = runner.study.trials[orphan.number]
    assert (recovered.state, recovered.value) == (told.state, told.value)
    assert recovered.intermediate_values == told.intermediate_values
    assert recovered.user_attrs.get("error") == told.user_attrs.get("error")
    assert runner.writer.recorder.outcomes[orphan.number] == outcome
    # A recovered COMPLETE or PRUNED trial counts toward the budget; a FAIL one does not.
    assert len(runner.study.trials) == (3 if state == TrialState.FAIL else 2)


def test_the_driver_tells_what_the_study_stores(data) -> None:
    runner = make_runner(data, n_trials=6, fault_hook=injected_faults("2"))
    progress = runner.run()

    def kept(trial: FrozenTrial) -> tuple:
        attrs = {k: v for k, v in trial.user_attrs.items() if k != PENDING_ATTR}
        return (*_records_of(trial), attrs, trial.datetime_start)

    assert [kept(t) for t in progress.trials] == [kept(t) for t in runner.study.trials]


def test_a_trial_that_trained_every_round_is_complete_even_if_worse_than_the_median(
    data,
) -> None:
    pruner = TUNE.pruner.model_copy(update={"n_startup_trials": 1, "n_warmup_steps": 0})
    # Earlier trials were far worse at round 10 and far better at round 20, the last.
    evidence = evidence_of([(0.0, {10: 100.0, 20: 0.0})] * 3)
    params = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.1}
    task = TrialTask(number=3, params=params, evidence=evidence)
    outcome = evaluate_trial(task, dataclasses.replace(data, pruner=pruner), 1)
    assert outcome.state == TrialState.COMPLETE
    assert sorted(outcome.reported) == [10, 20]


def test_running_trials_never_share_fold_data(data) -> None:
    lock, held, built, shared = threading.Lock(), set(), set(), []  # built: every set ever taken

    class WatchedPool(FoldPool):
        def take(self) -> list:
            folds = super().take()
            with lock:
                if id(folds) in held:
                    shared.append(id(folds))
                held.add(id(folds))
                built.add(id(folds))
            return folds

        def give_back(self, folds: list) -> None:
            with lock:
                held.remove(id(folds))
            super().give_back(folds)

    pool = WatchedPool(data)
    runner = make_runner(data, n_trials=8, executor=FoldScheduler(2, data, pool, 1))
    runner.run()
    assert shared == []
    assert held == set(), "every trial gave its folds back"
    assert 2 <= len(built) <= runner.window
    reference = make_runner(data, n_trials=8)
    reference.run()
    assert _records(runner.study) == _records(reference.study)


def test_a_second_process_on_a_held_study_gets_one_line_naming_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.setattr(studies, "HOLD_TIMEOUT_S", 0.5)
    with studies.hold_study(None, "a-study") as holder:
        assert holder.startswith("tune process ")
        with pytest.raises(PipelineError) as refused, studies.hold_study(None, "a-study"):
            pass
    assert str(refused.value).startswith("outputs/optuna_store.db: study a-study is being tuned by")
    assert holder in str(refused.value)
    with studies.hold_study(None, "a-study"):  # released when the holder ended
        pass


def test_pruner_evidence_gives_the_decisions_of_the_trials_it_holds() -> None:
    """The driver's evidence matrix, rebuilt on a worker, prunes as the told trials would:
    curves of different lengths (columns arriving after rows), a NaN, growth past the first
    allocation; and a slice handed out earlier never changes."""
    rng = np.random.default_rng(0)
    view = ProtocolView({}, lambda number: optuna.samplers.RandomSampler(), 1, "minimize")
    told = []
    for number in range(150):
        curve = {10 * (k + 1): float(rng.normal(1, 0.2)) for k in range(rng.integers(1, 12))}
        if number == 7:
            curve[20] = float("nan")
        trial = optuna.trial.create_trial(value=min(curve.values()), intermediate_values=curve)
        if number % 5 == 4:
            trial = optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values=curve)
        trial.number = number
        view.tell(trial)
        told.append(trial)
    early = view.evidence_for(40)
    early_curves = early.curves.copy()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0)
    for seen in (1, 40, 63, 64, 65, 150):
        evidence = view.evidence_for(seen)
        complete = [t for t in told[:seen] if t.state == TrialState.COMPLETE]
        for step in range(10, 130, 10):
            decisions = []
            for trials in (complete, evidence.trials()):
                study = optuna.create_study(pruner=pruner)
                study.add_trials(trials)
                probe = study.ask()
                probe.report(1.0, step)
                decisions.append(probe.should_prune())
            assert decisions[0] == decisions[1], (seen, step)
    np.testing.assert_array_equal(view.evidence_for(40).curves, early_curves)
    np.testing.assert_array_equal(early.curves, early_curves)
