"""What the driver writes while it runs a study, and the attributes it keeps on trials. A
`TrialWriter` only keeps what the driver decided, in order, off its thread (hpo.storage.writer);
the driver shows a trial as done once it learns it is stored."""

from __future__ import annotations

from typing import Protocol

from optuna.trial import FrozenTrial

from hpo.search.trial import TrialOutcome

# Trial user attributes: a finished trial's outcome while it waits for its turn to be told;
# the study's tuning time when the trial was told (TuneClock). The rest: hpo.search.trial.
PENDING_ATTR = "pending_outcome"
CLOCK_ATTR = "tune_clock"


class TrialRecorder(Protocol):
    """Where a told trial is recorded beside the study: hpo.tracking.study_run (MLflow)."""

    def recorded_numbers(self) -> set[int]:
        """The trials recorded in full; a record cut short is removed."""

    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None: ...


class TrialWriter(Protocol):
    """Every call returns at once; the writes happen in order, elsewhere."""

    def create(self, number: int, trial: FrozenTrial) -> None:
        """Trial `number` (the next one), running, as `trial` describes it."""

    def save_pending(self, number: int, outcome: TrialOutcome) -> None:
        """Keep a finished trial's outcome in the study until its turn to be told."""

    def tell(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        """Store the finished `trial` over its running version, then record it (MLflow)."""

    def stored(self) -> list[int]:
        """Trials told and stored since the last call, in order; raises the writer's failure."""

    def flush(self, timeout: float) -> bool:
        """Whether every write so far was applied within `timeout` seconds."""

    def close(self, timeout: float) -> None:
        """Let the writes sent so far finish, for at most `timeout` seconds."""
