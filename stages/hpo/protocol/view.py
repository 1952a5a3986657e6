"""The study as the ask/tell protocol (docs/design.md) defines it for the next trial, not as the
storage holds it (later trials may exist there, running ones may have finished long ago): an
in-memory copy the sampler is asked against, TPE's constant liar reading its running trials."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.search.trial import PrunerEvidence, rung_values

SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]


def running_trial(
    params: dict[str, Any],
    distributions: dict[str, BaseDistribution],
    system_attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    """A running trial with these params, to create in a storage (which gives its number and id);
    `system_attrs` keep what its sampler wrote (CMA-ES keeps its state there)."""
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs={},
        system_attrs=dict(system_attrs or {}),
        intermediate_values={},
        trial_id=-1,
    )


class ProtocolView:
    """Trial k's view of the study: trials 0..k-window finished, k-window+1..k-1 running. It
    depends on k alone, not on when trial k is asked (held back by the budget, or resumed)."""

    def __init__(
        self,
        distributions: dict[str, BaseDistribution],
        make_sampler: SamplerFactory,
        window: int,
        direction: str,
        first: list[dict[str, Any]] | None = None,
    ) -> None:
        self._distributions, self._make_sampler, self._window = distributions, make_sampler, window
        self._first = first or []  # trial k < len(first) takes these values, samples the rest
        self._storage = InMemoryStorage()
        self._study = optuna.create_study(storage=self._storage, direction=direction)
        self._study_id = self._storage.get_study_id_from_name(self._study.study_name)
        self._told: list[FrozenTrial] = []  # in number order
        self._evidence = _EvidenceLog()  # the complete and pruned ones among them, for pruners
        self._evidence_before = [0]  # evidence trials among the first i told
        self._applied = 0  # told trials the in-memory study shows as finished
        self.n_trials = 0  # trials added so far: the number the next trial gets

    def sample(self) -> FrozenTrial:
        """The next trial, from a sampler seeded by its number; it is then running."""
        self._show_finished(self.n_trials - self._window)
        self._study.sampler = self._make_sampler(self.n_trials)
        if self.n_trials < len(self._first):
            self._study.enqueue_trial(self._first[self.n_trials], skip_if_exists=False)
        self.n_trials += 1
        asked = self._study.ask(self._distributions)
        stored = self._storage.get_trial(asked._trial_id)
        return running_trial(asked.params, self._distributions, stored.system_attrs)

    def add_running(self, trial: FrozenTrial) -> None:
        """Add an existing trial (asked by an earlier run or another process) as running."""
        template = running_trial(trial.params, trial.distributions, trial.system_attrs)
        self._storage.create_new_trial(self._study_id, template_trial=template)
        self.n_trials += 1

    def tell(self, trial: FrozenTrial) -> None:
        """The final record of the oldest trial not yet told (trials are told in number order)."""
        assert trial.number == len(self._told), "trials are told in number order"
        self._told.append(trial)
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self._evidence.add(trial)
        self._evidence_before.append(len(self._evidence))

    def evidence_for(self, number: int) -> PrunerEvidence:
        """The finished trials that trial `number`'s pruner compares against."""
        seen = min(max(0, number - self._window + 1), len(self._told))
        return self._evidence.first(self._evidence_before[seen])

    def _show_finished(self, last: int) -> None:
        """Show the told trials up to number `last` as finished, as trial last + window sees."""
        for trial in self._told[self._applied : last + 1]:
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(
                self._study_id, trial.number
            )
            for step, value in trial.intermediate_values.items():
                self._storage.set_trial_intermediate_value(trial_id, step, value)
            values = None if trial.value is None else [trial.value]
            self._storage.set_trial_state_values(trial_id, trial.state, values)
            self._applied += 1


class _EvidenceLog:
    """Finished trials in the order they were told, as pruner evidence: its first n rows are
    fixed once written, so each task shares them instead of copying trial by trial."""

    def __init__(self) -> None:
        self._steps: dict[int, int] = {}  # step -> column
        self._values = np.empty(0)  # NaN for a pruned trial
        self._curves = np.empty((0, 0))
        self._rungs = np.empty((0, 0))  # the rungs each passed (successive halving), else NaN
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add(self, trial: FrozenTrial) -> None:
        curve = trial.intermediate_values
        for step in curve:
            if step not in self._steps:  # a new column, NaN for the trials before
                self._steps[step] = len(self._steps)
                self._curves = _widen(self._curves, len(self._steps))
        rungs = rung_values(trial.system_attrs)
        self._rungs = _widen(self._rungs, max(len(rungs), self._rungs.shape[1]))
        if self._rows == len(self._values):  # room for twice as many rows
            size = max(64, 2 * self._rows)
            self._values = _grow(self._values, size)
            self._curves, self._rungs = _grow(self._curves, size), _grow(self._rungs, size)
        complete = trial.state == TrialState.COMPLETE
        self._values[self._rows] = trial.value if complete else np.nan
        self._curves[self._rows] = np.nan
        self._curves[self._rows, [self._steps[step] for step in curve]] = list(curve.values())
        self._rungs[self._rows] = np.nan
        self._rungs[self._rows, : len(rungs)] = rungs
        self._rows += 1

    def first(self, n: int) -> PrunerEvidence:
        steps = tuple(self._steps)
        return PrunerEvidence(steps, self._values[:n], self._curves[:n], self._rungs[:n])


def _widen(matrix: np.ndarray, columns: int) -> np.ndarray:
    """`matrix` with NaN columns added up to `columns`."""
    missing = columns - matrix.shape[1]
    return matrix if missing <= 0 else np.hstack([matrix, np.full((len(matrix), missing), np.nan)])


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with NaN rows added up to `rows`."""
    grown = np.full((rows, *array.shape[1:]), np.nan)
    grown[: len(array)] = array
    return grown
