"""The search built from params.yaml: each family's space as Optuna distributions, and the
per-trial samplers: their settings reach Optuna's, their seeds are independent."""

from __future__ import annotations

import importlib.util

import optuna
import pytest
from conftest import REPO
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.config import FamilyParams, SamplerParams, load_params
from hpo.errors import PipelineError
from hpo.search.space import check_sampler_installed, distributions, make_sampler

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


@pytest.mark.parametrize("key", ["tpe.n_ei_candidates", "n_startup_trials", "seed"])
def test_each_numeric_sampler_setting_changes_the_proposals(key: str) -> None:
    raw = SAMPLER.model_dump()
    section, _, name = key.rpartition(".")
    node = raw[section] if section else raw
    node[name] += 40
    changed = SamplerParams.model_validate(raw)

    assert _proposals(changed) != _proposals(SAMPLER)


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "cmaes"])
def test_neighbouring_seeds_share_no_trial(name: str) -> None:
    """Each trial's sampler seed mixes the study's seed and the trial number: seeds s and s+1
    do not ask the same trials shifted by one, as (seed + number) did."""
    sampler = SAMPLER.model_copy(update={"name": name})
    proposals = [_proposals(sampler.model_copy(update={"seed": s}), 12) for s in (1, 2)]

    assert not set(proposals[0]) & set(proposals[1])


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


@pytest.mark.parametrize(("name", "module"), [("gp", "torch"), ("cmaes", "cmaes")])
def test_a_sampler_without_its_library_is_one_line_naming_the_install(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a)
    )
    with pytest.raises(PipelineError, match=f"tune.sampler.name={name} needs the {module}"):
        check_sampler_installed(SAMPLER.model_copy(update={"name": name}))
    check_sampler_installed(SAMPLER)  # TPE needs nothing beyond Optuna
