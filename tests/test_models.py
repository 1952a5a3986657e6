"""The model families behind one interface (hpo.models), and the cross-validation that scores
their trials by the task's metrics (hpo.search.evaluation, hpo.tasks), for each family and
task: each family's determinism, its final and saved model, the shape of its predictions, what
it refuses before a search starts, its categorical features, and CV equal to scikit-learn's."""

from __future__ import annotations

import functools
import importlib.util
import logging
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
import pytest
import xgboost as xgb
from conftest import REPO, evidence_of, subprocess_env, tiered
from optuna.trial import TrialState
from sklearn.base import BaseEstimator
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

from hpo.config import FAMILIES as FAMILY_MODULES
from hpo.config import FamilyParams, PrunerParams, SearchSpace, load_params
from hpo.errors import PipelineError
from hpo.models import N_ROUNDS, Family, Setup, load_family
from hpo.search.evaluation import TrainingData, evaluate_trial, make_folds
from hpo.search.space import distributions
from hpo.search.trial import PrunerEvidence, TrialOutcome, TrialTask
from hpo.tasks import METRICS, direction, holdout_report

PARAMS = load_params(REPO / "params.yaml")
FAMILIES = ("xgboost", "lightgbm")  # each has its entries in this module's tables
TASKS = ("regression", "binary", "multiclass")
FAMILY_TASKS = [pytest.param(f, t, id=f"{f}-{t}") for f in FAMILIES for t in TASKS]
LIBRARY = {"xgboost": "an XGBoost", "lightgbm": "a LightGBM"}  # as problems() names it
SHIPPED_TABLE, TARGET = REPO / "data/california_housing.csv.gz", "MedHouseVal"
REGRESSION_ROWS = 1200  # a slice of the shipped table: the default tier stays fast
SEED, CV_SEED, ROUNDS, EVERY = 3, 7, 12, 5
# Row and column sampling on, so that the seeding of each round is part of what is checked.
TUNED: dict[str, dict[str, Any]] = {
    "xgboost": {"max_depth": 4, "learning_rate": 0.3, "subsample": 0.7, "colsample_bytree": 0.7},
    "lightgbm": {
        "num_leaves": 15,
        "learning_rate": 0.3,
        "bagging_fraction": 0.7,
        "feature_fraction": 0.7,
        "min_child_samples": 5,
    },
}
NO_PRUNER = PrunerParams(name="none", n_startup_trials=0, n_warmup_steps=0, interval_steps=EVERY)
# Prunes from the first checkpoint on, against the evidence of a single complete trial.
EAGER_PRUNER = PrunerParams(
    name="median", n_startup_trials=1, n_warmup_steps=0, interval_steps=EVERY
)
SET_BY_PIPELINE = "set by the pipeline, not by params.yaml"
ROUNDS_NEEDED = "search_space.n_estimators: needed, an int dimension with low >= 1 (rounds)"


# --- data and helpers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    task: str
    x: pd.DataFrame
    y: np.ndarray  # float targets, or class codes 0..k-1 (as hpo.data.Split holds them)
    n_classes: int  # 0 for regression


@functools.cache
def dataset(task: str, rows: int | None = REGRESSION_ROWS) -> Dataset:
    """Regression: a slice of the shipped table; binary and multiclass: scikit-learn's bundled
    breast cancer and wine tables (no download)."""
    if task == "regression":
        frame = pd.read_csv(SHIPPED_TABLE, nrows=rows)
        return Dataset(task, frame.drop(columns=TARGET), frame[TARGET].to_numpy(np.float64), 0)
    bunch = {"binary": load_breast_cancer, "multiclass": load_wine}[task](as_frame=True)
    y = bunch.target.to_numpy(np.int64)
    return Dataset(task, bunch.data, y, len(np.unique(y)))


