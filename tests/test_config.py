"""params.yaml validation: the shipped file loads; every malformed file stops a real stage
with one 'error: params.yaml: key.path: problem' line per problem, exit code 2 and no output
written. The schema is checked by every stage (here: prepare); what XGBoost makes of the search
space is checked by tune before any trial."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, tiered
from optuna.distributions import FloatDistribution, IntDistribution

from hpo.config import load_params
from hpo.trial.model import check_search_space
from hpo.trial.space import distributions

PARAMS = REPO / "params.yaml"
RAW_DATA = REPO / "data" / "raw" / "cal_housing.data.gz"

Mutation = Callable[[dict[str, Any]], None]


def _set(dotted: str, value: object) -> Mutation:
    """Set params[a][b][c] = value for dotted 'a.b.c'."""

    def mutate(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        assert last in node, f"{dotted} is not in params.yaml; the case would test nothing"
        node[last] = value

    return mutate


def _delete(dotted: str) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _add(dotted: str, value: object) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        assert last not in node
        node[last] = value

    return mutate


SS = "tune.search_space"

# (mutation of the shipped params or params.yaml text, key path or None for a top-level
# problem, a substring of the problem description)
CASES = [
    pytest.param(_delete("tune"), "tune", "missing key", id="missing-section"),
    pytest.param(_delete("tune.cv_folds"), "tune.cv_folds", "missing key", id="missing-key"),
    pytest.param(
        _add("tune.n_trails", 100),
        "tune.n_trails",
        "unknown key (did you mean n_trials?)",
        id="typo-key",
    ),
    pytest.param(
        _add(f"{SS}.max_depth.hgh", 2),
        f"{SS}.max_depth.hgh",
        "unknown key (did you mean high?)",
        id="typo-in-a-dimension",
    ),
    pytest.param(_add("tune.zzz", 1), "tune.zzz", "unknown key (typo?)", id="unknown-key"),
    pytest.param(_set("tune.n_trials", "many"), "tune.n_trials", "integer", id="str-for-int"),
    pytest.param(_set("tune.n_trials", True), "tune.n_trials", "integer", id="bool-for-int"),
    pytest.param(_set(f"{SS}.max_depth.low", 11), f"{SS}.max_depth", "greater than", id="low>high"),
    pytest.param(_set(f"{SS}.learning_rate.low", 0), f"{SS}.learning_rate", "log", id="log-low-0"),
    pytest.param(
        _set(f"{SS}.max_depth.low", 3.5), f"{SS}.max_depth.low", "must be an integer", id="int-3.5"
    ),
    pytest.param(
        _set(f"{SS}.n_estimators.high", 300.0),
        f"{SS}.n_estimators.high",
        "must be an integer (no decimal point), got 300.0",
        id="int-300.0",
    ),
    pytest.param(_set(f"{SS}.gamma.low", float("nan")), f"{SS}.gamma.low", "finite", id="nan"),
    pytest.param(
        _set(f"{SS}.gamma.type", "flot"), f"{SS}.gamma", "unknown type 'flot'", id="typo-kind"
    ),
    pytest.param(_delete(f"{SS}.gamma.type"), f"{SS}.gamma", "missing key type", id="no-kind"),
    pytest.param(_set(f"{SS}.gamma", 0.1), f"{SS}.gamma", "expected a mapping", id="bare-value"),
    pytest.param(
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": []}),
        f"{SS}.grow_policy.choices",
        "at least 1 item",
        id="no-choices",
    ),
    pytest.param(
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": ["lossguide", "lossguide"]}),
        f"{SS}.grow_policy",
        "choices repeat a value",
        id="repeated-choice",
    ),
    pytest.param(
        _add(f"{SS}.learning_rate.step", 0.01), f"{SS}.learning_rate", "no step", id="log-step"
    ),
    pytest.param(_set(SS, {}), SS, "at least 1 item", id="empty-space"),
    pytest.param(_set("tune.n_trials", 0), "tune.n_trials", "greater than or equal to 1", id="n0"),
    pytest.param(
        _set("tune.parallel_trials", 0),
        "tune.parallel_trials",
        "greater than or equal to 1",
        id="parallel-0",
    ),
    pytest.param(_set("tune.cv_folds", 1), "tune.cv_folds", "greater than or equal to 2", id="cv1"),
    pytest.param(_set("prepare.test_size", 0), "prepare.test_size", "greater than 0", id="ts-0"),
    pytest.param(_set("prepare.test_size", 1.5), "prepare.test_size", "less than 1", id="ts-1.5"),
    pytest.param(_set("tune.pruner.name", "hyperband"), "tune.pruner.name", "median", id="pruner"),
    pytest.param(_set("tune.sampler.name", "random"), "tune.sampler.name", "tpe", id="sampler"),
    pytest.param(
        _set("plot.importance_evaluator", "shap"),
        "plot.importance_evaluator",
        "fanova",
        id="evaluator",
    ),
    # Values the schema once accepted and a library rejected later, one per key.
    pytest.param(_set("model.tree_method", "approx"), "model.tree_method", "hist", id="approx"),
    pytest.param(_set("model.tree_method", "exact"), "model.tree_method", "hist", id="exact"),
    pytest.param(_set("model.max_bin", 2**31), "model.max_bin", "less than", id="max-bin"),
    pytest.param(_set("model.seed", -1), "model.seed", "greater than", id="model-seed"),
    pytest.param(_set("prepare.split_seed", 2**32), "prepare.split_seed", "less", id="split-seed"),
    pytest.param(_set("tune.cv_seed", -1), "tune.cv_seed", "greater than", id="cv-seed"),
    pytest.param(_set("tune.sampler.seed", 2**31), "tune.sampler.seed", "less", id="tpe-seed"),
    pytest.param(
        _set("tune.sampler.n_ei_candidates", 0),
        "tune.sampler.n_ei_candidates",
        "greater than or equal to 1",
        id="ei-candidates-0",
    ),
    pytest.param(
        _set("plot.importance_seed", -5), "plot.importance_seed", "greater", id="imp-seed"
    ),
    pytest.param(
        _set("prepare.test_size", 0.99985), None, "leaves 3 training rows", id="no-rows-for-folds"
    ),
    pytest.param("- prepare\n- tune\n", None, "expected a mapping of sections", id="yaml-list"),
    pytest.param("tune: [1, 2\nplot: {}\n", None, "not valid YAML", id="bad-yaml"),
    pytest.param("", None, "expected a mapping of sections", id="empty-file"),
]
CASES = tiered(
    CASES,
    {"missing-key", "typo-key", "typo-in-a-dimension", "low>high", "int-300.0", "typo-kind",
     "no-rows-for-folds", "bad-yaml"},
)  # fmt: skip
# What XGBoost refuses in a well-formed search space: (mutation, hyperparameter, problem).
SPACE_CASES = [
    pytest.param(
        _add(f"{SS}.max_dept", {"type": "int", "low": 3, "high": 5}),
        "max_dept",
        "not an XGBoost parameter (did you mean max_depth?)",
        id="unknown-name",
    ),
    pytest.param(_set(f"{SS}.subsample.high", 1.5), "subsample", "XGBoost refuses 1.5", id="sub>1"),
    pytest.param(_set(f"{SS}.gamma.low", -0.1), "gamma", "XGBoost refuses -0.1", id="gamma<0"),
    pytest.param(_set(f"{SS}.max_depth.low", -1), "max_depth", "XGBoost refuses -1", id="depth<0"),
    pytest.param(
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": ["depthwise", "sideways"]}),
        "grow_policy",
        "XGBoost refuses 'sideways'",
        id="bad-choice",
    ),
    pytest.param(
        _add(f"{SS}.seed", {"type": "int", "low": 0, "high": 9}),
        "seed",
        "set by the pipeline",
        id="fixed-param",
    ),
    pytest.param(_delete(f"{SS}.n_estimators"), "n_estimators", "missing", id="no-rounds"),
    pytest.param(
        _set(f"{SS}.n_estimators", {"type": "float", "low": 50.0, "high": 300.0}),
        "n_estimators",
        "must be an int dimension",
        id="float-rounds",
    ),
]


SPACE_CASES = tiered(SPACE_CASES, {"unknown-name", "sub>1", "bad-choice"})


def _write_params(directory: Path, case: str | Mutation) -> None:
    if isinstance(case, str):
        text = case
    else:
        params = copy.deepcopy(yaml.safe_load(PARAMS.read_text()))
        case(params)
        text = yaml.safe_dump(params, sort_keys=False)
    (directory / "params.yaml").write_text(text)


def _raw_data_in(directory: Path) -> None:
    """Real data in place: if validation wrongly passed, prepare would write data/prepared."""
    (directory / "data" / "raw").mkdir(parents=True)
    (directory / "data" / "raw" / RAW_DATA.name).symlink_to(RAW_DATA)


def test_the_shipped_space_becomes_distributions_of_the_declared_kinds() -> None:
    declared = yaml.safe_load(PARAMS.read_text())["tune"]["search_space"]
    space = distributions(load_params(PARAMS).tune.search_space)

    assert list(space) == list(declared)  # params.yaml order: the order trials sample in
    kinds = {"int": IntDistribution, "float": FloatDistribution}
    for name, spec in declared.items():
        assert type(space[name]) is kinds[spec["type"]]
        assert (space[name].low, space[name].high) == (spec["low"], spec["high"])
        assert space[name].log == spec.get("log", False)
    assert check_search_space(load_params(PARAMS).tune.search_space) == []


@pytest.mark.parametrize(("case", "key_path", "problem"), CASES)
def test_malformed_params_stop_the_prepare_stage(
    tmp_path: Path, run_stage, case: str | Mutation, key_path: str | None, problem: str
) -> None:
    _write_params(tmp_path, case)
    _raw_data_in(tmp_path)

    line = run_stage("prepare", tmp_path).one_error()

    prefix = "error: params.yaml: " if key_path is None else f"error: params.yaml: {key_path}: "
    assert line.startswith(prefix), line
    assert problem in line
    assert not (tmp_path / "data" / "prepared").exists()


@pytest.mark.parametrize(("case", "name", "problem"), SPACE_CASES)
def test_a_space_xgboost_refuses_stops_tune_before_any_trial(
    tmp_path: Path, run_stage, case: Mutation, name: str, problem: str
) -> None:
    _write_params(tmp_path, case)

    line = run_stage("tune", tmp_path).one_error()

    assert line.startswith(f"error: params.yaml: {SS}.{name}: "), line
    assert problem in line
    assert not (tmp_path / "outputs").exists()


def test_a_stage_run_outside_the_project_says_where_it_looked(tmp_path: Path, run_stage) -> None:
    line = run_stage("prepare", tmp_path).one_error()
    assert line.startswith(f"error: {tmp_path / 'params.yaml'}: not found")
    assert "stages run from the project root" in line


def test_every_problem_gets_its_own_line(tmp_path: Path, run_stage) -> None:
    def three_mistakes(params: dict[str, Any]) -> None:
        params["tune"]["n_trails"] = 5
        _set("tune.cv_folds", 1)(params)
        _set("model.seed", -1)(params)

    _write_params(tmp_path, three_mistakes)
    result = run_stage("prepare", tmp_path)
    assert result.exit_code == 2
    assert sorted(result.stderr.splitlines()) == [
        "error: params.yaml: model.seed: Input should be greater than or equal to 0, got -1",
        "error: params.yaml: tune.cv_folds: Input should be greater than or equal to 2, got 1",
        "error: params.yaml: tune.n_trails: unknown key (did you mean n_trials?)",
    ]
