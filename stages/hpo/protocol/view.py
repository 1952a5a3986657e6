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

from hpo.search.trial import PrunerEvidence

SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]


def running_trial(
    params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> FrozenTrial:
    """A running trial with these params, to create in a storage (which gives its number and id)."""
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs={},
        system_attrs={},
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
    ) -> None:
        self._distributions, self._make_sampler, self._window = distributions, make_sampler, window
        self._storage = InMemoryStorage()
        self._study = optuna.create_study(storage=self._storage, direction=direction)
        self._study_id = self._storage.get_study_id_from_name(self._study.study_name)
        self._told: list[FrozenTrial] = []  # in number order
        self._evidence = _EvidenceLog()  # the complete ones among them, for pruners
        self._complete_before = [0]  # complete trials among the first i told
        self._applied = 0  # told trials the in-memory study shows as finished
        self.n_trials = 0  # trials added so far: the number the next trial gets

    def sample(self) -> dict[str, Any]:
        """Params for the next trial from a sampler seeded by its number; it is then running."""
        self._show_finished(self.n_trials - self._window)
        self._study.sampler = self._make_sampler(self.n_trials)
        self.n_trials += 1
        return self._study.ask(self._distributions).params

    def add_running(self, trial: FrozenTrial) -> None:
        """Add an existing trial (asked by an earlier run or another process) as running."""
        template = running_trial(trial.params, trial.distributions)
        self._storage.create_new_trial(self._study_id, template_trial=template)
        self.n_trials += 1

    def tell(self, trial: FrozenTrial) -> None:
        """The final record of the oldest trial not yet told (trials are told in number order)."""
        assert trial.number == len(self._told), "trials are told in number order"
        self._told.append(trial)
        if trial.state == TrialState.COMPLETE:
            self._evidence.add(trial.value, trial.intermediate_values)
        self._complete_before.append(len(self._evidence))

    def completed_for(self, number: int) -> PrunerEvidence:
        """The complete trials that trial `number`'s pruner compares against."""
        seen = min(max(0, number - self._window + 1), len(self._told))
        return self._evidence.first(self._complete_before[seen])

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
    """Complete trials in the order they were told, as pruner evidence: its first n rows are
    fixed once written, so each task shares them instead of copying trial by trial."""

    def __init__(self) -> None:
        self._steps: dict[int, int] = {}  # step -> column
        self._values = np.empty(0)
        self._curves = np.empty((0, 0))
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add(self, value: float, curve: dict[int, float]) -> None:
        for step in curve:
            if step not in self._steps:  # a new column, NaN for the trials before
                self._steps[step] = len(self._steps)
                column = np.full((len(self._curves), 1), np.nan)
                self._curves = np.hstack([self._curves, column])
        if self._rows == len(self._values):  # room for twice as many rows
            size = max(64, 2 * self._rows)
            values, curves = np.full(size, np.nan), np.full((size, len(self._steps)), np.nan)
            values[: self._rows], curves[: self._rows] = self._values, self._curves
            self._values, self._curves = values, curves
        row = np.full(len(self._steps), np.nan)
        row[[self._steps[step] for step in curve]] = list(curve.values())
        self._values[self._rows], self._curves[self._rows] = value, row
        self._rows += 1

    def first(self, n: int) -> PrunerEvidence:
        return PrunerEvidence(tuple(self._steps), self._values[:n], self._curves[:n])
