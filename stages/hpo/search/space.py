"""The search: params.yaml's search space as Optuna distributions, and its sampler and pruner,
every flag set explicitly. A sampler is made afresh for each trial, seeded from the study's
seed and the trial's number, so what trial k samples depends on the history it sees only: a
resumed study samples as an uninterrupted one, and no two study seeds share trials."""

from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import (
    BasePruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    WilcoxonPruner,
)
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)

from hpo.errors import PipelineError

if TYPE_CHECKING:
    from hpo.config import PrunerParams, SamplerParams, SearchSpace

# What each sampler needs beyond Optuna: the module, and the install that brings it.
SAMPLER_LIBRARIES = {
    "gp": ("torch", "pip install -e '.[gp]'"),
    "cmaes": ("cmaes", "pip install cmaes"),
}


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


def trial_seed(seed: int, trial_number: int) -> int:
    """A seed for one trial: SeedSequence mixes both, so seeds s and s+1 share no trial."""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def check_sampler_installed(params: SamplerParams) -> None:
    """One line before any work when the chosen sampler's library is missing."""
    module, install = SAMPLER_LIBRARIES.get(params.name, (None, ""))
    if module is not None and importlib.util.find_spec(module) is None:
        raise PipelineError(
            f"tune.sampler.name={params.name} needs the {module} package: {install}"
        )


class _NumberedQMCSampler(QMCSampler):
    """QMC whose trial k takes point k of the sequence. Optuna counts asks in the study instead,
    which restarts when a resumed run adds its stored trials without asking them."""

    def _find_sample_id(self, study: optuna.Study, search_space: Any) -> int:
        return len(study._storage.get_all_trials(study._study_id, deepcopy=False)) - 1


def make_sampler(params: SamplerParams, trial_number: int) -> BaseSampler:
    """The sampler of trial `trial_number`, seeded for that trial alone."""
    seed, settings = trial_seed(params.seed, trial_number), params.settings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if params.name == "tpe":
            return TPESampler(seed=seed, **settings)
        if params.name == "gp":
            return GPSampler(seed=seed, **settings)
        if params.name == "cmaes":
            return CmaEsSampler(seed=seed, warn_independent_sampling=False, **settings)
        if params.name == "qmc":  # one sequence for the study: its scramble takes the study's seed
            return _NumberedQMCSampler(
                seed=params.seed, independent_sampler=RandomSampler(seed), **settings
            )
        return RandomSampler(seed=seed)


def make_pruner(params: PrunerParams) -> BasePruner:
    """The pruner a trial's probe study judges it with (hpo.search.evaluation)."""
    settings = params.settings
    if params.name == "median":
        return MedianPruner(interval_steps=params.interval_steps, **settings)
    if params.name == "percentile":
        return PercentilePruner(interval_steps=params.interval_steps, **settings)
    if params.name == "successive_halving":
        return SuccessiveHalvingPruner(**settings)
    if params.name == "wilcoxon":
        return WilcoxonPruner(**settings)
    return NopPruner()