def halves(data: Dataset) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """A seeded two-thirds / one-third split of the rows (load_wine is sorted by class)."""
    order = np.random.default_rng(0).permutation(len(data.y))
    train, valid = order[: len(order) * 2 // 3], order[len(order) * 2 // 3 :]
    return data.x.iloc[train], data.y[train], data.x.iloc[valid], data.y[valid]


def with_colour(data: Dataset) -> Dataset:
    """`data` with a text feature (a pandas categorical) missing in a fifth of the rows; a
    regression target moves with it, so that a model that ignores it cannot fit."""
    rng = np.random.default_rng(1)
    names = np.array(["blue", "green", "grey", "red"])  # sorted: code i adds 2 i
    codes = rng.integers(0, len(names), len(data.y))
    colour = pd.Categorical(names[codes], categories=names)
    colour[rng.random(len(data.y)) < 0.2] = np.nan
    y = data.y + 2.0 * codes if data.task == "regression" else data.y
    return Dataset(data.task, data.x.assign(colour=colour), y, data.n_classes)


def family_setup(family: str, data: Dataset, seed: int = SEED) -> Setup:
    """The Setup a study of `family` has, with params.yaml's fixed settings."""
    return Setup(data.task, data.n_classes, seed, dict(PARAMS.model.families[family].fixed))


def tuned(family: str, rounds: int = ROUNDS, **values: Any) -> dict[str, Any]:
    return {**TUNED[family], **values, N_ROUNDS: rounds}


def in_new_thread(work: Callable[[], None]) -> None:
    """Run `work` on a threading.Thread of its own; re-raise what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]


def boosted(
    family: str,
    data: Dataset,
    nthread: int,
    checkpoints: Sequence[int],
    threads: bool = False,
    values: dict[str, Any] | None = None,
    seed: int = SEED,
) -> np.ndarray:
    """Validation predictions of one fold booster advanced to each checkpoint in turn, each
    step on a new thread when `threads`."""
    models, setup = load_family(family), family_setup(family, data, seed)
    x_train, y_train, x_valid, _ = halves(data)
    fold = models.fold(setup, x_train, y_train, x_valid)
    booster = models.fold_booster(setup, values or tuned(family), fold, nthread)
    for rounds in checkpoints:
        if threads:
            in_new_thread(functools.partial(booster.boost_to, rounds))
        else:
            booster.boost_to(rounds)
    return booster.predict_valid()


def check_task_shape(data: Dataset, y: np.ndarray, predicted: np.ndarray) -> None:
    """Predictions as hpo.tasks reads them: values (n,) for regression, the probability of
    class 1 (n,) for binary, a row of class probabilities (n, k) for multiclass."""
    n = len(y)
    if data.task == "multiclass":
        assert predicted.shape == (n, data.n_classes)
        np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=0, atol=1e-5)
    else:
        assert predicted.shape == (n,)
    if data.task != "regression":
        assert ((predicted >= 0) & (predicted <= 1)).all()
    report = holdout_report(data.task, y, predicted)  # type: ignore[arg-type]
    assert np.isfinite(list(report.values())).all(), report


def space_of(dimensions: dict[str, dict[str, Any]]) -> SearchSpace:
    """A search space as params.yaml gives it (validated as the stages validate it)."""
    return FamilyParams.model_validate({"search_space": dimensions}).search_space


def shipped(family: str) -> FamilyParams:
    return PARAMS.model.families[family]


def problems(
    family: str, space: SearchSpace | None = None, fixed: dict[str, Any] | None = None
) -> list[str]:
    """What the family reports of a space and fixed settings (params.yaml's by default)."""
    settings = shipped(family)
    setup = Setup("regression", 0, SEED, dict(settings.fixed if fixed is None else fixed))
    return load_family(family).problems(setup, settings.search_space if space is None else space)


def with_dimension(family: str, name: str, dimension: dict[str, Any]) -> SearchSpace:
    """The shipped space of `family` with one dimension added or replaced."""
    return {**shipped(family).search_space, **space_of({name: dimension})}


def training_data(
    family: str,
    data: Dataset,
    metric: str,
    pruner: PrunerParams = NO_PRUNER,
    n_folds: int = 2,
) -> TrainingData:
    setup = family_setup(family, data)
    return TrainingData(data.x, data.y, family, setup, metric, n_folds, CV_SEED, pruner)


def trial(
    training: TrainingData,
    values: dict[str, Any],
    evidence: PrunerEvidence | None = None,
    nthread: int = 1,
) -> TrialOutcome:
    """One trial evaluated as a local thread or a Dask worker evaluates it."""
    task = TrialTask(0, values, evidence or evidence_of([]))
    return evaluate_trial(task, training, nthread)


def evidence_at(value: float, rounds: int = ROUNDS) -> PrunerEvidence:
    """One complete trial that scored `value` at every checkpoint."""
    return evidence_of([(value, dict.fromkeys(range(EVERY, rounds + 1, EVERY), value))])


# --- determinism: the guarantee each family makes ---------------------------------------------

# The reference is one thread, all rounds at once, on the test's own thread.
WAYS = {
    "two threads": (2, [ROUNDS], False),
    "checkpoint by checkpoint": (1, [EVERY, EVERY, 2 * EVERY, ROUNDS], False),
    "moved between threads": (2, [EVERY, ROUNDS], True),
}


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_fold_predictions_do_not_depend_on_how_the_booster_is_run(
    family: str, task: str, way: str
) -> None:
    nthread, checkpoints, threads = WAYS[way]
    data = dataset(task)
    reference = boosted(family, data, nthread=1, checkpoints=[ROUNDS])
    advanced = boosted(family, data, nthread, checkpoints, threads)

    assert np.array_equal(advanced, reference)


@pytest.mark.exhaustive  # the whole shipped table: thousands of rows per thread's block
@pytest.mark.parametrize("family", FAMILIES)
def test_fold_predictions_on_the_whole_table_do_not_depend_on_threads(family: str) -> None:
    data = dataset("regression", rows=None)
    deep = {"xgboost": {"max_depth": 8}, "lightgbm": {"num_leaves": 127}}[family]
    values = tuned(family, 40, **deep)
    reference = boosted(family, data, 1, [40], values=values)

    assert np.array_equal(boosted(family, data, 2, [40], values=values), reference)
    assert np.array_equal(boosted(family, data, 2, [10, 25, 40], True, values), reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_seed_and_each_checkpoint_reach_the_fold_booster(family: str) -> None:
    """What the determinism checks compare is sampled and grows round by round."""
    data = dataset("regression")
    final = boosted(family, data, 1, [ROUNDS])

    assert not np.array_equal(boosted(family, data, 1, [ROUNDS], seed=SEED + 1), final)
    assert not np.array_equal(boosted(family, data, 1, [EVERY]), final)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_booster_moved_between_threads_prints_nothing(
    family: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """LightGBM keeps its log level per thread: a booster advanced on a thread other than the
    one that made it would print a warning a round (deep trees on 178 rows)."""
    data = dataset("multiclass")
    values = tuned(family, max_depth=12) if family == "xgboost" else tuned(family, num_leaves=63)
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        boosted(family, data, 2, [EVERY, ROUNDS], threads=True, values=values)

    assert capfd.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records if r.name in ("lightgbm", "xgboost")] == []


# --- the final model, saved and loaded ------------------------------------------------------


@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_fit_repeats_and_its_saved_model_predicts_the_same(
    family: str, task: str, tmp_path: Path
) -> None:
    models, data = load_family(family), dataset(task)
    setup, (x_train, y_train, x_valid, _) = family_setup(family, data), halves(data)
    model = models.fit(setup, tuned(family), x_train, y_train)
    predicted = models.predict(model, x_valid)
    path = tmp_path / models.MODEL_FILE
    models.save(model, path)

    assert np.array_equal(
        models.predict(models.fit(setup, tuned(family), x_train, y_train), x_valid), predicted
    )
    assert np.array_equal(models.predict(models.load(path), x_valid), predicted)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_the_final_model_is_the_model_cv_scored(family: str, task: str) -> None:
    """fit() on a fold's training rows predicts what that fold's booster predicted."""
    models, data = load_family(family), dataset(task)
    setup, (x_train, y_train, x_valid, _) = family_setup(family, data), halves(data)
    model = models.fit(setup, tuned(family), x_train, y_train)

    assert np.array_equal(models.predict(model, x_valid), boosted(family, data, 1, [ROUNDS]))


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda _good: b"\x00\xff not what was here \x13\x37" * 64,
    "empty": lambda _good: b"",
    "a text": lambda _good: b'{"learner": "nothing"}\n',
}
DAMAGE_CASES = [pytest.param(f, d, id=f"{f}-{d}") for f in FAMILIES for d in DAMAGE]


def saved_model(family: str, folder: Path) -> Path:
    models, data = load_family(family), dataset("regression")
    path = folder / models.MODEL_FILE
    models.save(models.fit(family_setup(family, data), tuned(family), data.x, data.y), path)
    return path


@pytest.mark.parametrize(("family", "damage"), DAMAGE_CASES)
def test_load_of_a_file_that_is_not_a_model_is_a_value_error(
    family: str, damage: str, tmp_path: Path
) -> None:
    path = saved_model(family, tmp_path)
    path.write_bytes(DAMAGE[damage](path.read_bytes()))

    with pytest.raises(ValueError, match=r"\S") as caught:
        load_family(family).load(path)

    assert "\n" not in str(caught.value)
    assert "Stack trace" not in str(caught.value)  # the reason, not the library's native frames


@pytest.mark.parametrize("family", FAMILIES)
def test_load_of_a_damaged_file_prints_nothing(
    family: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The evaluate stage reports a damaged model as its one line; the library adds none."""
    path = saved_model(family, tmp_path)
    path.write_bytes(DAMAGE["garbage"](b""))
    capfd.readouterr()
    with pytest.raises(ValueError, match=r"\S"):
        load_family(family).load(path)

    assert capfd.readouterr() == ("", "")


LOAD_IN_A_PROCESS = """
import sys
from pathlib import Path
from hpo.models import load_family
try:
    load_family(sys.argv[1]).load(Path(sys.argv[2]))
except ValueError:
    print("ValueError")
"""
CUTS = {"half": 0.5, "a tenth": 0.1, "all but the last bytes": 0.99}


@pytest.mark.parametrize(
    ("family", "cut"),
    tiered(
        [pytest.param(f, c, id=f"{f}-{c}") for f in FAMILIES for c in CUTS],
        default={"xgboost-half", "lightgbm-half"},
    ),
)
def test_load_of_a_truncated_file_is_a_value_error(family: str, cut: str, tmp_path: Path) -> None:
    """What a full disk or a killed copy leaves (tests/test_damaged_files.py cuts in half). In
    a process of its own: a native library may abort the process instead of raising."""
    path = saved_model(family, tmp_path)
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * CUTS[cut])])
    done = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_PROCESS, family, str(path)],
        env=subprocess_env({"PYTHONPATH": str(REPO / "stages")}),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert (done.returncode, done.stdout) == (0, "ValueError\n"), done.stderr[-2000:]


# --- predictions in the shape hpo.tasks reads -------------------------------------------------


def _fold_booster_predictions(family: str, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return halves(data)[3], boosted(family, data, 1, [ROUNDS])


def _fit_predictions(family: str, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    models, (x_train, y_train, x_valid, y_valid) = load_family(family), halves(data)
    model = models.fit(family_setup(family, data), tuned(family), x_train, y_train)
    return y_valid, models.predict(model, x_valid)


def _baseline_predictions(family: str, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    models, (x_train, y_train, x_valid, y_valid) = load_family(family), halves(data)
    model = models.baseline(family_setup(family, data), x_train, y_train)
    return y_valid, models.predict(model, x_valid)


# A model of each kind -> (validation targets, its predictions for them).
MODEL_KINDS: dict[str, Callable[[str, Dataset], tuple[np.ndarray, np.ndarray]]] = {
    "fold booster": _fold_booster_predictions,
    "fit": _fit_predictions,
    "baseline": _baseline_predictions,
}


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_predictions_have_the_shape_of_the_task(family: str, task: str, kind: str) -> None:
    data = dataset(task)
    y, predicted = MODEL_KINDS[kind](family, data)

    check_task_shape(data, y, predicted)


# --- problems(): what a family refuses before a search starts --------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shipped_search_spaces_have_no_problems(family: str) -> None:
    assert problems(family) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_a_misspelt_name_is_not_a_parameter_of_the_library(family: str) -> None:
    found = problems(
        family, with_dimension(family, "max_dept", {"type": "int", "low": 3, "high": 6})
    )

    assert found == [
        f"search_space.max_dept: not {LIBRARY[family]} parameter (did you mean max_depth?)"
    ]


def _misspelt(name: str) -> str:
    """`name` with its middle letter left out."""
    return name[: len(name) // 2] + name[len(name) // 2 + 1 :]


SHIPPED_NAMES = [
    pytest.param(family, section, name, id=f"{family}-{name}")
    for family in FAMILIES
    for section, names in (
        ("search_space", shipped(family).search_space),
        ("fixed", shipped(family).fixed),
    )
    for name in names
]


@pytest.mark.parametrize(("family", "section", "name"), SHIPPED_NAMES)
def test_a_misspelt_shipped_name_is_pointed_at_the_name(
    family: str, section: str, name: str
) -> None:
    """Each name params.yaml ships, misspelt: the hint is drawn from the library's own names
    (LightGBM's native ones, bagging_fraction, lambda_l2, ..., not only its scikit-learn
    wrapper's)."""
    typo, settings = _misspelt(name), shipped(family)
    if section == "fixed":
        found = problems(family, fixed={**settings.fixed, typo: settings.fixed[name]})
    else:
        found = problems(family, {**settings.search_space, typo: settings.search_space[name]})

    assert found == [f"{section}.{typo}: not {LIBRARY[family]} parameter (did you mean {name}?)"]


def _refused(family: str, section: str, name: str, setting: Any, reason: str) -> Any:
    return pytest.param(family, section, name, setting, reason, id=f"{family}-{section}-{name}")


PAST_ONE = {"type": "float", "low": 0.5, "high": 1.5}
NO_SUCH_POLICY = {"type": "categorical", "choices": ["depthwise", "sideways"]}
NO_SUCH_BOOSTING = {"type": "categorical", "choices": ["gbdt", "sideways"]}
# (family, section, name, setting, how the line goes on after "<section>.<name>: ")
REFUSED = [
    _refused("xgboost", "search_space", "subsample", PAST_ONE, "XGBoost refuses 1.5 ("),
    _refused(
        "xgboost", "search_space", "grow_policy", NO_SUCH_POLICY, "XGBoost refuses 'sideways'"
    ),
    _refused("xgboost", "fixed", "max_bin", 1, "XGBoost refuses 1 ("),
    _refused("xgboost", "fixed", "updater", "nope", "XGBoost refuses 'nope' ("),  # a native check
    _refused("lightgbm", "search_space", "bagging_fraction", PAST_ONE, "LightGBM refuses 1.5 ("),
    _refused(
        "lightgbm", "search_space", "boosting", NO_SUCH_BOOSTING, "LightGBM refuses 'sideways'"
    ),
    _refused("lightgbm", "fixed", "max_bin", 1, "LightGBM refuses 1 ("),
]


@pytest.mark.parametrize(("family", "section", "name", "setting", "reason"), REFUSED)
def test_a_value_the_library_refuses_is_reported(
    family: str, section: str, name: str, setting: Any, reason: str
) -> None:
    if section == "fixed":
        found = problems(family, fixed={**shipped(family).fixed, name: setting})
    else:
        found = problems(family, with_dimension(family, name, setting))

    assert len(found) == 1, found
    assert found[0].startswith(f"{section}.{name}: {reason}"), found
    assert found[0].endswith(")"), found  # the library's reason, in brackets
    assert "\n" not in found[0]
    assert "Stack trace" not in found[0], found  # the reason, not the library's native frames


@pytest.mark.parametrize("family", FAMILIES)
def test_problems_print_nothing(family: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The tune stage reports each problem as its one line; the library adds none."""
    space = with_dimension(family, "max_dept", {"type": "int", "low": 3, "high": 6})
    capfd.readouterr()
    found = problems(family, space, fixed={**shipped(family).fixed, "max_bin": 1})

    assert len(found) == 2, found
    assert capfd.readouterr() == ("", "")


RESERVED = {
    "xgboost": ("seed", "random_state", "objective", "nthread", "n_jobs", "n_estimators"),
    # LightGBM's aliases of the names the pipeline sets: nthread is num_threads to it.
    "lightgbm": (
        "seed",
        "random_seed",
        "objective",
        "num_threads",
        "nthread",
        "n_estimators",
        "num_iterations",
        "deterministic",
    ),
}


@pytest.mark.parametrize(
    ("family", "name"),
    [pytest.param(f, name, id=f"{f}-{name}") for f, names in RESERVED.items() for name in names],
)
def test_a_name_the_pipeline_sets_is_reported_in_either_section(family: str, name: str) -> None:
    space = with_dimension(family, name, {"type": "int", "low": 1, "high": 2})
    found = problems(family, space, fixed={**shipped(family).fixed, name: 1})

    assert f"fixed.{name}: {SET_BY_PIPELINE}" in found
    if name != N_ROUNDS:  # the rounds are tuned, in every space
        assert f"search_space.{name}: {SET_BY_PIPELINE}" in found
    assert len(found) == (1 if name == N_ROUNDS else 2), found


ROUNDS_DIMENSIONS: dict[str, dict[str, Any] | None] = {
    "missing": None,
    "a float": {"type": "float", "low": 10.0, "high": 20.0},
    "below one": {"type": "int", "low": 0, "high": 20},
    "categorical": {"type": "categorical", "choices": [10, 20]},
}


@pytest.mark.parametrize("case", list(ROUNDS_DIMENSIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_space_without_rounds_is_reported(family: str, case: str) -> None:
    space = {k: v for k, v in shipped(family).search_space.items() if k != N_ROUNDS}
    dimension = ROUNDS_DIMENSIONS[case]
    if dimension is not None:
        space |= space_of({N_ROUNDS: dimension})

    assert problems(family, space) == [ROUNDS_NEEDED]


CATEGORICAL = {
    "xgboost": ("grow_policy", ["depthwise", "lossguide"], {"max_leaves": 6}),
    "lightgbm": ("extra_trees", [False, True], {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_categorical_dimension_is_sampled_and_reaches_the_library(family: str) -> None:
    """A categorical dimension from params.yaml through Optuna into trials, each choice
    training a different model."""
    name, choices, others = CATEGORICAL[family]
    constant = {k: {"type": "int", "low": v, "high": v} for k, v in others.items()}
    space = space_of(
        {
            N_ROUNDS: {"type": "int", "low": ROUNDS, "high": ROUNDS},
            **constant,
            name: {"type": "categorical", "choices": choices},
        }
    )
    study = optuna.create_study()
    for choice in choices:
        study.enqueue_trial({name: choice})
    sampled = [study.ask(distributions(space)).params for _ in choices]
    training = training_data(family, dataset("regression"), "mse")
    outcomes = [trial(training, {**TUNED[family], **values}) for values in sampled]

    assert problems(family, space) == []
    assert [values[name] for values in sampled] == choices
    assert [o.state for o in outcomes] == [TrialState.COMPLETE] * len(choices), outcomes
    assert outcomes[0].value != outcomes[1].value


@pytest.mark.parametrize("family", FAMILIES)
def test_a_binning_value_in_the_space_is_reported_or_trains(family: str) -> None:
    """Whatever problems() lets through must train: a tuned max_bin either is reported before
    the search, or bins each trial's data with the trial's own value."""
    space = with_dimension(family, "max_bin", {"type": "int", "low": 16, "high": 64})
    found = problems(family, space)
    training = training_data(family, dataset("regression"), "mse")
    outcomes = [trial(training, tuned(family, max_bin=bins)) for bins in (16, 64)]
    failed = [
        str(o.error).split(" Stack trace:")[0] for o in outcomes if o.state != TrialState.COMPLETE
    ]

    assert found or not failed, f"problems() accepted max_bin, whose trials fail: {failed}"
    assert not found or all(line.startswith("search_space.max_bin: ") for line in found)


# --- categorical features --------------------------------------------------------------------


@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_categorical_features_with_missing_values_train_and_predict(
    family: str, task: str, tmp_path: Path
) -> None:
    models, data = load_family(family), with_colour(dataset(task))
    setup, (x_train, y_train, x_valid, y_valid) = family_setup(family, data), halves(data)
    model = models.fit(setup, tuned(family), x_train, y_train)
    predicted = models.predict(model, x_valid)
    models.save(model, tmp_path / models.MODEL_FILE)
    fold = models.fold(setup, x_train, y_train, x_valid)
    booster = models.fold_booster(setup, tuned(family), fold, 2)
    booster.boost_to(ROUNDS)

    check_task_shape(data, y_valid, predicted)
    assert x_valid["colour"].isna().any()
    assert np.array_equal(
        models.predict(models.load(tmp_path / models.MODEL_FILE), x_valid), predicted
    )
    assert np.array_equal(booster.predict_valid(), predicted)
    baseline = models.baseline(setup, x_train, y_train)
    check_task_shape(data, y_valid, models.predict(baseline, x_valid))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_categorical_feature_is_learned_and_a_missing_one_predicted(family: str) -> None:
    """The regression target moves by 2 per colour: the model follows the colour of a row."""
    models, data = load_family(family), with_colour(dataset("regression"))
    x_train, y_train, x_valid, _ = halves(data)
    model = models.fit(family_setup(family, data), tuned(family, 40), x_train, y_train)

    def predicted_as(colour: str | None) -> np.ndarray:
        values = pd.Categorical([colour] * len(x_valid), x_valid["colour"].cat.categories)
        return models.predict(model, x_valid.assign(colour=values))

    red_minus_blue = predicted_as("red") - predicted_as("blue")  # codes 3 and 0: 6 apart
    assert np.median(red_minus_blue) > 3.0
    assert np.isfinite(predicted_as(None)).all()


# --- the family a study names: installed or not ---------------------------------------------


def test_a_family_whose_library_is_missing_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` now fails
    monkeypatch.delitem(sys.modules, "hpo.models.lightgbm", raising=False)
    with pytest.raises(PipelineError) as caught:
        load_family("lightgbm")
    message = str(caught.value)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    assert "\n" not in message
    assert message.startswith("model.family: lightgbm needs the lightgbm package")
    assert "pip install" in message
    assert "'.[lightgbm]'" in message
    assert "lightgbm" in extras


def test_every_family_module_is_tested_here() -> None:
    """A new module in hpo/models: add it to FAMILIES and to this module's per-family tables."""
    assert sorted(FAMILIES) == sorted(FAMILY_MODULES)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_defines_the_interface(family: str) -> None:
    models: Family = load_family(family)
    names = [*Family.__annotations__, *(n for n in vars(Family) if not n.startswith("_"))]

    assert [n for n in names if not hasattr(models, n)] == []
    assert Path(models.MODEL_FILE).suffix
    assert all(importlib.util.find_spec(library) for library in models.LIBRARIES)


# --- cross-validation, scored by the task's metrics -----------------------------------------


def sklearn_estimator(family: str, task: str) -> BaseEstimator:
    """The library's own scikit-learn model with the settings of a trial's fit."""
    fixed, values = dict(shipped(family).fixed), tuned(family)
    if family == "xgboost":
        kind = xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier
        return kind(
            **values,
            **fixed,
            tree_method="hist",
            random_state=SEED,
            seed_per_iteration=True,
            n_jobs=1,
        )
    kind = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
    return kind(
        **values,
        **fixed,
        random_state=SEED,
        n_jobs=1,
        deterministic=True,
        force_col_wise=True,
        feature_pre_filter=False,
        verbosity=-1,
    )


# metric -> (scikit-learn scorer, its value as the metric, relative tolerance). scikit-learn's
# log loss clips and renormalises float32 probabilities in float32: equal to about 1e-7.
SCORERS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], float]] = {
    "mse": ("neg_mean_squared_error", np.negative, 1e-12),
    "rmse": ("neg_root_mean_squared_error", np.negative, 1e-12),
    "mae": ("neg_mean_absolute_error", np.negative, 1e-12),
    "logloss": ("neg_log_loss", np.negative, 1e-6),
    "auc": ("roc_auc", np.asarray, 1e-12),
    "error": ("accuracy", lambda accuracy: 1 - accuracy, 1e-12),
    "mlogloss": ("neg_log_loss", np.negative, 1e-6),
    "merror": ("accuracy", lambda accuracy: 1 - accuracy, 1e-12),
}
TASK_OF = {metric: task for task, metrics in METRICS.items() for metric in metrics}


@pytest.mark.parametrize(
    ("family", "metric"),
    tiered(
        [pytest.param(f, m, id=f"{f}-{m}") for f in FAMILIES for m in SCORERS],
        default={"xgboost-mse", "lightgbm-mse", "xgboost-auc", "lightgbm-mlogloss"},
    ),
)
def test_cv_equals_scikit_learn_cross_validation(family: str, metric: str) -> None:
    task = TASK_OF[metric]
    data = dataset(task)
    outcome = trial(training_data(family, data, metric, n_folds=3), tuned(family))
    splitter = (KFold if task == "regression" else StratifiedKFold)(
        3, shuffle=True, random_state=CV_SEED
    )
    scorer, as_metric, rtol = SCORERS[metric]
    expected = as_metric(
        cross_val_score(
            sklearn_estimator(family, task), data.x, data.y, cv=splitter, scoring=scorer
        )
    )

    assert outcome.state == TrialState.COMPLETE, outcome.error
    assert outcome.result is not None
    np.testing.assert_allclose(outcome.result.fold_scores, expected, rtol=rtol, atol=1e-15)
    assert outcome.value == pytest.approx(float(np.mean(expected)), rel=rtol, abs=1e-15)
    assert list(outcome.result.curve) == [EVERY, 2 * EVERY, ROUNDS]
    assert outcome.result.curve[ROUNDS] == outcome.value
    assert not outcome.result.stopped_early


@pytest.mark.parametrize("family", FAMILIES)
def test_the_last_checkpoint_is_n_estimators_even_off_the_interval(family: str) -> None:
    outcome = trial(training_data(family, dataset("regression"), "mse"), tuned(family, 12))

    assert outcome.state == TrialState.COMPLETE, outcome.error
    assert outcome.result is not None
    assert list(outcome.result.curve) == [5, 10, 12]
    assert outcome.result.curve[12] == outcome.value
    assert len(outcome.result.fold_scores) == 2
    assert list(outcome.reported) == [5, 10]  # the pruner's steps: the interval's


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pruned_trial_has_no_final_fold_scores(family: str) -> None:
    training = training_data(family, dataset("regression"), "mse", EAGER_PRUNER)
    outcome = trial(training, tuned(family), evidence_at(0.0))  # a perfect trial before it

    assert outcome.state == TrialState.PRUNED
    assert outcome.result is not None
    assert outcome.result.stopped_early
    assert outcome.result.fold_scores == []
    assert outcome.value is None
    assert list(outcome.result.curve) == [EVERY]
    assert outcome.reported == outcome.result.curve


def test_auc_is_maximised_and_the_losses_minimised() -> None:
    assert direction("auc") == "maximize"
    assert {direction(m) for ms in METRICS.values() for m in ms if m != "auc"} == {"minimize"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_trial_scored_by_auc_is_judged_as_maximised(family: str) -> None:
    """AUC in [0, 1] at every checkpoint; a better trial before it prunes it, a worse does not."""
    training = training_data(family, dataset("binary"), "auc", EAGER_PRUNER)
    better = trial(training, tuned(family), evidence_at(1.0))
    worse = trial(training, tuned(family), evidence_at(0.5))

    assert worse.state == TrialState.COMPLETE, worse.error
    assert worse.result is not None
    values = [*worse.result.curve.values(), *worse.result.fold_scores]
    assert all(0.5 < value <= 1.0 for value in values), values
    assert better.state == TrialState.PRUNED


@pytest.mark.parametrize(
    ("family", "task"), [p for p in FAMILY_TASKS if p.values[1] != "regression"]
)
def test_classification_folds_are_stratified(family: str, task: str) -> None:
    """Each validation fold holds each class in its share of the rows, give or take one."""
    data = dataset(task)
    n_folds = 5
    folds = make_folds(training_data(family, data, METRICS[task][0], n_folds=n_folds))
    totals = np.bincount(data.y, minlength=data.n_classes)

    assert sum(len(fold.y_valid) for fold in folds) == len(data.y)
    for fold in folds:
        counts = np.bincount(fold.y_valid, minlength=data.n_classes)
        assert (counts > 0).all(), counts
        assert (counts >= totals // n_folds).all(), counts
        assert (counts <= -(-totals // n_folds)).all(), counts


@pytest.mark.parametrize("family", FAMILIES)
def test_regression_folds_are_the_seeded_k_fold_split(family: str) -> None:
    data = dataset("regression")
    folds = make_folds(training_data(family, data, "mse", n_folds=3))
    expected = KFold(3, shuffle=True, random_state=CV_SEED).split(data.x)

    assert [f.y_valid.tolist() for f in folds] == [data.y[v].tolist() for _, v in expected]


# Values the library takes only to refuse them once training starts: a native check fails.
REFUSED_IN_TRAINING = {"xgboost": {"updater": "nope"}, "lightgbm": {"num_leaves": 1}}
ERROR_TYPE = {"xgboost": "XGBoostError", "lightgbm": "LightGBMError"}


@pytest.mark.filterwarnings("ignore:.*`updater`")  # XGBoost's notice that it was set by hand
@pytest.mark.parametrize("family", FAMILIES)
def test_a_trial_the_library_refuses_fails_with_one_line_saying_why(family: str) -> None:
    """A FAIL outcome, not an exception: the study records the line and goes on."""
    training = training_data(family, dataset("regression"), "mse")
    outcome = trial(training, tuned(family, **REFUSED_IN_TRAINING[family]))

    assert outcome.state == TrialState.FAIL
    assert (outcome.result, outcome.value) == (None, None)
    assert outcome.error is not None
    assert outcome.error.startswith(f"{ERROR_TYPE[family]}: "), outcome.error
    assert "\n" not in outcome.error
    assert "Stack trace" not in outcome.error, outcome.error[:300]


@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_a_trial_does_not_depend_on_its_thread_count(family: str, task: str) -> None:
    training = training_data(family, dataset(task), METRICS[task][0])
    one, two = (trial(training, tuned(family), nthread=n) for n in (1, 2))

    assert one.state == TrialState.COMPLETE, one.error
    assert (one.result, one.reported) == (two.result, two.reported)
