"""The sampler built from params.yaml: its numeric TPE settings reach Optuna's sampler."""

from __future__ import annotations

import optuna
import pytest
from conftest import REPO

from hpo.config import SamplerParams, load_params
from hpo.trial.space import make_sampler

SAMPLER = load_params(REPO / "params.yaml").tune.sampler


def _proposals(sampler_params: SamplerParams, n_trials: int = 30) -> list[float]:
    """x proposed by the pipeline's per-trial samplers on a 1-d quadratic, in trial order."""
    study = optuna.create_study()
    for number in range(n_trials):
        study.sampler = make_sampler(sampler_params, trial_number=number)
        trial = study.ask()
        x = trial.suggest_float("x", -5.0, 5.0)
        study.tell(trial, (x - 1.0) ** 2)
    return [t.params["x"] for t in study.trials]


def test_the_same_settings_propose_the_same_values() -> None:
    assert _proposals(SAMPLER) == _proposals(SAMPLER)


@pytest.mark.parametrize("key", ["n_ei_candidates", "n_startup_trials", "seed"])
def test_each_numeric_sampler_setting_changes_the_proposals(key: str) -> None:
    changed = SAMPLER.model_copy(update={key: getattr(SAMPLER, key) + 40})

    assert _proposals(changed) != _proposals(SAMPLER)
