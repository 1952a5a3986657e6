"""LightGBM as a model family (the interface: hpo.models.Family); the `lightgbm` extra.
Every fit sets `deterministic` and `force_col_wise` (LightGBM otherwise sums histograms in a
thread-dependent order, and times row- against column-wise): trees are then identical for any
thread count (tests/test_models.py)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from hpo.models import N_ROUNDS, Setup, available_cores, refusals

LIBRARIES = ("lightgbm",)
SERVING = ("lightgbm",)
MODEL_FILE = "model.txt"
_DETERMINISM = {"deterministic": True, "force_col_wise": True, "feature_pre_filter": False}
# Set by the pipeline (task, seed, threads, determinism), with the aliases of the rounds.
RESERVED = frozenset(
    {"objective", "objective_type", "app", "application", "loss", "metric", "metrics",
     "metric_types", "num_class", "num_classes", "seed", "random_seed", "random_state",
     "num_threads", "num_thread", "nthread", "nthreads", "n_jobs", "verbosity", "verbose",
     "force_row_wise", "device_type", "device", *_DETERMINISM, "num_iterations",
     "num_iteration", "n_iter", "num_tree", "num_trees", "num_round", "num_rounds", "nrounds",
     "num_boost_round", "n_estimators", "max_iter"}
)  # fmt: skip


def booster_params(setup: Setup, tuned: dict[str, Any], nthread: int) -> dict[str, Any]:
    params: dict[str, Any] = {"objective": setup.task, "metric": "None"}  # named as the tasks
    if setup.task == "multiclass":
        params["num_class"] = setup.n_classes
    params |= {**setup.fixed, **_DETERMINISM, "seed": setup.seed, "verbosity": -1}
    params["num_threads"] = nthread
    return params | {k: v for k, v in tuned.items() if k != N_ROUNDS}


class _LogLines(list[str]):
    """LightGBM's log, kept (it reports an unknown parameter only as a warning there)."""

    def info(self, message: str) -> None:
        self.append(message)

    warning = info


_THREAD = threading.local()


def _quiet_this_thread() -> None:
    """Set this thread's log level (any call taking params does): LightGBM keeps it per thread, so
    a booster advanced on another thread than its own prints warnings, whatever its verbosity."""
    if not getattr(_THREAD, "quiet", False):
        lgb.Dataset(np.zeros((2, 1)), params={"verbosity": -1}).construct()
        _THREAD.quiet = True


def problems(setup: Setup, space: dict[str, Any]) -> list[str]:
    return refusals(setup, space, RESERVED, _refused)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """LightGBM writes its fatal errors to stderr itself, before raising them as exceptions."""
    stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)


def _refused(name: str, value: Any) -> str | None:
    """Why LightGBM will not train with `name = value` (one round on a tiny set), or None."""
    log = _LogLines()
    lgb.register_logger(log)
    try:
        with _quiet_stderr():
            lgb.train({name: value, "num_threads": 1, "verbosity": 1}, _probe(), num_boost_round=1)
    except lgb.basic.LightGBMError as exc:
        return f"LightGBM refuses {value!r} ({' '.join(str(exc).split())})"
    finally:
        lgb.register_logger(logging.getLogger("lightgbm"))
    if any(f"Unknown parameter: {name}" in line for line in log):
        close = difflib.get_close_matches(name, _known_names(), n=1)
        return "not a LightGBM parameter" + (f" (did you mean {close[0]}?)" if close else "")
    return None


def _probe() -> lgb.Dataset:
    return lgb.Dataset(np.arange(40.0).reshape(20, 2), label=np.arange(20.0))


@functools.cache
def _known_names() -> list[str]:
    """LightGBM's own parameter names, as a saved model lists them, and the scikit-learn ones."""
    text = lgb.train({"verbosity": -1}, _probe(), num_boost_round=1).model_to_string()
    return [*re.findall(r"^\[(\w+): ", text, re.MULTILINE), *lgb.LGBMRegressor().get_params()]


def fold(
    setup: Setup, x_train: pd.DataFrame, y_train: np.ndarray, x_valid: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The raw fold: each booster bins its own Dataset, as a tuned value may be a binning one."""
    return x_train, y_train, x_valid


class FoldBooster:
    def __init__(self, setup: Setup, tuned: dict[str, Any], fold: tuple, nthread: int) -> None:
        x_train, y_train, self._x_valid = fold
        params = booster_params(setup, tuned, nthread)
        self._booster = lgb.Booster(params, lgb.Dataset(x_train, y_train, params=params))
        self._rounds = 0

    def boost_to(self, rounds: int) -> None:
        _quiet_this_thread()
        while self._rounds < rounds:
            self._booster.update()
            self._rounds += 1

    def predict_valid(self) -> np.ndarray:
        return self._booster.predict(self._x_valid)


fold_booster = FoldBooster


def fit(setup: Setup, tuned: dict[str, Any], x: pd.DataFrame, y: np.ndarray) -> lgb.Booster:
    params = booster_params(setup, tuned, available_cores())
    return lgb.train(params, lgb.Dataset(x, y, params=params), num_boost_round=tuned[N_ROUNDS])


def baseline(setup: Setup, x: pd.DataFrame, y: np.ndarray) -> lgb.LGBMModel:
    """LightGBM's defaults, with the seed, the thread count and determinism set."""
    kind = lgb.LGBMRegressor if setup.task == "regression" else lgb.LGBMClassifier
    settings = {**_DETERMINISM, "random_state": setup.seed, "n_jobs": available_cores()}
    return kind(**settings, verbosity=-1).fit(x, y)


def predict(model: lgb.Booster | lgb.LGBMModel, x: pd.DataFrame) -> np.ndarray:
    if isinstance(model, lgb.LGBMClassifier):
        probabilities = model.predict_proba(x)
        return probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
    return model.predict(x)


def save(model: lgb.Booster, path: Path) -> None:
    model.save_model(path)


def load(path: Path) -> lgb.Booster:
    """The saved model; ValueError for a cut file (LightGBM would crash the process on one)."""
    text = path.read_text(errors="replace")
    if not (text.startswith("tree\n") and "\nend of parameters\n" in text):
        raise ValueError("not a whole LightGBM model file")
    try:
        with _quiet_stderr():
            return lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise ValueError(" ".join(str(exc).split())) from None
