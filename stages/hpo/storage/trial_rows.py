"""A trial's rows in Optuna's RDB schema, created or finished in one transaction each.

Optuna's storage API commits every call: asking a trial with its params is one transaction,
but telling it is one per reported value, one per user attribute and one for the state, each
reading the trial back first. The writer needs a trial created in one transaction and told in
one, so it writes Optuna's own ORM models (`optuna.storages._rdb.models`, the schema behind
`RDBStorage`; optuna is pinned in constraints.txt, and `tests/test_tuning.py` checks that what
the driver tells is what Optuna reads back).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from optuna.distributions import distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session


@contextlib.contextmanager
def _transaction(storage: RDBStorage) -> Iterator[Session]:
    session = storage.scoped_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def trial_id_of(storage: RDBStorage, study_id: int, number: int) -> int | None:
    with _transaction(storage) as session:
        return (
            session.query(models.TrialModel.trial_id)
            .filter_by(study_id=study_id, number=number)
            .scalar()
        )


def create_running(storage: RDBStorage, study_id: int, number: int, template: FrozenTrial) -> int:
    """Trial `number`, running, with the template's params and user attributes; its id.

    Call it under the study lock, for the next number in order: Optuna numbers trials by
    counting, and only the lock keeps two processes from creating the same number."""
    with _transaction(storage) as session:
        trial = models.TrialModel(number=number, study_id=study_id, state=TrialState.RUNNING)
        trial.datetime_start = template.datetime_start
        session.add(trial)
        session.flush()  # gives the trial its id
        for name, value in template.params.items():
            distribution = template.distributions[name]
            session.add(
                models.TrialParamModel(
                    trial_id=trial.trial_id,
                    param_name=name,
                    param_value=distribution.to_internal_repr(value),
                    distribution_json=distribution_to_json(distribution),
                )
            )
        for key, value in template.user_attrs.items():
            session.add(_user_attr(trial.trial_id, key, value))
        return trial.trial_id


def finish(storage: RDBStorage, trial_id: int, told: FrozenTrial) -> bool:
    """Store the finished `told` over the running trial; False if it was finished already.

    Reported values and user attributes already stored (a tell that failed half-way, a saved
    outcome) are kept or updated, never duplicated."""
    with _transaction(storage) as session:
        trial = session.get(models.TrialModel, trial_id, with_for_update=True)
        if trial.state.is_finished():
            return False
        stored_steps = {
            step
            for (step,) in session.query(models.TrialIntermediateValueModel.step).filter_by(
                trial_id=trial_id
            )
        }
        for step, value in told.intermediate_values.items():
            if step in stored_steps:
                continue
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                value
            )
            session.add(
                models.TrialIntermediateValueModel(
                    trial_id=trial_id,
                    step=step,
                    intermediate_value=stored,
                    intermediate_value_type=kind,
                )
            )
        attributes = {
            row.key: row
            for row in session.query(models.TrialUserAttributeModel).filter_by(trial_id=trial_id)
        }
        for key, value in told.user_attrs.items():
            if key in attributes:
                attributes[key].value_json = json.dumps(value)
            else:
                session.add(_user_attr(trial_id, key, value))
        if told.value is not None:
            stored, kind = models.TrialValueModel.value_to_stored_repr(told.value)
            value_row = models.TrialValueModel(
                trial_id=trial_id, objective=0, value=stored, value_type=kind
            )
            session.add(value_row)
        trial.state = told.state
        trial.datetime_complete = told.datetime_complete
        return True


def _user_attr(trial_id: int, key: str, value: object) -> models.TrialUserAttributeModel:
    return models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value))
