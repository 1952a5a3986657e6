"""The search: params.yaml's search space as Optuna distributions, and its sampler and pruner,
every flag set explicitly."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.samplers import TPESampler

if TYPE_CHECKING:
    from hpo.config import PrunerParams, SamplerParams, SearchSpace


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """One Optuna distribution per hyperparameter, in params.yaml order."""
    result: dict[str, BaseDistribution] = {}
    for name, dim in space.items():
        if dim.type == "categorical":
            result[name] = CategoricalDistribution(dim.choices)
        elif dim.type == "float":
            result[name] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            result[name] = IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return result


def make_sampler(params: SamplerParams, trial_number: int) -> TPESampler:
    """TPE seeded by (seed + trial number), not one random stream per run: what trial k samples
    depends on the history it sees only, so a resumed study samples as an uninterrupted one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TPESampler(
            seed=params.seed + trial_number,
            n_startup_trials=params.n_startup_trials,
            n_ei_candidates=params.n_ei_candidates,
            multivariate=params.multivariate,
            constant_liar=params.constant_liar,
        )


def make_pruner(params: PrunerParams) -> BasePruner:
    if params.name == "none":
        return NopPruner()
    return MedianPruner(
        n_startup_trials=params.n_startup_trials,
        n_warmup_steps=params.n_warmup_steps,
        interval_steps=params.interval_steps,
    )
