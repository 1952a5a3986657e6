"""Model families: each one module of this package, behind the one interface `Family`. A new
family is a module here defining what `Family` lists, with its settings under `model.families`
in params.yaml (its name is the module's)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from hpo.config import Setup
from hpo.errors import PipelineError

# The number of boosting rounds, tuned in every family's search space.
N_ROUNDS = "n_estimators"


class FoldBooster(Protocol):
    """One fold's model, boosted round by round, so that a pruner can stop it early."""

    def boost_to(self, rounds: int) -> None:
        """Train until the model has `rounds` rounds."""

    def predict_valid(self) -> np.ndarray:
        """Predictions for the fold's validation rows, as hpo.tasks reads them."""


class Family(Protocol):
    """What the pipeline needs of a model library (each family module defines these)."""

    LIBRARIES: tuple[str, ...]  # imports whose versions can change a trial (study identity)
    SERVING: tuple[str, ...]  # pip distributions a served model needs besides MLflow's
    MODEL_FILE: str  # the saved model's file name, in the format `save` writes

    def problems(self, setup: Setup, space: dict[str, Any]) -> list[str]:
        """What the library refuses in the fixed settings or the search space, a line per key,
        asked of the library itself before any trial runs."""

    def fold(self, setup: Setup, x_train: pd.DataFrame, y_train: np.ndarray,
             x_valid: pd.DataFrame) -> Any:  # fmt: skip
        """One CV fold in the library's own form, built once and reused by later trials."""

    def fold_booster(self, setup: Setup, tuned: dict[str, Any], fold: Any,
                     nthread: int) -> FoldBooster:  # fmt: skip
        """A model on `fold` with the tuned values; its result must not depend on `nthread`."""

    def fit(self, setup: Setup, tuned: dict[str, Any], x: pd.DataFrame, y: np.ndarray) -> Any:
        """The final model, refit on the whole training split with the best tuned values."""

    def baseline(self, setup: Setup, x: pd.DataFrame, y: np.ndarray) -> Any:
        """A model with the library's default settings, to judge the tuned one against."""

    def predict(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        """Predictions of a model from `fit` or `baseline`."""

    def save(self, model: Any, path: Path) -> None: ...

    def load(self, path: Path) -> Any:
        """The model `save` wrote; ValueError when the file is not one."""


def load_family(name: str) -> Family:
    """The family's module; one line when its library is not installed."""
    try:
        module: Any = importlib.import_module(f"hpo.models.{name}")
    except ModuleNotFoundError as exc:
        raise PipelineError(
            f"model.family: {name} needs the {exc.name} package, not installed here; "
            f"pip install -c constraints.txt -e '.[{name}]'"
        ) from None
    return module


def refusals(
    setup: Setup,
    space: dict[str, Any],
    reserved: frozenset[str],
    refused: Callable[[str, Any], str | None],
) -> list[str]:
    """A family's `problems`: each fixed setting, and each tuned name at its bounds (or each
    of its choices), put to `refused`, which asks the library; a line per refused key."""
    settings = [("fixed", name, [value]) for name, value in setup.fixed.items()]
    settings += [
        ("search_space", name, dim.choices if dim.type == "categorical" else [dim.low, dim.high])
        for name, dim in space.items()
        if name != N_ROUNDS
    ]
    found = []
    for section, name, values in settings:
        if name in reserved or name == N_ROUNDS:
            found.append(f"{section}.{name}: set by the pipeline, not by params.yaml")
            continue
        problem = next(filter(None, (refused(name, value) for value in values)), None)
        if problem is not None:
            found.append(f"{section}.{name}: {problem}")
    rounds = space.get(N_ROUNDS)
    if rounds is None or rounds.type != "int" or rounds.low < 1:
        found.append(f"search_space.{N_ROUNDS}: needed, an int dimension with low >= 1 (rounds)")
    return found


def available_cores() -> int:
    """Cores this process may run on (honours taskset and container CPU sets)."""
    return len(os.sched_getaffinity(0))
