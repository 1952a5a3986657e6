"""The deterministic parallel ask/tell loop, on a small slice of the real data."""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import REPO
from optuna.trial import FrozenTrial, TrialState

from hpo.config import load_params
from hpo.errors import PipelineError
from hpo.execution.local import FoldScheduler, LocalExecutor
from hpo.protocol.runner import (
    CLOCK_ATTR,
    OWNER_ATTR,
    PENDING_ATTR,
    StudyRunner,
    TuningInterruptedError,
    summarize,
)
from hpo.protocol.view import ProtocolView
from hpo.session import injected_faults
from hpo.storage import trial_rows
from hpo.trial.data import FEATURES, TARGET, derive_features, read_raw
from hpo.trial.evaluation import (
    FoldPool,
    PrunerEvidence,
    TrainingData,
    TrialOutcome,
    TrialTask,
    evaluate_trial,
)
from hpo.trial.model import booster_params
from hpo.trial.space import distributions, make_sampler

PARAMS = load_params(REPO / "params.yaml")


STUDY_FILES: Iterator[Path] = iter(())


@pytest.fixture(scope="module", autouse=True)
def _studies_in(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Studies in SQLite files of this module's own (the writer needs an RDB storage); module
    scoped so that the module-scoped fixtures' studies land there too."""
    global STUDY_FILES
    folder = tmp_path_factory.mktemp("studies")
    STUDY_FILES = (folder / f"study-{n}.db" for n in itertools.count())


def new_study() -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{next(STUDY_FILES)}", direction="minimize")


@pytest.fixture(scope="module")
def small_data():
    frame = derive_features(read_raw(REPO / "data/raw/cal_housing.data.gz")).iloc[:1500]
    return frame[FEATURES], frame[TARGET]


class Collector:
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


def make_runner(small_data, n_trials: int = 8, **overrides) -> StudyRunner:
    x, y = small_data
    tune = PARAMS.tune.model_copy(
        update={
            "pruner": PARAMS.tune.pruner.model_copy(
                update={"n_startup_trials": 2, "n_warmup_steps": 10}
            ),
            "sampler": PARAMS.tune.sampler.model_copy(update={"n_startup_trials": 3}),
        }
    )
    space = distributions(tune.search_space)
    space["n_estimators"] = optuna.distributions.IntDistribution(20, 60)
    settings = {
        "study": new_study(),
        "distributions": space,
        "n_trials": n_trials,
        "parallel_trials": 2,
        "lookahead": 2,
        "make_sampler": partial(make_sampler, tune.sampler),
        "make_task": partial(TrialTask.build, tune, PARAMS.model),
        "executor": LocalExecutor(TrainingData(x, y, 2, 0, PARAMS.model.max_bin), 2),
        "recorder": Collector(),
        "log": lambda _line: None,
    }
    return StudyRunner(**{**settings, **overrides})


def _records_of(trial: FrozenTrial) -> tuple:
    return (trial.number, trial.state, trial.params, trial.value, trial.intermediate_values)


def _records(study: optuna.Study) -> list[tuple]:
    return [_records_of(t) for t in study.trials]


def test_two_parallel_runs_give_identical_trials(small_data) -> None:
    first, second = make_runner(small_data), make_runner(small_data)
    first.run()
    second.run()
    assert _records(first.study) == _records(second.study)
    states = [t.state for t in first.study.trials]
    assert TrialState.PRUNED in states
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 8


def test_trials_are_recorded_once_each_in_number_order(small_data) -> None:
    runner = make_runner(small_data, n_trials=5)
    runner.run()
    numbers = [number for number, _ in runner.recorder.recorded]
    assert numbers == list(range(5))


def test_summary_takes_the_tuning_clock_of_the_last_trial(small_data) -> None:
    runner = make_runner(small_data, n_trials=5)
    summary = summarize(runner.study.study_name, runner.run())
    assert summary["n_trials"]["complete"] + summary["n_trials"]["pruned"] == 5
    clocks = [t.user_attrs[CLOCK_ATTR] for t in runner.study.trials]
    walls = [clock["wall_s"] for clock in clocks]
    assert walls == sorted(walls)  # told in number order, time goes on
    assert walls[0] > 0
    assert summary["optimization_time_seconds"] == clocks[-1]["wall_s"]
    assert summary["main_thread_seconds"] == clocks[-1]["main_s"] > 0
    assert summary["main_thread_cpu_seconds"] == clocks[-1]["main_cpu_s"] > 0


def test_failing_trials_are_recorded_and_do_not_use_the_budget(small_data) -> None:
    runner = make_runner(small_data, n_trials=5, fault_hook=injected_faults("1,3"))
    progress = runner.run()
    failed = runner.study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [1, 3]
    assert all("injected fault" in t.user_attrs["error"] for t in failed)
    assert progress.finished == 5
    assert progress.failed == 2


def test_no_completed_trial_is_an_error(small_data) -> None:
    runner = make_runner(small_data, n_trials=3, fault_hook=injected_faults("all"))
    with pytest.raises(PipelineError, match="no trial completed"):
        runner.run()
    assert len(runner.study.trials) == 3  # stops after n_trials failures, does not loop forever


@pytest.fixture(scope="module")
def uninterrupted(small_data) -> list[tuple]:
    """A 7-trial study (8 with the failed trial 3) run in one go: what every other path must
    reproduce."""
    runner = make_runner(small_data, n_trials=7, fault_hook=injected_faults("3"))
    runner.run()
    return _records(runner.study)


def test_a_grown_study_equals_one_run_from_scratch(small_data, uninterrupted) -> None:
    first = make_runner(small_data, n_trials=3, fault_hook=injected_faults("3"))
    first.run()
    grown = make_runner(small_data, n_trials=7, study=first.study, fault_hook=injected_faults("3"))
    progress = grown.run()
    assert _records(grown.study) == uninterrupted
    assert progress.told_this_session == 8 - 3


def test_a_smaller_budget_takes_the_first_trials_without_running_any(
    small_data, uninterrupted
) -> None:
    full = make_runner(small_data, n_trials=7, fault_hook=injected_faults("3"))
    full.run()
    progress = make_runner(small_data, n_trials=4, study=full.study).run()
    assert progress.told_this_session == 0
    # Trial 3 failed: four finished trials are the first five.
    assert [_records_of(t) for t in progress.trials] == uninterrupted[:5]
    alone = make_runner(small_data, n_trials=4, fault_hook=injected_faults("3"))
    summary = summarize("study", progress)
    assert summary == summarize("study", alone.run()) | {
        key: summary[key]
        for key in ("optimization_time_seconds", "main_thread_seconds", "main_thread_cpu_seconds")
    }


def test_a_stopped_run_resumes_into_the_uninterrupted_trials(small_data, uninterrupted) -> None:
    runner = make_runner(small_data, n_trials=7, fault_hook=injected_faults("3"))
    told = runner.recorder.record

    def stop_after_trial_2(trial: FrozenTrial, outcome: TrialOutcome) -> None:
        told(trial, outcome)
        if trial.number == 2:
            runner.stop.set()

    runner.recorder.record = stop_after_trial_2
    with pytest.raises(TuningInterruptedError):
        runner.run()
    states = [t.state for t in runner.study.trials]
    assert TrialState.RUNNING in states  # left for the next run, not closed as failed
    make_runner(small_data, n_trials=7, study=runner.study, fault_hook=injected_faults("3")).run()
    assert _records(runner.study) == uninterrupted


def test_a_trial_left_running_by_a_dead_process_is_evaluated_again(small_data) -> None:
    runner = make_runner(small_data, n_trials=4)
    left_running = runner.study.ask(runner.distributions)  # as a killed process leaves it
    progress = runner.run()
    again = runner.study.trials[left_running.number]
    assert again.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert again.params == left_running.params
    assert progress.finished == 4
    assert len(runner.study.trials) == 4


def test_resume_continues_a_finished_study_without_new_trials(small_data) -> None:
    runner = make_runner(small_data, n_trials=4)
    runner.run()
    again = make_runner(small_data, n_trials=4, study=runner.study)
    progress = again.run()
    assert len(runner.study.trials) == 4
    assert progress.told_this_session == 0


def test_resume_records_told_trials_that_have_no_record(small_data) -> None:
    runner = make_runner(small_data, n_trials=3)
    runner.run()
    lost = runner.recorder.recorded.pop(1)  # as if killed between tell and record
    again = make_runner(small_data, n_trials=3, study=runner.study, recorder=runner.recorder)
    again.run()
    assert lost in runner.recorder.recorded
    assert sorted(runner.recorder.recorded_numbers()) == [0, 1, 2]


@pytest.fixture(scope="module")
def told_by_state(small_data) -> dict[TrialState, tuple[TrialOutcome, FrozenTrial]]:
    """One trial of each final state: its outcome as the scheduler produced it, as told."""
    runner = make_runner(small_data, n_trials=8, fault_hook=injected_faults("1"))
    runner.run()
    recorder = runner.recorder
    by_state = {t.state: (recorder.outcomes[n], t) for n, t in recorder.trials.items()}
    assert set(by_state) == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    return by_state


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_outcome_survives_a_json_round_trip(told_by_state, state) -> None:
    outcome, _ = told_by_state[state]
    assert TrialOutcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_resume_tells_a_saved_outcome_instead_of_recomputing(
    small_data, told_by_state, state
) -> None:
    saved, told = told_by_state[state]
    runner = make_runner(small_data, n_trials=2)
    orphan = runner.study.ask(runner.distributions)  # finished, saved, then the process died
    outcome = dataclasses.replace(saved, number=orphan.number)
    orphan.set_user_attr(PENDING_ATTR, outcome.to_json())
    orphan.set_user_attr(OWNER_ATTR, {"host": socket.gethostname(), "pid": 2**22 + 1})
    runner.run()
    recovered = runner.study.trials[orphan.number]
    assert (recovered.state, recovered.value) == (told.state, told.value)
    assert recovered.intermediate_values == told.intermediate_values
    assert recovered.user_attrs.get("error") == told.user_attrs.get("error")
    assert runner.recorder.outcomes[orphan.number] == outcome
    # A recovered COMPLETE or PRUNED trial counts toward the budget; a FAIL one does not.
    assert len(runner.study.trials) == (3 if state == TrialState.FAIL else 2)


def _fail_tell_of_trial_2(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make storing trial 2 as told raise, `times` times; returns the failures so far."""
    finish, failures = trial_rows.finish, []

    def finish_failing_for_trial_2(storage, trial_id: int, told: FrozenTrial) -> bool:
        if told.number == 2 and len(failures) < times:
            failures.append(told.number)
            raise RuntimeError("database is locked")
        return finish(storage, trial_id, told)

    monkeypatch.setattr(trial_rows, "finish", finish_failing_for_trial_2)
    return failures


def test_a_trial_whose_tell_fails_is_told_on_the_way_out(small_data, monkeypatch) -> None:
    runner = make_runner(small_data, n_trials=4)
    failures = _fail_tell_of_trial_2(monkeypatch, times=1)
    with pytest.raises(RuntimeError, match="database is locked"):
        runner.run()
    assert failures == [2]
    states = {t.number: t.state for t in runner.study.trials}
    assert states[2] in (TrialState.COMPLETE, TrialState.PRUNED)
    finished = {number for number, state in states.items() if state.is_finished()}
    assert runner.recorder.recorded_numbers() == finished


def test_a_trial_that_cannot_be_told_is_saved_for_the_next_run(small_data, monkeypatch) -> None:
    runner = make_runner(small_data, n_trials=4)
    failures = _fail_tell_of_trial_2(monkeypatch, times=2)
    with pytest.raises(RuntimeError, match="database is locked"):
        runner.run()
    assert failures == [2, 2]
    left = runner.study.trials[2]
    assert left.state == TrialState.RUNNING
    saved = TrialOutcome.from_json(left.user_attrs[PENDING_ATTR])
    assert saved.state in (TrialState.COMPLETE, TrialState.PRUNED)

    make_runner(small_data, n_trials=4, study=runner.study, recorder=runner.recorder).run()
    recovered = runner.study.trials[2]
    assert (recovered.state, recovered.value) == (saved.state, saved.value)
    assert runner.recorder.outcomes[2] == saved


def test_a_told_trial_whose_record_fails_is_recorded_once_by_the_next_run(small_data) -> None:
    class FailingOnce(Collector):
        failed = False

        def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
            if trial.number == 2 and not self.failed:
                self.failed = True
                raise RuntimeError("mlflow store unavailable")
            super().record(trial, outcome)

    recorder = FailingOnce()
    runner = make_runner(small_data, n_trials=4, recorder=recorder)
    with pytest.raises(RuntimeError, match="mlflow store unavailable"):
        runner.run()
    told = runner.study.trials[2]
    assert told.state in (TrialState.COMPLETE, TrialState.PRUNED)  # not told twice: no error
    assert 2 not in recorder.recorded_numbers()

    make_runner(small_data, n_trials=4, study=runner.study, recorder=recorder).run()
    assert [number for number, _ in recorder.recorded].count(2) == 1
    assert runner.study.trials[2].datetime_complete == told.datetime_complete


def test_a_trial_that_trained_every_round_is_complete_even_if_worse_than_the_median(
    small_data,
) -> None:
    x, y = small_data
    pruner = PARAMS.tune.pruner.model_copy(
        update={"n_startup_trials": 1, "n_warmup_steps": 0, "interval_steps": 10}
    )
    # Earlier trials were far worse at round 10 and far better at round 20, the last.
    snapshot = PrunerEvidence.of([(0.0, {10: 100.0, 20: 0.0})] * 3)
    params = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.1, "subsample": 1.0,
              "colsample_bytree": 1.0, "min_child_weight": 1.0, "gamma": 0.0}  # fmt: skip
    task = TrialTask(
        number=3,
        params=params,
        booster_params=booster_params(PARAMS.model, params),
        n_rounds=20,
        report_interval=10,
        pruner=pruner,
        snapshot=snapshot,
    )
    outcome = evaluate_trial(task, TrainingData(x, y, 2, 0, PARAMS.model.max_bin), 1)
    assert outcome.state == TrialState.COMPLETE
    assert sorted(outcome.reported) == [10, 20]


def test_running_trials_never_share_fold_matrices(small_data) -> None:
    x, y = small_data
    lock, held, shared = threading.Lock(), set(), []

    class WatchedPool(FoldPool):
        def take(self) -> list:
            folds = super().take()
            with lock:
                if id(folds) in held:
                    shared.append(id(folds))
                held.add(id(folds))
            return folds

        def give_back(self, folds: list) -> None:
            with lock:
                held.remove(id(folds))
            super().give_back(folds)

    pool = WatchedPool(TrainingData(x, y, 2, 0, PARAMS.model.max_bin))
    runner = make_runner(small_data, n_trials=8, executor=FoldScheduler(2, pool, 1))
    runner.run()
    assert shared == []
    assert held == set(), "every trial gave its folds back"
    assert 2 <= pool.built <= runner.parallel_trials + runner.lookahead
    reference = make_runner(small_data, n_trials=8)
    reference.run()
    assert _records(runner.study) == _records(reference.study)


def test_the_driver_tells_exactly_what_the_study_stores(small_data) -> None:
    runner = make_runner(small_data, n_trials=6, fault_hook=injected_faults("2"))
    progress = runner.run()

    def kept(trial: FrozenTrial) -> tuple:
        attrs = {k: v for k, v in trial.user_attrs.items() if k != PENDING_ATTR}
        return (*_records_of(trial), attrs, trial.datetime_start)

    assert [kept(t) for t in progress.trials] == [kept(t) for t in runner.study.trials]


def test_pruner_evidence_gives_the_decisions_of_the_trials_it_holds() -> None:
    """The driver's evidence matrix, rebuilt on a worker, prunes as the told trials would:
    curves of different lengths (columns arriving after rows), a NaN, growth past the first
    allocation; and a slice handed out earlier never changes."""
    rng = np.random.default_rng(0)
    view = ProtocolView({}, make_sampler=lambda number: optuna.samplers.RandomSampler(), window=1)
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
    early = view.completed_for(40)
    early_curves = early.curves.copy()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0)
    for seen in (1, 40, 63, 64, 65, 150):
        evidence = view.completed_for(seen)
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
    np.testing.assert_array_equal(view.completed_for(40).curves, early_curves)
    np.testing.assert_array_equal(early.curves, early_curves)
