"""The search space as Optuna distributions, and trial params as XGBoost booster params."""

from __future__ import annotations

import os
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from hpo.config import IntRange, ModelParams, SearchSpace

# n_estimators is the number of boosting rounds, not a booster parameter.
N_ROUNDS = "n_estimators"


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """One Optuna distribution per search dimension, in params.yaml order."""
    result: dict[str, BaseDistribution] = {}
    for name, bounds in space:
        if isinstance(bounds, IntRange):
            result[name] = IntDistribution(bounds.low, bounds.high, log=bounds.log)
        else:
            result[name] = FloatDistribution(bounds.low, bounds.high, log=bounds.log)
    return result


def available_cores() -> int:
    """Cores this process may run on (honours taskset and container CPU sets)."""
    return len(os.sched_getaffinity(0))


def threads_per_fit(parallel_fits: int) -> int:
    """cores // parallel fits, at least 1: parallel fits must not oversubscribe the cores."""
    return max(1, available_cores() // parallel_fits)


def booster_params(
    model: ModelParams, tuned: dict[str, Any], nthread: int | None = None
) -> dict[str, Any]:
    """XGBoost's native params for one fit: the fixed model settings plus the tuned values.

    Without `nthread`, whoever runs the fit sets it: the thread count never changes a result.
    """
    params: dict[str, Any] = {
        "objective": "reg:squarederror",
        "eval_metric": "rmse",
        "tree_method": model.tree_method,
        "max_bin": model.max_bin,
        "seed": model.seed,
        # Reseed from (seed, iteration) each round: a booster moved between threads samples
        # the same rows and columns whichever thread runs it (the default RNG is per thread).
        "seed_per_iteration": True,
        "verbosity": 1,
    }
    if nthread is not None:
        params["nthread"] = nthread
    params.update({k: v for k, v in tuned.items() if k != N_ROUNDS})
    return params
