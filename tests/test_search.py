"""The search built from params.yaml: each family's space as Optuna distributions, and the
sampler whose numeric TPE settings reach Optuna's."""

from __future__ import annotations

import optuna
import pytest
from conftest import REPO
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.config import FamilyParams, SamplerParams, load_params
from hpo.search.space import distributions, make_sampler

PARAMS = load_params(REPO / "params.yaml")
SAMPLER = PARAMS.tune.sampler


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


@pytest.mark.parametrize("family", sorted(PARAMS.model.families))
def test_each_shipped_space_is_one_distribution_per_dimension_in_order(family: str) -> None:
    space = PARAMS.model.families[family].search_space
    result = distributions(space)

    assert list(result) == list(space)
    for name, dimension in space.items():
        kind = IntDistribution if dimension.type == "int" else FloatDistribution
        assert result[name] == kind(dimension.low, dimension.high, log=dimension.log)


def test_a_categorical_dimension_and_a_step_become_optuna_s() -> None:
    space = FamilyParams.model_validate(
        {
            "search_space": {
                "grow_policy": {"type": "categorical", "choices": ["depthwise", "lossguide"]},
                "extra_trees": {"type": "categorical", "choices": [False, True]},
                "max_depth": {"type": "int", "low": 2, "high": 10, "step": 2},
                "gamma": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
            }
        }
    ).search_space

    assert distributions(space) == {
        "grow_policy": CategoricalDistribution(["depthwise", "lossguide"]),
        "extra_trees": CategoricalDistribution([False, True]),
        "max_depth": IntDistribution(2, 10, step=2),
        "gamma": FloatDistribution(0.0, 1.0, step=0.25),
    }
